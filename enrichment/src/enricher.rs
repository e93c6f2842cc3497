//! The cached, asynchronous lookup service that the dataflow's enrichment operator calls.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use compact_str::CompactString;
use dashmap::DashMap;
use futures::StreamExt;
use futures::stream::BoxStream;
use moka::sync::Cache;
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;
use tokio::sync::Semaphore;

use crate::catalogue::{Catalogue, CatalogueError};
use crate::hash::StrHash;
use crate::symbols::{Sym, Symbols};

/// What to do with an event whose lookup still fails when the deadline has passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnTimeout {
    /// Enrich as `unknown` (counted in `degraded`), so the event is not held up further.
    Degrade,
    /// Keep retrying with backoff; the event (and, through backpressure, the source) waits.
    Wait,
}

/// Enrichment settings; every field has a default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnrichConfig {
    /// Entries kept per cache (tracks and ads each).
    pub cache_capacity: u64,
    /// How long a cached answer (found or not found) is used before it is looked up again.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// Lookups in flight to the store at once, for the whole process.
    pub max_in_flight: usize,
    /// Time allowed for one request before it counts as failed and is retried.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Time after the first attempt when [`OnTimeout`] applies.
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
    /// What to do when the deadline passes.
    pub on_timeout: OnTimeout,
    /// Read the whole `tracks` and `ads` tables into the cache before consuming (up to
    /// `cache_capacity` rows each), and again every half `cache_ttl` in the background, like
    /// Flink's `FULL` lookup cache: known ids never miss; ids added to the store between reloads
    /// and unknown ids are looked up one by one as usual. Suits catalogues that fit in memory.
    pub preload: bool,
}

impl Default for EnrichConfig {
    fn default() -> Self {
        EnrichConfig {
            cache_capacity: 1_000_000,
            cache_ttl: Duration::from_secs(600),
            max_in_flight: 256,
            request_timeout: Duration::from_secs(2),
            deadline: Duration::from_secs(10),
            on_timeout: OnTimeout::Wait,
            preload: false,
        }
    }
}

/// An id to enrich.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    /// A `tracks.track_id`.
    Track(CompactString),
    /// An `ads.ad_id`.
    Ad(CompactString),
}

/// The enrichment of one id, as process-local symbols. Ids missing from the store get
/// [`crate::UNKNOWN`] in every field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Info {
    /// Of a track.
    Track {
        /// Genre.
        genre: Sym,
        /// Artist id.
        artist: Sym,
        /// Length in milliseconds (`None` when unknown or null).
        duration_ms: Option<i32>,
    },
    /// Of an ad.
    Ad {
        /// Category.
        category: Sym,
        /// Advertiser id.
        advertiser: Sym,
    },
}

/// Counters of an [`Enricher`], shared by every clone.
#[derive(Debug, Default)]
pub struct EnricherStats {
    /// Lookups answered from the cache.
    pub hits: AtomicU64,
    /// Lookups that had to go to the store.
    pub misses: AtomicU64,
    /// Requests sent to the store (retries included).
    pub requests: AtomicU64,
    /// Ids the store did not have.
    pub not_found: AtomicU64,
    /// Failed requests (each retry counts).
    pub errors: AtomicU64,
    /// Requests sent again after a failure (after a backoff).
    pub retries: AtomicU64,
    /// Lookups given up at the deadline and enriched as unknown (`on_timeout = "degrade"`).
    pub degraded: AtomicU64,
    /// Lookups still failing at the deadline that kept retrying (`on_timeout = "wait"`); each
    /// lookup counts once.
    pub deadline_waits: AtomicU64,
    /// Lookups in flight or waiting for a permit.
    pub in_flight: AtomicU64,
    /// Lookups that joined a request already in flight for the same id instead of sending one.
    pub joined: AtomicU64,
    /// Rows read into the cache by [`Enricher::preload`] (every reload counts).
    pub preloaded: AtomicU64,
}

/// What one [`Enricher::preload`] read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Preloaded {
    /// `tracks` rows cached.
    pub tracks: u64,
    /// `ads` rows cached.
    pub ads: u64,
    /// Whether a table had more rows than `cache_capacity` (the rest are looked up on demand).
    pub truncated: bool,
}

