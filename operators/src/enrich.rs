//! `events.enrich_with(&enricher, ..)`: keys events by user and attaches their catalogue attributes.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

use compact_str::CompactString;
use crossbeam_channel::{Receiver, Sender};

use squall_enrichment::{Enricher, Info, Key, Snapshot, StrHash, Sym};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::scheduling::SyncActivator;

use crate::activity::{Activity, AdInfo, TrackInfo, What};
use crate::dedup::dedup_key;
use crate::epoch::Epoch;
use crate::event::{Event, EventKind};
use crate::key_groups;

/// Events whose memo entries are read together before they are enriched.
const MEMO_CHUNK: usize = 16;

/// Enriches a stream of events.
pub trait EnrichWith<'scope> {
    /// Exchanges events to the worker that owns their user, then enriches each one.
    ///
    /// Cache hits pass straight through. Misses are looked up on the enricher's runtime; the
    /// operator keeps a capability for each waiting event's epoch and is woken when an answer
    /// arrives, so the worker never blocks. Concurrent misses for one id share one lookup.
    /// `pending` counts events received and not yet applied (the source pauses when it is high).
    ///
    /// ```
    /// use std::sync::{Arc, atomic::AtomicUsize};
    /// use squall_enrichment::{Enricher, MemoryCatalogue, Symbols, EnrichConfig};
    /// use squall_operators::{EnrichWith, Event, event::AdImpression};
    /// use timely::dataflow::operators::{ToStream, Capture, capture::Event as Captured};
    ///
    /// let rt = tokio::runtime::Runtime::new().unwrap();
    /// let enricher = Enricher::new(Arc::new(MemoryCatalogue::default()), Symbols::default(),
    ///                              EnrichConfig::default(), rt.handle().clone());
    /// let e = enricher.clone();
    /// let captured = timely::example(move |scope| {
    ///     let ev = Event::Ad(AdImpression { event_id: "e".into(), user_id: "u".into(),
    ///                                       ad_id: "a".into(), ts: 1_763_750_000_000 });
    ///     vec![ev].to_stream(scope).container::<Vec<_>>()
    ///         .enrich_with(&e, Arc::new(AtomicUsize::new(0))).capture()
    /// });
    /// let out: Vec<_> = captured.try_iter()
    ///     .flat_map(|c| if let Captured::Messages(_, v) = c { v } else { vec![] })
    ///     .collect();
    /// assert_eq!(out[0].user, "u");
    /// let unknown = enricher.symbols().unknown();
    /// let ad = squall_operators::activity::AdInfo { category: unknown, advertiser: unknown };
    /// assert_eq!(out[0].what, squall_operators::What::Ad { ad_id: "a".into(), ad });
    /// ```
    fn enrich_with(self, enricher: &Enricher, pending: Arc<AtomicUsize>) -> Stream<'scope, Epoch, Vec<Activity>>;
}

fn key_of(event: &Event) -> Key {
    match event {
        Event::Song(s) => Key::Track(s.track_id.clone()),
        Event::Ad(a) => Key::Ad(a.ad_id.clone()),
    }
}

/// A worker-local copy of the shared cache's answers, each kept until its shared entry expires.
///
/// The shared cache (moka) costs a concurrent hash map probe, an LRU update and a read-log entry
/// shared by all workers on every get: the profile showed it as the largest item of the
/// enrichment operator and a source of cross-core traffic. The memo answers repeated ids with one
/// local probe; it never outlives the shared entry, so answers are exactly what the cache gives.
struct Memo {
    tracks: hashbrown::HashMap<CompactString, (Info, Instant), StrHash>,
    ads: hashbrown::HashMap<CompactString, (Info, Instant), StrHash>,
    capacity: usize,
}

impl Memo {
    /// A memo hashing with `hasher`: the enricher's, so that one hash probes its snapshot too.
    fn new(capacity: u64, hasher: StrHash) -> Self {
        let capacity = usize::try_from(capacity).unwrap_or(usize::MAX).max(1);
        Memo { tracks: hashbrown::HashMap::with_hasher(hasher), ads: hashbrown::HashMap::with_hasher(hasher), capacity }
    }

