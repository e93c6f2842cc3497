//! One worker's share of the users: their events and labels in the order of the module notes
//! ([`super`]), applied with the version's plan, dedup and user TTL, and answered as of each
//! label's time. No timely here: the dataflow ([`super::dataflow`]) hands it a time bucket's
//! items at a time.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use squall_enrichment::Symbols;
use squall_operators::attributes::AttributesView;
use squall_operators::dedup::Dedup;
use squall_operators::{Event, Evidence, Plan, UserState};

use super::catalogue::Catalogue;

/// Where an archived event sits: its event time, then its place in the archive (the topic's
/// index among the version's inputs, songs first; the partition; the offset).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Position {
    /// Event time, epoch ms.
    pub ts: i64,
    /// The topic's index among the inputs.
    pub topic: u8,
    /// The partition.
    pub partition: i32,
    /// The offset.
    pub offset: i64,
}

/// What the dataflow routes to a user's worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Item {
    /// An archived event.
    Event(Position, Event),
    /// Label row `row` of the labels file: `user`'s attributes as of `ts`.
    Label {
        /// The row, from 0.
        row: u64,
        /// The user.
        user: CompactString,
        /// The label's time, epoch ms.
        ts: i64,
    },
    /// An archive file could not be read: the job fails with this message.
    Failed(String),
}

impl Item {
    /// The user it concerns (none for a failure).
    pub fn user(&self) -> Option<&str> {
        match self {
            Item::Event(_, e) => Some(e.user_id()),
            Item::Label { user, .. } => Some(user),
            Item::Failed(_) => None,
        }
    }

    /// The order items are applied in: by time; at equal times a label before the events, so it
    /// sees only events strictly before it; events by their place in the archive.
    pub fn order(&self, other: &Item) -> Ordering {
        fn key(i: &Item) -> (i64, u8, Position, u64) {
            match i {
                Item::Failed(_) => (i64::MIN, 0, Position { ts: i64::MIN, topic: 0, partition: 0, offset: 0 }, 0),
                Item::Label { ts, row, .. } => (*ts, 0, Position { ts: *ts, topic: 0, partition: 0, offset: 0 }, *row),
                Item::Event(p, _) => (p.ts, 1, *p, 0),
            }
        }
        key(self).cmp(&key(other))
    }
}

/// What the job answers, gathered on worker 0.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Answer {
    /// Label row `row`: the user's attributes as JSON, exactly as the HTTP API answers them;
    /// `None` when the user had no event before the label's time (the API's 404).
    Label {
        /// The row, from 0.
        row: u64,
        /// The attributes.
        json: Option<Vec<u8>>,
    },
    /// With `--at`: one user's attributes as JSON.
    User {
        /// The user.
        user: CompactString,
        /// The attributes.
        json: Vec<u8>,
    },
    /// The job failed.
    Failed(String),
}

/// The state of one worker's users.
pub struct AsOf {
    plan: Arc<Plan>,
    symbols: Symbols,
    catalogue: Arc<Catalogue>,
    dedup: Dedup,
    user_ttl_ms: i64,
    users: HashMap<CompactString, UserState>,
    /// Events applied, and dropped as resends.
    pub counts: (u64, u64),
}

impl AsOf {
    /// No users yet, under `plan` (names interned in `symbols`, the catalogue's), with the
    /// version's dedup horizon and user TTL.
    pub fn new(
        plan: Arc<Plan>,
        symbols: Symbols,
        catalogue: Arc<Catalogue>,
        dedup_horizon_ms: i64,
        user_ttl_ms: i64,
    ) -> Self {
        AsOf {
            plan,
            symbols,
            catalogue,
            dedup: Dedup::new(dedup_horizon_ms),
            user_ttl_ms,
            users: HashMap::new(),
            counts: (0, 0),
        }
    }

