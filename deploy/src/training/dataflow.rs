//! The timely dataflow of `squall training-data`: each worker reads its share of the archive's
//! files (in order of their first event time) and of the label rows, everything is exchanged to
//! the user's worker at the time bucket of its event time, and each worker applies a bucket once
//! every worker has passed it ([`super::asof::AsOf`]). Answers go to worker 0, which spills them
//! ([`super::spill`]).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_array::{Array, Int32Array, Int64Array, RecordBatch, StringArray, UInt64Array};
use compact_str::CompactString;
use squall_archive::file::FileBlocks;
use squall_archive::{Archive, FileEntry, ReadError};
use squall_enrichment::Symbols;
use squall_operators::event::{AdImpression, SongCompletion};
use squall_operators::{Event, Plan, key_groups};
use timely::dataflow::ProbeHandle;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::operators::{Exchange as _, Inspect, Operator, Probe};

use super::asof::{Answer, AsOf, Item, Position};
use super::catalogue::Catalogue;
use super::spill::{Key, Rows, Spill, decode, encode};

/// Event time per timely timestamp: the events and labels of one bucket are sorted and applied
/// together once every worker is past it.
pub const BUCKET_MS: i64 = 60_000;

/// Archive files each worker fetches ahead of the ones it decodes.
const AHEAD_FILES: usize = 2;

/// Rows decoded at a time from an archive file.
const BLOCK_ROWS: usize = 4096;

/// Event time a worker hands out beyond what every worker has applied.
const AHEAD_MS: i64 = 4 * 3_600_000;

/// Users a worker answers per timestamp of a snapshot (`--at`).
const SNAPSHOT_USERS: usize = 4096;

/// Shares of a snapshot a worker has sent and worker 0 has not written yet, at most.
const SHARES_IN_FLIGHT: i64 = 8;

/// Rows of label answers a worker sends worker 0 at a time.
const ROWS_PER_MESSAGE: usize = 4096;

/// The archive's columns the job reads ([`events`]): the rest (the raw value, the key, the
/// Kafka timestamp, dead letters' reasons) are not decoded, and hold no pages in memory.
const COLUMNS: &[&str] = &["partition", "offset", "event_id", "user_id", "ts", "track_id", "ms_played", "ad_id"];

/// Blocks (or label buckets) a worker hands out per activation before it yields.
const BLOCKS_PER_STEP: usize = 8;

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
    /// The label rows' users and times, or none with `at`.
    pub labels: super::labels::Rows,
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
    /// What worker 0 of process 0 does with the answers.
    pub answers: Mutex<Answers>,
    /// Per worker: events applied, resends dropped, users held and their states' bytes.
    pub counts: Mutex<Vec<(u64, u64, usize, usize)>>,
}

/// What the workers send worker 0: their answers a batch of typed rows at a time, or a failure.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Sent {
    /// A batch of [`Rows`], as Arrow IPC bytes ([`super::spill::encode`]).
    Rows(Vec<u8>),
    /// The job failed.
    Failed(String),
}

/// The answers as worker 0 of process 0 receives them: spilled, until the first failure.
#[derive(Default)]
pub struct Answers {
    /// Where they go (process 0 only).
    pub spill: Option<Spill>,
    /// Why the job failed: an archive file that cannot be read, or the spill.
    pub failed: Option<String>,
}

impl Answers {
    fn take(&mut self, sent: &Sent) {
        if self.failed.is_some() {
            return;
        }
        let pushed = match (sent, self.spill.as_mut()) {
            (Sent::Failed(why), _) => Err(why.clone()),
            (_, None) => Ok(()),
            (Sent::Rows(bytes), Some(s)) => decode(bytes).and_then(|b| s.push(b).map_err(|e| e.to_string())),
        };
        if let Err(why) = pushed {
            self.failed = Some(why);
        }
    }
}