    /// The map of `event`'s kind, and the id it is looked up by.
    #[inline]
    fn map_of<'e>(
        &mut self,
        event: &'e Event,
    ) -> (&mut hashbrown::HashMap<CompactString, (Info, Instant), StrHash>, &'e str) {
        match event {
            Event::Song(s) => (&mut self.tracks, &s.track_id),
            Event::Ad(a) => (&mut self.ads, &a.ad_id),
        }
    }

    /// The hash `event`'s id is looked up by.
    #[inline]
    fn hash(&self, event: &Event) -> u64 {
        match event {
            Event::Song(s) => self.tracks.hasher().hash_one(s.track_id.as_str()),
            Event::Ad(a) => self.ads.hasher().hash_one(a.ad_id.as_str()),
        }
    }

    /// Reads the entries a lookup by `hash` would compare (of song completions, most events), so
    /// that a chunk's cache misses overlap instead of following one another (as in
    /// `maintain`); returns something of them to keep the loads.
    #[inline]
    fn touch(&self, hash: u64) -> u64 {
        squall_enrichment::touch(&self.tracks, hash)
    }

    /// `event`'s catalogue row, from the enricher's snapshot of the catalogue when `live`, else
    /// from the memo or the enricher's cache; `hash` is [`Memo::hash`]'s.
    #[inline]
    fn get(
        &mut self,
        event: &Event,
        hash: u64,
        now: Instant,
        snapshot: Option<&Snapshot>,
        enricher: &Enricher,
    ) -> Option<Info> {
        if let Some(snapshot) = snapshot {
            let row = match event {
                Event::Song(s) => snapshot.track(&s.track_id, hash),
                Event::Ad(a) => snapshot.ad(&a.ad_id, hash),
            };
            if row.is_some() {
                return row;
            }
        }
        let capacity = self.capacity;
        let (map, id) = self.map_of(event);
        if let Some((_, (info, until))) = map.raw_entry().from_key_hashed_nocheck(hash, id)
            && now < *until
        {
            return Some(*info);
        }
        // The live snapshot was probed above (and an expired one answers nothing).
        let (info, until) = enricher.cache_entry(&key_of(event))?;
        if map.len() >= capacity {
            map.clear();
        }
        map.insert(CompactString::from(id), (info, until));
        Some(info)
    }
}

/// Joins an event with its catalogue row as the dataflow does (`unknown`: the symbol of ids
/// missing from the catalogue): what an offline recomputation applies, e.g. `squall training-data`.
pub fn join(event: Event, info: Info, unknown: Sym) -> Activity {
    activity(event, info, unknown)
}

/// Joins an event with its enrichment.
fn activity(event: Event, info: Info, unknown: Sym) -> Activity {
    match event {
        Event::Song(s) => {
            let track = match info {
                Info::Track { genre, artist, duration_ms } => TrackInfo { genre, artist, duration_ms },
                Info::Ad { .. } => TrackInfo { genre: unknown, artist: unknown, duration_ms: None },
            };
            Activity {
                dedup_key: dedup_key(EventKind::Song, &s.user_id, &s.event_id),
                user: s.user_id,
                ts: s.ts,
                event_id: s.event_id,
                what: What::Play { track_id: s.track_id, ms_played: s.ms_played, track },
            }
        }
        Event::Ad(a) => {
            let ad = match info {
                Info::Ad { category, advertiser } => AdInfo { category, advertiser },
                Info::Track { .. } => AdInfo { category: unknown, advertiser: unknown },
            };
            Activity {
                dedup_key: dedup_key(EventKind::Ad, &a.user_id, &a.event_id),
                user: a.user_id,
                ts: a.ts,
                event_id: a.event_id,
                what: What::Ad { ad_id: a.ad_id, ad },
            }
        }
    }
}

/// Events waiting for a lookup, by key, with their epochs.
type Waiting = HashMap<Key, Vec<(Epoch, Event)>>;

/// The events whose lookups were answered since the last call, as activities, by epoch.
fn answered(answers: &Receiver<(Key, Info)>, waiting: &mut Waiting, unknown: Sym) -> BTreeMap<Epoch, Vec<Activity>> {
    let mut out: BTreeMap<Epoch, Vec<Activity>> = BTreeMap::new();
    while let Ok((key, info)) = answers.try_recv() {
        for (epoch, event) in waiting.remove(&key).unwrap_or_default() {
            out.entry(epoch).or_default().push(activity(event, info, unknown));
        }
    }
    out
}