/// The rows of the last complete [`Enricher::preload`], read-only and shared by every worker.
///
/// A get from the cache (moka) moves the entry in its LRU order and writes to a read log shared
/// by all workers, which costs every worker's first look at each id (the operator's memo holds
/// the answers after that; `benches/RESULTS.md`). A lookup here is one probe of a hash map that
/// nothing writes while it is shared. Preloaded rows are kept here instead of in the cache; a
/// reload builds a new snapshot and swaps it in whole.
pub struct Snapshot {
    tracks: hashbrown::HashMap<CompactString, Info, StrHash>,
    ads: hashbrown::HashMap<CompactString, Info, StrHash>,
    /// `cache_ttl` after its load began: its rows are answers until then, like cached ones.
    until: Instant,
}

impl Snapshot {
    fn empty(hasher: StrHash) -> Self {
        Snapshot {
            tracks: hashbrown::HashMap::with_hasher(hasher),
            ads: hashbrown::HashMap::with_hasher(hasher),
            until: Instant::now(),
        }
    }

    /// Whether its rows are answers at `now`: it has some, and they have not expired.
    #[inline]
    pub fn live(&self, now: Instant) -> bool {
        now < self.until && !(self.tracks.is_empty() && self.ads.is_empty())
    }

    /// The instant its rows expire.
    pub fn until(&self) -> Instant {
        self.until
    }

    /// The row of track `id`, whose hash by [`Enricher::hasher`] is `hash`.
    #[inline]
    pub fn track(&self, id: &str, hash: u64) -> Option<Info> {
        self.tracks.raw_entry().from_key_hashed_nocheck(hash, id).map(|(_, info)| *info)
    }

    /// The row of ad `id`, whose hash by [`Enricher::hasher`] is `hash`.
    #[inline]
    pub fn ad(&self, id: &str, hash: u64) -> Option<Info> {
        self.ads.raw_entry().from_key_hashed_nocheck(hash, id).map(|(_, info)| *info)
    }

    /// Reads the track entries a lookup by `hash` would compare, so that a caller can overlap
    /// the cache misses of several lookups; returns something of them to keep the loads.
    #[inline]
    pub fn touch_track(&self, hash: u64) -> u64 {
        crate::hash::touch(&self.tracks, hash)
    }

    fn get(&self, key: &Key, hasher: &StrHash) -> Option<Info> {
        use std::hash::BuildHasher;
        match key {
            Key::Track(id) => self.track(id, hasher.hash_one(id.as_str())),
            Key::Ad(id) => self.ad(id, hasher.hash_one(id.as_str())),
        }
    }
}

/// A caller waiting for the answer of a lookup in flight.
type Waiter = Box<dyn FnOnce(Key, Info) + Send + Sync>;

/// Cached, asynchronous, bounded-concurrency lookups. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Enricher {
    inner: Arc<Inner>,
}

struct Inner {
    /// Answers with the instant they were cached, so that callers' local copies expire with them.
    tracks: Cache<CompactString, (Info, Instant)>,
    ads: Cache<CompactString, (Info, Instant)>,
    /// The last complete preload; consulted before the cache while it is live.
    snapshot: RwLock<Arc<Snapshot>>,
    /// Bumped each time a snapshot is swapped in, so that holders of one can tell cheaply.
    generation: AtomicU64,
    /// The hasher of the snapshot's maps, shared with callers' own maps of ids.
    hasher: StrHash,
    catalogue: Arc<dyn Catalogue>,
    symbols: Symbols,
    runtime: Handle,
    permits: Arc<Semaphore>,
    /// Lookups in flight, with the callers waiting for each (the first one's included).
    in_flight: DashMap<Key, Vec<Waiter>>,
    config: EnrichConfig,
    stats: EnricherStats,
}

impl Enricher {
    /// A service over `catalogue` that runs its requests on `runtime`.
    pub fn new(catalogue: Arc<dyn Catalogue>, symbols: Symbols, config: EnrichConfig, runtime: Handle) -> Self {
        let cache = || Cache::builder().max_capacity(config.cache_capacity).time_to_live(config.cache_ttl).build();
        let hasher = StrHash::default();
        Enricher {
            inner: Arc::new(Inner {
                tracks: cache(),
                ads: cache(),
                snapshot: RwLock::new(Arc::new(Snapshot::empty(hasher))),
                generation: AtomicU64::new(0),
                hasher,
                catalogue,
                symbols,
                runtime,
                permits: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
                in_flight: DashMap::new(),
                config,
                stats: EnricherStats::default(),
            }),
        }
    }