/// Turns `answers` into `rows`, and `rows` into messages once they are `at_least` (failures at
/// once).
fn send(answers: &mut Vec<Answer>, rows: &mut Rows, at_least: usize, sent: &mut Vec<Sent>) {
    for a in answers.drain(..) {
        let pushed = match a {
            Answer::Failed(why) => Err(why),
            Answer::Label { row, json } => rows.push(Key::Row(row), json.as_deref()),
            Answer::User { user, json } => rows.push(Key::User(user), Some(&json)),
        };
        if let Err(why) = pushed {
            sent.push(Sent::Failed(why));
        }
    }
    if !rows.is_empty() && rows.len() >= at_least {
        sent.push(match rows.batch().and_then(|b| encode(&b)) {
            Ok(bytes) => Sent::Rows(bytes),
            Err(why) => Sent::Failed(why),
        });
    }
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
            // What every worker has applied: a worker hands out at most `AHEAD_MS` of event
            // time beyond it, so the items waiting for the slowest worker stay bounded.
            let applied = ProbeHandle::<i64>::new();
            let behind = applied.clone();
            let items = source(scope, "ReadArchive", move |cap, info| {
                let activator = scope.activator_for(info.address);
                let mut reader = Reader::new(read, index, peers);
                let mut cap = Some(cap);
                move |output| {
                    let Some(c) = cap.as_mut() else { return };
                    let done = behind.with_frontier(|f| f.first().copied()).unwrap_or(i64::MAX);
                    let limit = done.saturating_add(AHEAD_MS / BUCKET_MS);
                    let mut budget = BLOCKS_PER_STEP;
                    loop {
                        match reader.step(limit) {
                            Step::Items(buckets) => {
                                for (b, mut items) in buckets {
                                    output.session(&c.delayed(&b)).give_container(&mut items);
                                }
                                budget -= 1;
                                if budget == 0 {
                                    activator.activate();
                                    break;
                                }
                            }
                            Step::Wait => {
                                activator.activate_after(Duration::from_millis(1));
                                break;
                            }
                            Step::Failed(why) => {
                                output.session(c).give(Item::Failed(why));
                                cap = None;
                                return;
                            }
                            Step::Done => {
                                cap = None;
                                return;
                            }
                        }
                    }
                    match reader.least() {
                        Some(ts) => c.downgrade(&bucket(ts).max(*c.time())),
                        None => cap = None,
                    }
                }
            })
            .container::<Vec<Item>>();

            // What worker 0 has written: a snapshot hands out its next users once it has all but the
            // previous share.
            let gathered = ProbeHandle::<i64>::new();
            let written_by_0 = gathered.clone();
            let state = Arc::clone(&job);
            let route = move |i: &Item| i.user().map_or(0, |u| key_groups::owner(u, peers) as u64);
            let answers = items.unary_frontier::<timely::container::CapacityContainerBuilder<Vec<Sent>>, _, _, _>(
                Exchange::new(route),
                "AsOf",
                move |cap, info| {
                    let activator = scope.activator_for(info.address);
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
                    let mut rows = Rows::new(state.plan.declaration(), state.at.is_some());
                    let mut sent = Vec::new();
                    // With `--at`, once every item is applied: the users left to answer.
                    let mut snapshot = None;
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
                        // The rows go a batch at a time, the last ones once the input is done.
                        send(&mut out, &mut rows, if least.is_some() { ROWS_PER_MESSAGE } else { 0 }, &mut sent);
                        if !sent.is_empty() {
                            output.session(c).give_iterator(sent.drain(..));
                        }
                        if let Some(l) = least {
                            if *c.time() < l {
                                c.downgrade(&l);
                            }
                            return;
                        }
                        let Some(at) = state.at else {
                            state.counts.lock().unwrap_or_else(|p| p.into_inner()).push(asof.summary());
                            cap = None;
                            return;
                        };
                        // The snapshot: `SNAPSHOT_USERS` users per timestamp, a share once worker
                        // 0 has written all but `SHARES_IN_FLIGHT - 1` before it, each state
                        // freed as it is answered; so neither the answers nor the states pile up.
                        let users = snapshot.get_or_insert_with(|| {
                            state.counts.lock().unwrap_or_else(|p| p.into_inner()).push(asof.summary());
                            asof.take_users()
                        });
                        let written = written_by_0.with_frontier(|f| f.first().copied()).unwrap_or(i64::MAX);
                        // (Saturating: with no item before `at` the capability is still at
                        // i64::MIN.)
                        if written < c.time().saturating_add(2 - SHARES_IN_FLIGHT) {
                            activator.activate_after(Duration::from_millis(1));
                            return;
                        }
                        let next = c.time() + 1;
                        c.downgrade(&next);
                        let mut taken = 0;
                        for (user, s) in users.by_ref().take(SNAPSHOT_USERS) {
                            taken += 1;
                            if let Some(json) = asof.answer_of(&s, at) {
                                out.push(Answer::User { user, json });
                            }
                        }
                        send(&mut out, &mut rows, 0, &mut sent);
                        output.session(c).give_iterator(sent.drain(..));
                        if taken < SNAPSHOT_USERS {
                            cap = None;
                        } else {
                            activator.activate();
                        }
                    }
                },
            );
            let gather = Arc::clone(&job);
            answers
                .probe_with(&applied)
                .exchange(|_| 0)
                .inspect_core(move |event| {
                    if let Ok((_, batch)) = event {
                        let mut answers = gather.answers.lock().unwrap_or_else(|p| p.into_inner());
                        batch.iter().for_each(|a| answers.take(a));
                    }
                })
                .probe_with(&gathered);
            gathered
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

/// A file being fetched on the runtime.
type Fetching = tokio::task::JoinHandle<Result<FileBlocks, ReadError>>;

/// Items of one time bucket.
type Buckets = BTreeMap<i64, Vec<Item>>;

/// What one [`Reader::step`] did.
enum Step {
    /// Items to hand out, by bucket.
    Items(Buckets),
    /// The next items are beyond the limit: wait for the other workers.
    Wait,
    /// A file could not be read.
    Failed(String),
    /// Everything is handed out.
    Done,
}