    /// Applies `items` (every item of a time bucket, and every earlier bucket already applied),
    /// sorting them first, and answers their labels into `out`.
    pub fn step(&mut self, items: &mut [Item], out: &mut Vec<Answer>) {
        items.sort_unstable_by(Item::order);
        for item in items.iter_mut() {
            match item {
                Item::Failed(why) => out.push(Answer::Failed(std::mem::take(why))),
                Item::Label { row, user, ts } => out.push(Answer::Label { row: *row, json: self.answer(user, *ts) }),
                Item::Event(p, event) => {
                    let event = std::mem::replace(event, placeholder());
                    self.apply(p.ts, event);
                }
            }
        }
        self.dedup.sweep(32);
    }

    /// Deduplicates and applies one event, exactly as a running version's maintainer does, with
    /// the watermark at the event's own time: every event before it has been applied.
    fn apply(&mut self, ts: i64, event: Event) {
        let a = self.catalogue.join(event);
        self.dedup.advance(ts);
        if !self.dedup.first_time(a.dedup_key, ts) {
            self.counts.1 += 1;
            return;
        }
        self.counts.0 += 1;
        let ttl = self.user_ttl_ms;
        let state = match self.users.get_mut(&a.user) {
            Some(s) => s,
            None => self.users.entry(a.user.clone()).or_default(),
        };
        if ttl > 0 && state.clock().is_some_and(|c| c < ts.saturating_sub(ttl)) {
            // Expired since their previous event (`state.user_ttl`): they start fresh.
            *state = UserState::default();
        }
        state.apply(&self.plan, &a.user, &a, &self.symbols);
    }

    /// `user`'s attributes as of `ts` (every event before it applied), as the HTTP API answers
    /// them; `None` if they have none or were expired by then.
    pub fn answer(&self, user: &str, ts: i64) -> Option<Vec<u8>> {
        self.answer_of(self.users.get(user)?, ts)
    }

    /// A user's attributes as of `ts` from their `state`, as [`AsOf::answer`].
    pub fn answer_of(&self, state: &UserState, ts: i64) -> Option<Vec<u8>> {
        let clock = state.clock()?;
        if self.user_ttl_ms > 0 && clock < ts.saturating_sub(self.user_ttl_ms) {
            return None;
        }
        Some(self.json(state))
    }

    /// A state's attributes as the HTTP API answers them.
    fn json(&self, state: &UserState) -> Vec<u8> {
        serde_json::to_vec(&AttributesView::new(state, &self.plan, &self.symbols)).expect("attributes serialise")
    }

    /// `user`'s evidence and attributes after every event applied, as the changelog publishes
    /// them (no expiry: the state as it is); `None` if they have no events.
    pub fn latest(&self, user: &str) -> Option<(Evidence, Vec<u8>)> {
        let state = self.users.get(user)?;
        state.clock()?;
        Some((state.evidence(), self.json(state)))
    }

    /// Every user with their state, taken out (what a snapshot answers a share at a time, freeing
    /// each state as it goes).
    pub fn take_users(&mut self) -> std::collections::hash_map::IntoIter<CompactString, UserState> {
        std::mem::take(&mut self.users).into_iter()
    }

    /// Events applied, resends dropped, users held and their states' bytes.
    pub fn summary(&self) -> (u64, u64, usize, usize) {
        (self.counts.0, self.counts.1, self.users(), self.state_bytes())
    }

    /// Users held.
    pub fn users(&self) -> usize {
        self.users.len()
    }

    /// Bytes the users' states take: their words, ids and map entries (what `--at` and the
    /// labels need kept; the dedup ids and the items in flight come on top).
    pub fn state_bytes(&self) -> usize {
        let entry = size_of::<(CompactString, UserState)>() + 1;
        let heap = |u: &CompactString| if u.is_heap_allocated() { u.len() } else { 0 };
        self.users.iter().map(|(u, s)| entry + heap(u) + 4 * s.words().len()).sum::<usize>()
    }
}

/// What an applied event's slot holds afterwards (nothing allocated).
fn placeholder() -> Event {
    Event::Ad(squall_operators::event::AdImpression {
        event_id: CompactString::const_new(""),
        user_id: CompactString::const_new(""),
        ad_id: CompactString::const_new(""),
        ts: 0,
    })
}