    /// The symbol table the answers are written in.
    pub fn symbols(&self) -> &Symbols {
        &self.inner.symbols
    }

    /// The counters.
    pub fn stats(&self) -> &EnricherStats {
        &self.inner.stats
    }

    /// The cached answer for `key`, if any. Does not count hits or misses: callers count their
    /// own and report them with [`Enricher::record`], off the per-event path.
    #[inline]
    pub fn cached(&self, key: &Key) -> Option<Info> {
        self.cached_until(key).map(|(info, _)| info)
    }

    /// The cached answer for `key` and the instant its entry expires (`cache_ttl` after it was
    /// cached). A caller may keep a local copy until then: it is the answer the cache would give.
    #[inline]
    pub fn cached_until(&self, key: &Key) -> Option<(Info, Instant)> {
        let snapshot = self.snapshot().1;
        if snapshot.live(Instant::now())
            && let Some(info) = snapshot.get(key, &self.inner.hasher)
        {
            return Some((info, snapshot.until));
        }
        self.cache_entry(key)
    }

    /// The answer for `key` in the cache of ids looked up one by one, and the instant it expires:
    /// [`Enricher::cached_until`] for a caller that has already probed the live [`Snapshot`].
    #[inline]
    pub fn cache_entry(&self, key: &Key) -> Option<(Info, Instant)> {
        let (info, at) = match key {
            Key::Track(id) => self.inner.tracks.get(id),
            Key::Ad(id) => self.inner.ads.get(id),
        }?;
        Some((info, at + self.inner.config.cache_ttl))
    }

    /// The last complete preload (empty before the first), with its generation.
    pub fn snapshot(&self) -> (u64, Arc<Snapshot>) {
        // The lock is held only to clone or swap the `Arc`: a poisoned one still holds a whole snapshot.
        let snapshot = self.inner.snapshot.read().unwrap_or_else(|e| e.into_inner());
        (self.inner.generation.load(Relaxed), Arc::clone(&snapshot))
    }

    /// The generation of the current snapshot: one load, for callers holding an older one.
    #[inline]
    pub fn snapshot_generation(&self) -> u64 {
        self.inner.generation.load(Relaxed)
    }

    /// The hasher of the snapshot's maps: a caller keeping its own map of ids with it can probe
    /// both with one hash.
    pub fn hasher(&self) -> StrHash {
        self.inner.hasher
    }

    /// The settings this enricher runs with.
    pub fn config(&self) -> &EnrichConfig {
        &self.inner.config
    }

    /// Adds a caller's hit and miss counts to the shared counters.
    pub fn record(&self, hits: u64, misses: u64) {
        self.inner.stats.hits.fetch_add(hits, Relaxed);
        self.inner.stats.misses.fetch_add(misses, Relaxed);
    }

    /// Looks `key` up in the store on the runtime, caches the answer, then calls `done` with it
    /// (on a runtime thread). Returns at once. Callers asking for an id whose lookup is already in
    /// flight (from any worker) join it instead of sending another request.
    pub fn fetch(&self, key: Key, done: impl FnOnce(Key, Info) + Send + Sync + 'static) {
        match self.inner.in_flight.entry(key) {
            dashmap::Entry::Occupied(mut waiting) => {
                self.inner.stats.joined.fetch_add(1, Relaxed);
                waiting.get_mut().push(Box::new(done));
            }
            dashmap::Entry::Vacant(slot) => {
                let key = slot.key().clone();
                slot.insert(vec![Box::new(done)]);
                let this = self.clone();
                self.inner.stats.in_flight.fetch_add(1, Relaxed);
                self.inner.runtime.spawn(async move {
                    let started = Instant::now();
                    let info = this.load(&key).await;
                    crate::counters::lookup_took(started.elapsed());
                    this.inner.stats.in_flight.fetch_sub(1, Relaxed);
                    // The answer is cached by now: callers arriving after the removal find it there.
                    let waiters = this.inner.in_flight.remove(&key).map(|(_, w)| w).unwrap_or_default();
                    for done in waiters {
                        done(key.clone(), info);
                    }
                });
            }
        }
    }

