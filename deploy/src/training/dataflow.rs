//! The timely dataflow of `squall training-data`: each worker reads its share of the archive's
//! files (in order of their first event time) and of the label rows, everything is exchanged to
//! the user's worker at the time bucket of its event time, and each worker applies a bucket once
//! every worker has passed it ([`super::asof::AsOf`]). Answers go to worker 0.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_array::{Array, Int32Array, Int64Array, RecordBatch, StringArray, UInt64Array};
use compact_str::CompactString;
use squall_archive::{Archive, ArchivedFile, FileEntry, ReadError};
use squall_enrichment::Symbols;
use squall_operators::event::{AdImpression, SongCompletion};
use squall_operators::{Event, Plan, key_groups};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::operators::{Exchange as _, Inspect, Operator, Probe};

use super::asof::{Answer, AsOf, Item, Position};
use super::catalogue::Catalogue;

/// Event time per timely timestamp: the events and labels of one bucket are sorted and applied
/// together once every worker is past it.
pub const BUCKET_MS: i64 = 60_000;

/// Archive files each worker reads ahead of the one it hands out.
const AHEAD: usize = 2;

/// What every worker of a process shares.
pub struct Job {
    /// The version's compiled plan.
    pub plan: Arc<Plan>,
    /// The process's symbols (the catalogue's and the plan's).
    pub symbols: Symbols,
    /// The catalogue.
    pub catalogue: Arc<Catalogue>,
    /// The archive.
    pub archive: Archive,
    /// Every data file to read, by first event time, with its topic's index among the inputs.
    pub files: Vec<(u8, FileEntry)>,
    /// The label rows (user, time), or empty with `at`.
    pub labels: Vec<(CompactString, i64)>,
    /// With `--at`: every user's attributes as of this time.
    pub at: Option<i64>,
    /// Events at or after this time are not read (no label can see them).
    pub until: i64,
    /// `state.dedup_horizon`, ms.
    pub dedup_horizon_ms: i64,
    /// `state.user_ttl`, ms.
    pub user_ttl_ms: i64,
    /// Where files are read.
    pub runtime: tokio::runtime::Handle,
    /// What worker 0 gathers.
    pub answers: Mutex<Vec<Answer>>,
    /// Per worker: events applied, resends dropped, users held and their states' bytes.
    pub counts: Mutex<Vec<(u64, u64, usize, usize)>>,
}

/// The timestamp of event time `ts`.
pub fn bucket(ts: i64) -> i64 {
    ts.div_euclid(BUCKET_MS)
}

/// Runs the job on the workers `config` describes; returns once every worker is done.
pub fn run(job: Arc<Job>, config: timely::Config) -> Result<(), String> {
    let guards = timely::execute(config, move |worker| {
        let job = Arc::clone(&job);
        let (index, peers) = (worker.index(), worker.peers());
        let probe = worker.dataflow::<i64, _, _>(|scope| {
            let read = Arc::clone(&job);
            let items = source(scope, "ReadArchive", move |cap, info| {
                let activator = scope.activator_for(info.address);
                let mut reader = Reader::new(read, index, peers);
                let mut cap = Some(cap);
                move |output| {
                    let Some(c) = cap.as_mut() else { return };
                    if let Some(labels) = reader.labels.take() {
                        for (b, mut items) in labels {
                            output.session(&c.delayed(&b)).give_container(&mut items);
                        }
                    }
                    match reader.next_file() {
                        None => cap = None,
                        Some(Err(why)) => {
                            output.session(c).give(Item::Failed(why));
                            cap = None;
                        }
                        Some(Ok(batches)) => {
                            for (b, mut items) in batches {
                                output.session(&c.delayed(&b)).give_container(&mut items);
                            }
                            match reader.least_ahead() {
                                Some(next) => {
                                    c.downgrade(&bucket(next).max(*c.time()));
                                    activator.activate();
                                }
                                None => cap = None,
                            }
                        }
                    }
                }
            })
            .container::<Vec<Item>>();

            let state = Arc::clone(&job);
            let route = move |i: &Item| i.user().map_or(0, |u| key_groups::owner(u, peers) as u64);
            let answers = items.unary_frontier::<timely::container::CapacityContainerBuilder<Vec<Answer>>, _, _, _>(
                Exchange::new(route),
                "AsOf",
                move |cap, _info| {
                    let mut cap = Some(cap);
                    let mut stash: BTreeMap<i64, Vec<Item>> = BTreeMap::new();
                    let mut asof = AsOf::new(
                        Arc::clone(&state.plan),
                        state.symbols.clone(),
                        Arc::clone(&state.catalogue),
                        state.dedup_horizon_ms,
                        state.user_ttl_ms,
                    );
                    let mut out = Vec::new();
                    move |(input, frontier), output| {
                        input.for_each(|time, data| {
                            if let Some(t) = time.least() {
                                stash.entry(*t).or_default().append(data);
                            }
                        });
                        let least = frontier.frontier().iter().min().copied();
                        while let Some(entry) = stash.first_entry() {
                            if least.is_some_and(|l| l <= *entry.key()) {
                                break;
                            }
                            asof.step(&mut entry.remove(), &mut out);
                        }
                        let Some(c) = cap.as_mut() else { return };
                        if least.is_none()
                            && let Some(at) = state.at
                        {
                            asof.snapshot(at, &mut out);
                        }
                        if !out.is_empty() {
                            output.session(c).give_iterator(out.drain(..));
                        }
                        match least {
                            Some(l) if *c.time() < l => c.downgrade(&l),
                            Some(_) => {}
                            None => {
                                let mut counts = state.counts.lock().unwrap_or_else(|p| p.into_inner());
                                counts.push((asof.counts.0, asof.counts.1, asof.users(), asof.state_bytes()));
                                cap = None;
                            }
                        }
                    }
                },
            );
            let gather = Arc::clone(&job);
            let (probe, _) = answers
                .exchange(|_| 0)
                .inspect(move |a| gather.answers.lock().unwrap_or_else(|p| p.into_inner()).push(a.clone()))
                .probe();
            probe
        });
        while !probe.done() {
            worker.step_or_park(Some(Duration::from_millis(100)));
        }
    })?;
    for result in guards.join() {
        result?;
    }
    Ok(())
}

