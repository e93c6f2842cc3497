//! The fixture of the tests that deploy versions through `squall server` (`adopt`, `catch_up`,
//! `deploy`, `diff`): topics and a keyspace over a generated catalogue, a topology file under a
//! unique name, and a generated stream addressed to those topics.

use std::path::PathBuf;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use squall::generate::{CatalogueGen, EventGen, EventGenConfig};
use squall_operators::event::{AdImpression, SongCompletion};
use squall_operators::{Event, EventKind};

use crate::{Fixture, Record, brokers, unique, wait_for_committed_at_end};

/// A topology deployed by a test: its inputs, their catalogue, its name and its file.
pub struct Deployment {
    /// Topics (with `partitions` partitions each) and keyspace.
    pub f: Fixture,
    /// Every track and ad in the keyspace.
    pub catalogue: CatalogueGen,
    /// Partitions of each topic.
    pub partitions: i32,
    /// The topology's name, unique to the test: Kafka keeps group ids across tests on the shared
    /// broker.
    pub name: String,
    /// The topology file.
    pub file: PathBuf,
}

impl Deployment {
    /// A fixture of `partitions` partitions over a catalogue of 300 tracks and 20 ads (`seed`), a
    /// unique name starting with `prefix`, and the topology file `topology` writes for the two.
    pub async fn new(
        prefix: &str,
        seed: u64,
        partitions: i32,
        topology: impl FnOnce(&Fixture, &str) -> PathBuf,
    ) -> Deployment {
        let catalogue = CatalogueGen { tracks: 300, ads: 20, seed };
        let f = Fixture::with_catalogue(partitions, &catalogue).await;
        let name = unique(prefix).replace('_', "-");
        let file = topology(&f, &name);
        Deployment { f, catalogue, partitions, name, file }
    }

    /// The group id of version `version`.
    pub fn group(&self, version: u32) -> String {
        format!("{}-v{version}", self.name)
    }

    /// The topology file's path, as the CLI takes it.
    pub fn file(&self) -> &str {
        self.file.to_str().expect("utf-8 path")
    }

    /// Waits (up to `timeout`) until `group` has committed every message of the topics.
    pub async fn fully_committed(&self, group: &str, timeout: Duration) {
        wait_for_committed_at_end(&brokers(), group, &[&self.f.songs, &self.f.ads], self.partitions, timeout).await
    }
}

/// A generated stream: each batch continues where the previous one ended.
pub struct Stream {
    /// The generator.
    pub generator: EventGen,
    /// The event time of the last event generated.
    pub at: i64,
}

impl Stream {
    /// `config`'s events from `seed`, event times after `at`.
    pub fn new(config: EventGenConfig, seed: u64, at: i64) -> Stream {
        Stream { generator: EventGen::new(config, seed), at }
    }

    /// The next `n` generated records for `f`'s topics, and the valid events among them.
    pub fn batch(&mut self, f: &Fixture, n: usize) -> (Vec<Record>, Vec<Event>) {
        f.batch(&mut self.generator, &mut self.at, n)
    }
}

/// A new, empty state directory for `squall server` under the temporary directory.
pub fn state_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique(prefix));
    std::fs::create_dir_all(&dir).expect("state dir");
    dir
}

/// What [`backlog`] spans.
#[derive(Clone, Copy, Debug)]
pub struct Span {
    /// Events (before resends).
    pub events: usize,
    /// Days of event time they cover.
    pub days: i64,
    /// Users, picked uniformly.
    pub users: u64,
    /// The event time of the first event, epoch ms.
    pub start_ms: i64,
    /// The share of events resent unchanged a few hundred messages later.
    pub resends: f64,
}

/// `span.events` events over `span.days` days of event time, users picked uniformly (so every
/// user has events every day), each event up to an hour out of order, and `span.resends` of them
/// resent unchanged a few hundred messages after the original. The records to produce, and the events
/// counted once.
pub fn backlog(f: &Fixture, catalogue: &CatalogueGen, span: Span, seed: u64) -> (Vec<Record>, Vec<Event>) {
    const DAY: i64 = 24 * 3600 * 1000;
    let mut rng = StdRng::seed_from_u64(seed);
    let run = unique("e");
    let n = span.events;
    let mut events: Vec<Event> = Vec::with_capacity(n);
    let mut resends: Vec<(usize, Event)> = Vec::new();
    for i in 0..n {
        let ts = span.start_ms + (i as i64) * span.days * DAY / n as i64 + rng.random_range(-3_600_000..3_600_000);
        let user_id = format!("u{}", rng.random_range(0..span.users)).into();
        let event_id = format!("{run}-{i}").into();
        let event = if rng.random_bool(0.2) {
            Event::Ad(AdImpression {
                event_id,
                user_id,
                ad_id: format!("a{}", rng.random_range(0..catalogue.ads)).into(),
                ts,
            })
        } else {
            let track_id = format!("t{}", rng.random_range(0..catalogue.tracks)).into();
            Event::Song(SongCompletion { event_id, user_id, track_id, ms_played: rng.random_range(0..300_000), ts })
        };
        if rng.random_bool(span.resends) {
            resends.push((i + rng.random_range(200..600), event.clone()));
        }
        events.push(event);
    }
    resends.sort_by_key(|(at, _)| *at);
    let record = |e: &Event| {
        let topic = if e.kind() == EventKind::Song { &f.songs } else { &f.ads };
        (topic.clone(), e.user_id().to_owned(), e.to_json())
    };
    let mut records = Vec::with_capacity(n + resends.len());
    let mut later = resends.iter().peekable();
    for (i, e) in events.iter().enumerate() {
        records.push(record(e));
        while let Some((_, r)) = later.next_if(|(at, _)| *at <= i) {
            records.push(record(r));
        }
    }
    records.extend(later.map(|(_, r)| record(r)));
    (records, events)
}