    /// Reads every `tracks` and `ads` row (up to `cache_capacity` each) into a new [`Snapshot`]
    /// and swaps it in, as if each row had just been looked up. Returns what it read, or the
    /// first store error; the rows read before an error are put in the cache instead, and the
    /// snapshot in use stays.
    pub async fn preload(&self) -> Result<Preloaded, CatalogueError> {
        let inner = &self.inner;
        let started = Instant::now();
        let intern = |s: Option<String>| s.map_or(inner.symbols.unknown(), |s| inner.symbols.intern(&s));
        let limit = inner.config.cache_capacity;
        let mut next = Snapshot::empty(inner.hasher);
        next.until = started + inner.config.cache_ttl;
        let read = async {
            let more_tracks = read_rows(inner.catalogue.scan_tracks(), &mut next.tracks, limit, |row| Info::Track {
                genre: intern(row.genre),
                artist: intern(row.artist_id),
                duration_ms: row.duration_ms,
            })
            .await?;
            let more_ads = read_rows(inner.catalogue.scan_ads(), &mut next.ads, limit, |row| Info::Ad {
                category: intern(row.category),
                advertiser: intern(row.advertiser_id),
            })
            .await?;
            Ok::<_, CatalogueError>(more_tracks || more_ads)
        };
        let outcome = read.await;
        let done = Preloaded { tracks: next.tracks.len() as u64, ads: next.ads.len() as u64, truncated: false };
        inner.stats.preloaded.fetch_add(done.tracks + done.ads, Relaxed);
        match outcome {
            Ok(truncated) => {
                let mut current = inner.snapshot.write().unwrap_or_else(|e| e.into_inner());
                *current = Arc::new(next);
                inner.generation.fetch_add(1, Relaxed);
                Ok(Preloaded { truncated, ..done })
            }
            Err(e) => {
                for (id, info) in next.tracks {
                    inner.tracks.insert(id, (info, started));
                }
                for (id, info) in next.ads {
                    inner.ads.insert(id, (info, started));
                }
                Err(e)
            }
        }
    }

    /// The answer for `key`: from the cache, or looked up now. For callers that may wait.
    pub async fn lookup(&self, key: Key) -> Info {
        if let Some(info) = self.cached(&key) {
            self.record(1, 0);
            return info;
        }
        self.record(0, 1);
        self.load(&key).await
    }