/// One worker's share of the inputs, handed out about in event-time order: its label rows a
/// bucket at a time and its files a block of rows at a time, merged by how far back each could
/// still reach, so that what waits in the workers' stashes is bounded by [`AHEAD_MS`] (plus a
/// block of each open file and the events' disorder) rather than the files' length.
struct Reader {
    job: Arc<Job>,
    /// Its label rows by time (4 bytes a row; the times are the job's).
    labels: VecDeque<u32>,
    /// Its files not fetched yet, by first event time.
    files: VecDeque<(u8, FileEntry)>,
    /// The next few, being fetched.
    fetching: VecDeque<(u8, FileEntry, Fetching)>,
    /// Files being decoded.
    open: Vec<(u8, FileBlocks)>,
}

/// What the next step of a [`Reader`] hands out.
enum Next {
    Label,
    Fetched,
    Block(usize),
}

impl Reader {
    fn new(job: Arc<Job>, index: usize, peers: usize) -> Reader {
        // The labels file has at most u32::MAX rows (`labels::read`).
        let mut labels: Vec<u32> = (index..job.labels.len()).step_by(peers).map(|row| row as u32).collect();
        labels.sort_unstable_by_key(|row| (job.labels.ts[*row as usize], *row));
        let files = job.files.iter().skip(index).step_by(peers).cloned().collect();
        Reader { job, labels: labels.into(), files, fetching: VecDeque::new(), open: Vec::new() }
    }

    /// The first event time of the next file to open.
    fn next_file_ts(&self) -> Option<i64> {
        let fetching = self.fetching.front().map(|(_, e, _)| e);
        fetching.or(self.files.front().map(|(_, e)| e)).map(|e| e.ts_range.map_or(i64::MIN, |r| r.0))
    }

    /// The least event time this worker may still hand out (`None`: nothing left).
    fn least(&self) -> Option<i64> {
        self.choose().map(|(ts, _)| ts)
    }

    /// The least event time still to hand out, and where it is.
    fn choose(&self) -> Option<(i64, Next)> {
        let label_ts = |row: &u32| self.job.labels.ts[*row as usize];
        let mut best: Option<(i64, Next)> = self.labels.front().map(|row| (label_ts(row), Next::Label));
        let mut consider = |ts: i64, next: Next| {
            if best.as_ref().is_none_or(|(b, _)| ts < *b) {
                best = Some((ts, next));
            }
        };
        if let Some(ts) = self.next_file_ts() {
            consider(ts, Next::Fetched);
        }
        for (i, (_, f)) in self.open.iter().enumerate() {
            consider(f.least_ahead(), Next::Block(i));
        }
        best
    }

    /// Hands out the items at the least event time left, unless its bucket is beyond `limit`.
    fn step(&mut self, limit: i64) -> Step {
        while self.fetching.len() < AHEAD_FILES
            && let Some((topic, entry)) = self.files.pop_front()
        {
            let (archive, e) = (self.job.archive.clone(), entry.clone());
            let read =
                self.job.runtime.spawn(async move { archive.read_blocks_of(&e, BLOCK_ROWS, Some(COLUMNS)).await });
            self.fetching.push_back((topic, entry, read));
        }
        // Files with no event left go, once the rest of their rows (dead letters) are read and
        // the whole file checked against its entry.
        let mut i = 0;
        while i < self.open.len() {
            if self.open[i].1.least_ahead() != i64::MAX {
                i += 1;
                continue;
            }
            let (_, mut file) = self.open.swap_remove(i);
            while let Some(block) = file.next_block() {
                if let Err(e) = block {
                    return Step::Failed(format!("{}: {e}", file.entry().path));
                }
            }
        }
        let Some((ts, next)) = self.choose() else { return Step::Done };
        if bucket(ts) > limit {
            return Step::Wait;
        }
        let mut out = Buckets::new();
        match next {
            Next::Label => {
                let b = bucket(ts);
                let label_ts = |row: u32| self.job.labels.ts[row as usize];
                while let Some(row) = self.labels.front().copied().filter(|row| bucket(label_ts(*row)) == b) {
                    self.labels.pop_front();
                    let (row, ts) = (u64::from(row), label_ts(row));
                    let user = self.job.labels.user(row as usize).into();
                    out.entry(b).or_default().push(Item::Label { row, user, ts });
                }
            }
            Next::Fetched => {
                let (topic, entry, read) = self.fetching.pop_front().expect("chosen");
                match self.job.runtime.block_on(read) {
                    Ok(Ok(file)) => self.open.push((topic, file)),
                    Ok(Err(e)) => return Step::Failed(e.to_string()),
                    Err(e) => return Step::Failed(format!("{}: {e}", entry.path)),
                }
            }
            Next::Block(i) => {
                let (topic, file) = &mut self.open[i];
                match file.next_block() {
                    Some(Ok(batch)) => events(&batch, *topic, self.job.until, |p, e| {
                        out.entry(bucket(p.ts)).or_default().push(Item::Event(p, e));
                    }),
                    Some(Err(e)) => return Step::Failed(format!("{}: {e}", file.entry().path)),
                    None => {}
                }
            }
        }
        Step::Items(out)
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