/// A file being read on the runtime.
type Reading = tokio::task::JoinHandle<Result<ArchivedFile, ReadError>>;

/// Items of one time bucket.
type Buckets = BTreeMap<i64, Vec<Item>>;

/// One worker's share of the inputs: its label rows (sent at once) and its files, read on the
/// runtime a few ahead of the one handed out.
struct Reader {
    job: Arc<Job>,
    labels: Option<Buckets>,
    files: VecDeque<(u8, FileEntry)>,
    reading: VecDeque<(u8, FileEntry, Reading)>,
}

impl Reader {
    fn new(job: Arc<Job>, index: usize, peers: usize) -> Reader {
        let mut labels = Buckets::new();
        for (row, (user, ts)) in job.labels.iter().enumerate().skip(index).step_by(peers) {
            labels.entry(bucket(*ts)).or_default().push(Item::Label { row: row as u64, user: user.clone(), ts: *ts });
        }
        let files = job.files.iter().skip(index).step_by(peers).cloned().collect();
        Reader { job, labels: Some(labels), files, reading: VecDeque::new() }
    }

    /// The next file's events, by bucket; `None` when all are read.
    fn next_file(&mut self) -> Option<Result<Buckets, String>> {
        while self.reading.len() < AHEAD
            && let Some((topic, entry)) = self.files.pop_front()
        {
            let (archive, e) = (self.job.archive.clone(), entry.clone());
            let read = self.job.runtime.spawn(async move { archive.read(&e).await });
            self.reading.push_back((topic, entry, read));
        }
        let (topic, entry, read) = self.reading.pop_front()?;
        let file = match self.job.runtime.block_on(read) {
            Ok(Ok(file)) => file,
            Ok(Err(e)) => return Some(Err(e.to_string())),
            Err(e) => return Some(Err(format!("{}: {e}", entry.path))),
        };
        let mut out = Buckets::new();
        for batch in &file.batches {
            events(batch, topic, self.job.until, |p, e| out.entry(bucket(p.ts)).or_default().push(Item::Event(p, e)));
        }
        Some(Ok(out))
    }

    /// The least first event time of the files not handed out yet.
    fn least_ahead(&self) -> Option<i64> {
        let reading = self.reading.front().map(|(_, e, _)| e);
        reading.or(self.files.front().map(|(_, e)| e)).and_then(|e| e.ts_range.map(|r| r.0))
    }
}

/// The decoded events of an archive batch (dead letters left out) before `until`.
pub fn events(batch: &RecordBatch, topic: u8, until: i64, mut each: impl FnMut(Position, Event)) {
    fn col<'b, T: 'static>(b: &'b RecordBatch, name: &str) -> &'b T {
        b.column_by_name(name).and_then(|c| c.as_any().downcast_ref::<T>()).expect("the archive checked its schema")
    }
    let (event_id, user_id, ts) =
        (col::<StringArray>(batch, "event_id"), col::<StringArray>(batch, "user_id"), col::<Int64Array>(batch, "ts"));
    let (track_id, ms_played, ad_id) = (
        col::<StringArray>(batch, "track_id"),
        col::<UInt64Array>(batch, "ms_played"),
        col::<StringArray>(batch, "ad_id"),
    );
    let (partition, offset) = (col::<Int32Array>(batch, "partition"), col::<Int64Array>(batch, "offset"));
    for i in 0..batch.num_rows() {
        if !(event_id.is_valid(i) && user_id.is_valid(i) && ts.is_valid(i)) || ts.value(i) >= until {
            continue;
        }
        let p = Position { ts: ts.value(i), topic, partition: partition.value(i), offset: offset.value(i) };
        let (event_id, user_id) = (CompactString::from(event_id.value(i)), CompactString::from(user_id.value(i)));
        let e = if track_id.is_valid(i) {
            Event::Song(SongCompletion {
                event_id,
                user_id,
                track_id: track_id.value(i).into(),
                ms_played: ms_played.value(i),
                ts: p.ts,
            })
        } else {
            let ad_id = if ad_id.is_valid(i) { ad_id.value(i).into() } else { CompactString::default() };
            Event::Ad(AdImpression { event_id, user_id, ad_id, ts: p.ts })
        };
        each(p, e);
    }
}