    /// Queries the store with retries and backoff, honouring the deadline policy, and caches
    /// what it learns (degraded answers are not cached, so the id is tried again later).
    async fn load(&self, key: &Key) -> Info {
        let inner = &self.inner;
        let started = Instant::now();
        let mut backoff = Duration::from_millis(10);
        let mut warned = false;
        loop {
            let attempt = {
                let _permit = inner.permits.acquire().await.expect("the semaphore is never closed");
                inner.stats.requests.fetch_add(1, Relaxed);
                tokio::time::timeout(inner.config.request_timeout, self.query(key)).await
            };
            let error = match attempt {
                Ok(Ok(info)) => {
                    let now = Instant::now();
                    match key {
                        Key::Track(id) => inner.tracks.insert(id.clone(), (info, now)),
                        Key::Ad(id) => inner.ads.insert(id.clone(), (info, now)),
                    }
                    return info;
                }
                Ok(Err(e)) => e,
                Err(_) => CatalogueError::Request(format!("timed out after {:?}", inner.config.request_timeout)),
            };
            inner.stats.errors.fetch_add(1, Relaxed);
            if started.elapsed() >= inner.config.deadline {
                if inner.config.on_timeout == OnTimeout::Degrade {
                    inner.stats.degraded.fetch_add(1, Relaxed);
                    tracing::warn!(?key, %error, "enrichment deadline passed; enriching as unknown");
                    return self.unknown(key);
                }
                if !warned {
                    warned = true;
                    inner.stats.deadline_waits.fetch_add(1, Relaxed);
                    tracing::warn!(?key, %error, "enrichment deadline passed; still retrying (on_timeout = wait)");
                }
            } else {
                tracing::debug!(?key, %error, "enrichment lookup failed; retrying");
            }
            tokio::time::sleep(backoff).await;
            inner.stats.retries.fetch_add(1, Relaxed);
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    async fn query(&self, key: &Key) -> Result<Info, CatalogueError> {
        let inner = &self.inner;
        let intern = |s: Option<String>| s.map_or(inner.symbols.unknown(), |s| inner.symbols.intern(&s));
        Ok(match key {
            Key::Track(id) => match inner.catalogue.track(id).await? {
                Some(row) => Info::Track {
                    genre: intern(row.genre),
                    artist: intern(row.artist_id),
                    duration_ms: row.duration_ms,
                },
                None => {
                    inner.stats.not_found.fetch_add(1, Relaxed);
                    self.unknown(key)
                }
            },
            Key::Ad(id) => match inner.catalogue.ad(id).await? {
                Some(row) => Info::Ad { category: intern(row.category), advertiser: intern(row.advertiser_id) },
                None => {
                    inner.stats.not_found.fetch_add(1, Relaxed);
                    self.unknown(key)
                }
            },
        })
    }

    fn unknown(&self, key: &Key) -> Info {
        let u = self.inner.symbols.unknown();
        match key {
            Key::Track(_) => Info::Track { genre: u, artist: u, duration_ms: None },
            Key::Ad(_) => Info::Ad { category: u, advertiser: u },
        }
    }
}

/// Puts each row of `rows` in `into` as `info` makes it, up to `limit` rows: whether rows were
/// left over.
async fn read_rows<R>(
    mut rows: BoxStream<'static, Result<(String, R), CatalogueError>>,
    into: &mut hashbrown::HashMap<CompactString, Info, StrHash>,
    limit: u64,
    info: impl Fn(R) -> Info,
) -> Result<bool, CatalogueError> {
    while let Some(row) = rows.next().await {
        if into.len() as u64 == limit {
            return Ok(true);
        }
        let (id, row) = row?;
        into.insert(CompactString::from(id), info(row));
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::{AdRow, MemoryCatalogue, TrackRow};
    use futures::future::BoxFuture;
    use std::collections::HashMap;
    use std::sync::atomic::AtomicUsize;

    fn catalogue() -> MemoryCatalogue {
        let mut tracks = HashMap::new();
        tracks.insert(
            "t1".to_owned(),
            TrackRow { genre: Some("rock".into()), artist_id: Some("ar1".into()), duration_ms: Some(1) },
        );
        let mut ads = HashMap::new();
        ads.insert("a1".to_owned(), AdRow { advertiser_id: Some("adv".into()), category: Some("cars".into()) });
        MemoryCatalogue { tracks: Arc::new(tracks), ads: Arc::new(ads) }
    }

    fn enricher(c: Arc<dyn Catalogue>, config: EnrichConfig) -> Enricher {
        Enricher::new(c, Symbols::default(), config, Handle::current())
    }

    #[tokio::test]
    async fn found_missing_and_cached() {
        let e = enricher(Arc::new(catalogue()), EnrichConfig::default());
        let s = e.symbols().clone();
        let rock = e.lookup(Key::Track("t1".into())).await;
        assert_eq!(rock, Info::Track { genre: s.intern("rock"), artist: s.intern("ar1"), duration_ms: Some(1) });
        let missing = e.lookup(Key::Track("nope".into())).await;
        assert_eq!(missing, Info::Track { genre: s.unknown(), artist: s.unknown(), duration_ms: None });
        let ad = e.lookup(Key::Ad("a1".into())).await;
        assert_eq!(ad, Info::Ad { category: s.intern("cars"), advertiser: s.intern("adv") });
        // Second time round, all three come from the cache, the negative answer included.
        assert_eq!(e.cached(&Key::Track("nope".into())), Some(missing));
        e.lookup(Key::Track("t1".into())).await;
        assert_eq!(e.stats().requests.load(Relaxed), 3);
        assert_eq!(e.stats().hits.load(Relaxed), 1);
        assert_eq!(e.stats().not_found.load(Relaxed), 1);
    }

    /// Fails the first `failures` requests, then answers from an inner catalogue.
    struct Flaky {
        failures: AtomicUsize,
        inner: MemoryCatalogue,
    }

    impl Catalogue for Flaky {
        fn track(&self, id: &str) -> BoxFuture<'static, Result<Option<TrackRow>, CatalogueError>> {
            if self.failures.fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1)).is_ok() {
                return Box::pin(async { Err(CatalogueError::Request("injected".into())) });
            }
            self.inner.track(id)
        }
        fn ad(&self, id: &str) -> BoxFuture<'static, Result<Option<AdRow>, CatalogueError>> {
            self.inner.ad(id)
        }
        fn scan_tracks(&self) -> BoxStream<'static, Result<(String, TrackRow), CatalogueError>> {
            if self.failures.fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1)).is_ok() {
                return futures::stream::once(async { Err(CatalogueError::Request("injected".into())) }).boxed();
            }
            self.inner.scan_tracks()
        }
        fn scan_ads(&self) -> BoxStream<'static, Result<(String, AdRow), CatalogueError>> {
            self.inner.scan_ads()
        }
    }

    #[tokio::test]
    async fn retries_until_the_store_answers() {
        let flaky = Flaky { failures: AtomicUsize::new(3), inner: catalogue() };
        let e = enricher(Arc::new(flaky), EnrichConfig::default());
        let info = e.lookup(Key::Track("t1".into())).await;
        assert_eq!(
            info,
            Info::Track { genre: e.symbols().intern("rock"), artist: e.symbols().intern("ar1"), duration_ms: Some(1) }
        );
        assert_eq!(e.stats().errors.load(Relaxed), 3);
        assert_eq!(e.stats().retries.load(Relaxed), 3);
        assert_eq!(e.stats().requests.load(Relaxed), 4);
    }

    #[tokio::test]
    async fn degrades_after_the_deadline_and_does_not_cache_it() {
        let flaky = Flaky { failures: AtomicUsize::new(usize::MAX), inner: catalogue() };
        let config =
            EnrichConfig { deadline: Duration::from_millis(30), on_timeout: OnTimeout::Degrade, ..Default::default() };
        let e = enricher(Arc::new(flaky), config);
        let info = e.lookup(Key::Track("t1".into())).await;
        assert_eq!(
            info,
            Info::Track { genre: e.symbols().unknown(), artist: e.symbols().unknown(), duration_ms: None }
        );
        assert_eq!(e.stats().degraded.load(Relaxed), 1);
        assert!(e.cached(&Key::Track("t1".into())).is_none());
    }

    #[tokio::test]
    async fn waits_past_the_deadline_are_counted_and_the_answer_arrives() {
        let flaky = Flaky { failures: AtomicUsize::new(6), inner: catalogue() };
        let config =
            EnrichConfig { deadline: Duration::from_millis(20), on_timeout: OnTimeout::Wait, ..Default::default() };
        let e = enricher(Arc::new(flaky), config);
        let info = e.lookup(Key::Track("t1".into())).await;
        assert_eq!(
            info,
            Info::Track { genre: e.symbols().intern("rock"), artist: e.symbols().intern("ar1"), duration_ms: Some(1) }
        );
        assert_eq!(e.stats().deadline_waits.load(Relaxed), 1, "one lookup waited past the deadline");
        assert_eq!(e.stats().retries.load(Relaxed), 6);
        assert_eq!(e.stats().degraded.load(Relaxed), 0);
    }

    #[tokio::test]
    async fn fetch_calls_back_with_the_answer() {
        let e = enricher(Arc::new(catalogue()), EnrichConfig::default());
        let (tx, rx) = tokio::sync::oneshot::channel();
        e.fetch(Key::Ad("a1".into()), move |k, i| {
            let _ = tx.send((k, i));
        });
        let (k, i) = tokio::time::timeout(Duration::from_secs(5), rx).await.unwrap().unwrap();
        assert_eq!(k, Key::Ad("a1".into()));
        assert_eq!(i, Info::Ad { category: e.symbols().intern("cars"), advertiser: e.symbols().intern("adv") });
        assert_eq!(e.cached(&k), Some(i));
    }

    #[tokio::test]
    async fn preload_fills_the_cache_up_to_its_capacity() {
        let e = enricher(Arc::new(catalogue()), EnrichConfig::default());
        let done = e.preload().await.unwrap();
        assert_eq!(done, Preloaded { tracks: 1, ads: 1, truncated: false });
        let s = e.symbols().clone();
        assert_eq!(
            e.cached(&Key::Track("t1".into())),
            Some(Info::Track { genre: s.intern("rock"), artist: s.intern("ar1"), duration_ms: Some(1) })
        );
        assert_eq!(
            e.cached(&Key::Ad("a1".into())),
            Some(Info::Ad { category: s.intern("cars"), advertiser: s.intern("adv") })
        );
        assert_eq!(e.stats().requests.load(Relaxed), 0, "a scan is not a lookup");
        assert_eq!(e.stats().preloaded.load(Relaxed), 2);

        let mut big = catalogue();
        big.tracks = Arc::new((0..10).map(|i| (format!("t{i}"), TrackRow::default())).collect());
        let small = enricher(Arc::new(big), EnrichConfig { cache_capacity: 4, ..Default::default() });
        assert_eq!(small.preload().await.unwrap(), Preloaded { tracks: 4, ads: 1, truncated: true });
    }

    #[tokio::test]
    async fn a_failing_scan_is_reported() {
        let flaky = Flaky { failures: AtomicUsize::new(1), inner: catalogue() };
        let e = enricher(Arc::new(flaky), EnrichConfig::default());
        assert!(matches!(e.preload().await, Err(CatalogueError::Request(_))));
        assert_eq!(e.preload().await.unwrap().tracks, 1, "the next reload succeeds");
    }

    /// A catalogue whose rows a test can change.
    struct Swappable(std::sync::Mutex<MemoryCatalogue>);

    impl Catalogue for Swappable {
        fn track(&self, id: &str) -> BoxFuture<'static, Result<Option<TrackRow>, CatalogueError>> {
            self.0.lock().unwrap().track(id)
        }
        fn ad(&self, id: &str) -> BoxFuture<'static, Result<Option<AdRow>, CatalogueError>> {
            self.0.lock().unwrap().ad(id)
        }
        fn scan_tracks(&self) -> BoxStream<'static, Result<(String, TrackRow), CatalogueError>> {
            self.0.lock().unwrap().scan_tracks()
        }
        fn scan_ads(&self) -> BoxStream<'static, Result<(String, AdRow), CatalogueError>> {
            self.0.lock().unwrap().scan_ads()
        }
    }

    #[tokio::test]
    async fn preloaded_rows_come_from_a_snapshot_that_a_reload_replaces() {
        let store = Arc::new(Swappable(std::sync::Mutex::new(catalogue())));
        let e = enricher(Arc::clone(&store) as Arc<dyn Catalogue>, EnrichConfig::default());
        let s = e.symbols().clone();
        assert!(!e.snapshot().1.live(Instant::now()), "nothing preloaded yet");
        e.preload().await.unwrap();
        let (generation, snapshot) = e.snapshot();
        assert_eq!(generation, 1);
        assert!(snapshot.live(Instant::now()));
        let h = |id: &str| std::hash::BuildHasher::hash_one(&e.hasher(), id);
        let rock = Info::Track { genre: s.intern("rock"), artist: s.intern("ar1"), duration_ms: Some(1) };
        assert_eq!(snapshot.track("t1", h("t1")), Some(rock));
        assert_eq!(
            snapshot.ad("a1", h("a1")),
            Some(Info::Ad { category: s.intern("cars"), advertiser: s.intern("adv") })
        );
        assert_eq!(snapshot.track("t2", h("t2")), None);
        // The rows are answers until `cache_ttl` after the load began, and not after.
        assert!(snapshot.until() > Instant::now() + Duration::from_secs(590));
        assert!(!snapshot.live(snapshot.until()));
        assert_eq!(e.cached_until(&Key::Track("t1".into())), Some((rock, snapshot.until())));
        assert_eq!(e.cache_entry(&Key::Track("t1".into())), None, "preloaded rows are not in the cache");

        // A reload swaps in the store's rows of then; holders of the old snapshot keep theirs.
        let jazz = TrackRow { genre: Some("jazz".into()), artist_id: Some("ar2".into()), duration_ms: None };
        store.0.lock().unwrap().tracks = Arc::new([("t1".to_owned(), jazz)].into_iter().collect());
        e.preload().await.unwrap();
        let (generation, newer) = e.snapshot();
        assert_eq!(generation, 2);
        let jazz = Info::Track { genre: s.intern("jazz"), artist: s.intern("ar2"), duration_ms: None };
        assert_eq!(newer.track("t1", h("t1")), Some(jazz));
        assert_eq!(e.cached(&Key::Track("t1".into())), Some(jazz));
        assert_eq!(snapshot.track("t1", h("t1")), Some(rock));
        assert_eq!(e.stats().requests.load(Relaxed), 0, "no lookup went to the store");
    }

    #[tokio::test]
    async fn a_failed_reload_keeps_the_snapshot_in_use() {
        let flaky = Arc::new(Flaky { failures: AtomicUsize::new(0), inner: catalogue() });
        let e = enricher(Arc::clone(&flaky) as Arc<dyn Catalogue>, EnrichConfig::default());
        e.preload().await.unwrap();
        // The tracks scan fails: the snapshot in use stays.
        flaky.failures.store(1, Relaxed);
        assert!(e.preload().await.is_err());
        let (generation, snapshot) = e.snapshot();
        assert_eq!(generation, 1);
        assert!(snapshot.live(Instant::now()));
        assert!(e.cached(&Key::Track("t1".into())).is_some());
    }

    /// Answers track lookups only when released, so that lookups pile up in flight.
    struct Gated {
        gate: Arc<tokio::sync::Notify>,
        requests: Arc<AtomicUsize>,
        inner: MemoryCatalogue,
    }

    impl Catalogue for Gated {
        fn track(&self, id: &str) -> BoxFuture<'static, Result<Option<TrackRow>, CatalogueError>> {
            self.requests.fetch_add(1, Relaxed);
            let (gate, answer) = (Arc::clone(&self.gate), self.inner.track(id));
            Box::pin(async move {
                gate.notified().await;
                answer.await
            })
        }
        fn ad(&self, id: &str) -> BoxFuture<'static, Result<Option<AdRow>, CatalogueError>> {
            self.inner.ad(id)
        }
        fn scan_tracks(&self) -> BoxStream<'static, Result<(String, TrackRow), CatalogueError>> {
            self.inner.scan_tracks()
        }
        fn scan_ads(&self) -> BoxStream<'static, Result<(String, AdRow), CatalogueError>> {
            self.inner.scan_ads()
        }
    }

    #[tokio::test]
    async fn concurrent_fetches_of_one_id_share_one_request() {
        let gate = Arc::new(tokio::sync::Notify::new());
        let requests = Arc::new(AtomicUsize::new(0));
        let gated = Gated { gate: Arc::clone(&gate), requests: Arc::clone(&requests), inner: catalogue() };
        let e = enricher(Arc::new(gated), EnrichConfig::default());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for caller in 0..3 {
            let tx = tx.clone();
            e.fetch(Key::Track("t1".into()), move |k, i| {
                let _ = tx.send((caller, k, i));
            });
        }
        // The first request is held at the gate until all three callers are waiting on it.
        tokio::time::timeout(Duration::from_secs(5), async {
            while requests.load(Relaxed) == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        gate.notify_one();
        let mut callers = Vec::new();
        for _ in 0..3 {
            let (caller, k, i) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
            assert_eq!(k, Key::Track("t1".into()));
            assert_eq!(
                i,
                Info::Track {
                    genre: e.symbols().intern("rock"),
                    artist: e.symbols().intern("ar1"),
                    duration_ms: Some(1)
                }
            );
            callers.push(caller);
        }
        callers.sort();
        assert_eq!(callers, [0, 1, 2]);
        assert_eq!(requests.load(Relaxed), 1);
        assert_eq!(e.stats().joined.load(Relaxed), 2);
        // Once answered, the id is no longer in flight: a new fetch after expiry would ask again.
        assert!(e.inner.in_flight.is_empty());
    }
}