/// Parks `event` until the lookup of `key` answers, starting the lookup if no other event waits
/// for it; the answer comes back through `answers` and wakes the operator.
fn park(
    waiting: &mut Waiting,
    key: Key,
    event: (Epoch, Event),
    enricher: &Enricher,
    answers: &Sender<(Key, Info)>,
    activator: &Arc<SyncActivator>,
) {
    match waiting.entry(key) {
        Entry::Occupied(mut o) => o.get_mut().push(event),
        Entry::Vacant(v) => {
            let tx = answers.clone();
            let act = Arc::clone(activator);
            enricher.fetch(v.key().clone(), move |k, i| {
                // The receiver is gone only when the dataflow was dropped.
                if tx.send((k, i)).is_ok() {
                    let _ = act.activate();
                }
            });
            v.insert(vec![event]);
        }
    }
}

impl<'scope> EnrichWith<'scope> for Stream<'scope, Epoch, Vec<Event>> {
    fn enrich_with(self, enricher: &Enricher, pending: Arc<AtomicUsize>) -> Stream<'scope, Epoch, Vec<Activity>> {
        let scope = self.scope();
        let mut builder = OperatorBuilder::new("EnrichWith".to_owned(), scope);
        let info = builder.operator_info();
        // To the owning worker: timely reduces the value modulo the workers, which keeps an index.
        let peers = scope.peers();
        let mut input =
            builder.new_input(self, Exchange::new(move |e: &Event| key_groups::owner(e.user_id(), peers) as u64));
        let (output, stream) = builder.new_output::<Vec<Activity>>();
        let mut output = OutputBuilder::<_, CapacityContainerBuilder<Vec<Activity>>>::from(output);

        let (answers_tx, answers) = crossbeam_channel::unbounded::<(Key, Info)>();
        let activator = Arc::new(scope.worker().sync_activator_for(info.address.to_vec()));
        let enricher = enricher.clone();
        let unknown = enricher.symbols().unknown();

        builder.build(move |_caps| {
            let mut waiting: Waiting = HashMap::new();
            // A capability per epoch that has waiting events, and how many.
            let mut held: BTreeMap<Epoch, (Capability<Epoch>, usize)> = BTreeMap::new();
            let mut ready: Vec<Activity> = Vec::new();
            let mut memo = Memo::new(enricher.config().cache_capacity, enricher.hasher());
            let mut hashes: Vec<u64> = Vec::new();
            let (mut generation, mut snapshot) = enricher.snapshot();
            move |_frontiers| {
                let mut out = output.activate();
                // Answers first: they release capabilities.
                for (epoch, mut batch) in answered(&answers, &mut waiting, unknown) {
                    let Some((cap, count)) = held.get_mut(&epoch) else { continue };
                    *count -= batch.len();
                    out.session(cap).give_container(&mut batch);
                    if *count == 0 {
                        held.remove(&epoch);
                    }
                }

                let (mut hits, mut misses) = (0u64, 0u64);
                input.for_each(|cap, data| {
                    pending.fetch_add(data.len(), Relaxed);
                    let Some(epoch) = cap.least().copied() else { return };
                    let now = Instant::now();
                    if enricher.snapshot_generation() != generation {
                        (generation, snapshot) = enricher.snapshot();
                    }
                    let live = snapshot.live(now).then_some(&*snapshot);
                    ready.reserve(data.len());
                    hashes.clear();
                    hashes.extend(data.iter().map(|e| memo.hash(e)));
                    let mut touched = 0;
                    for (i, event) in data.drain(..).enumerate() {
                        if i % MEMO_CHUNK == 0 {
                            for h in &hashes[i..(i + MEMO_CHUNK).min(hashes.len())] {
                                touched ^= match live {
                                    Some(s) => s.touch_track(*h),
                                    None => memo.touch(*h),
                                };
                            }
                            std::hint::black_box(touched);
                        }
                        if let Some(info) = memo.get(&event, hashes[i], now, live, &enricher) {
                            hits += 1;
                            ready.push(activity(event, info, unknown));
                            continue;
                        }
                        let key = key_of(&event);
                        misses += 1;
                        held.entry(epoch).or_insert_with(|| (cap.delayed(&epoch, 0), 0)).1 += 1;
                        park(&mut waiting, key, (epoch, event), &enricher, &answers_tx, &activator);
                    }
                    if !ready.is_empty() {
                        out.session(&cap).give_container(&mut ready);
                        ready.clear();
                    }
                });
                if hits + misses > 0 {
                    enricher.record(hits, misses);
                }
            }
        });
        stream
    }
}
