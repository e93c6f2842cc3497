//! `squall consistency GROUP`: the exact online/offline check. For every checked user it
//! recomputes the attributes from the archive with the version's own plan, dedup and windows (the
//! training replay, [`super::asof`]), over exactly the events the running version reports having
//! applied, and compares them with the version's.
//!
//! # Notes
//! - **The live side** is the version's changelog topic (`[feed] changelog = true`), read from
//!   the start up to its ends as of the check's start: per user the message of the highest cut
//!   (a later message of a cut already seen is a redelivery and changes nothing). It carries every
//!   user's attributes, evidence and cut without asking the version anything, however many
//!   processes it runs, and it is the record the version itself published; the version's HTTP
//!   API would cost a query per user and answer a state that moves while it is read.
//! - **Which events.** The user's archived events whose prefixes per partition add up to the
//!   live evidence ([`super::prefix`]); those are replayed alone, in the training replay's order,
//!   and the replay's own evidence must come out equal to the live one before the attributes are
//!   compared (it does not, e.g., for a user the version expired and started afresh).
//! - **Not comparable, never a difference**: a user whose evidence matches no prefixes (the
//!   archive lacks events the version applied) or whose replay reaches other evidence.
//! - **Agreement** is [`squall_operators::compare`]'s, as `squall diff` uses it: equal values,
//!   floats within a relative [`TOLERANCE`].
//! - **Order.** The replay applies the events in event-time order; counts, sums, maps, maxima and
//!   windows with their default lateness (the window) do not depend on the order. An attribute
//!   that does (`last` over events of several partitions, a `lateness` shorter than its window)
//!   can differ where the version read the events in another order, and is reported as a
//!   difference: the live value is then not the declaration's value in event time.
//! - **Sample.** `--sample N` checks the N users with the smallest [`user_hash`]: the same users
//!   on every run, spread over the key space. Memory is the checked users' archived events; the
//!   whole archive is read (it is not indexed by user).
//! - **Catalogue.** As in `squall training-data`, events are enriched from the catalogue as it
//!   is now: a catalogue row changed since the version enriched an event shows as a difference.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::Message as _;
use rdkafka::consumer::Consumer as _;
use serde::Serialize;
use squall_archive::{Archive, ArchivedFile, FileEntry, ListError, OpenError, ReadError};
use squall_enrichment::{CatalogueError, Symbols};
use squall_operators::compare::{self, Record};
use squall_operators::dedup::dedup_key;
use squall_operators::{Epoch, Event, Evidence, Plan, user_hash};
use squall_topologies::{SpecError, TopologySpec};

use super::asof::{AsOf, Item, Position};
use super::prefix::{self, Entry, Unmatched};
use crate::changelog_diff::{self, DiffError};

/// The relative tolerance float attributes are compared with (`squall diff`'s).
pub const TOLERANCE: f64 = changelog_diff::TOLERANCE;

/// How long reading the changelog may go without a message before it is given up.
const STALL: Duration = Duration::from_secs(30);

/// Archive files read at once.
const AHEAD: usize = 4;

/// Recompute a running version's attributes from the archive over exactly the events it reports
/// having applied (its changelog's evidence), and report per attribute the users agreeing and
/// differing. Exits non-zero when any user differs.
#[derive(clap::Args, Debug)]
pub struct ConsistencyArgs {
    /// The version's group id, e.g. personalization-v1 (it publishes its changelog topic
    /// `<group id>.attributes` with `[feed] changelog = true`).
    pub group: String,
    /// The topology file the version runs, e.g. topologies/personalization.toml.
    #[arg(long, short)]
    pub topology: PathBuf,
    /// Which version's declarations (default: the one the group id names, `<name>-v<version>`).
    #[arg(long)]
    pub version: Option<u32>,
    /// The archive of the version's input topics (a directory, or s3://, gs://, az:// URL).
    #[arg(long, value_name = "URL")]
    pub archive: String,
    /// Check only this many users, picked by the hash of their id (the same ones on every run);
    /// default: every user in the changelog.
    #[arg(long, value_name = "N")]
    pub sample: Option<usize>,
    /// Differing values listed (the smallest user ids first).
    #[arg(long, default_value_t = 20)]
    pub examples: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Kafka bootstrap servers (default: the topology file's).
    #[arg(long)]
    pub brokers: Option<String>,
    /// Where the catalogue is read.
    #[command(flatten)]
    pub catalogue: super::CatalogueArgs,
}

/// Why the check could not run, or found differences.
#[derive(Debug, thiserror::Error)]
pub enum ConsistencyError {
    /// The topology file or version.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A flag or the group id.
    #[error("{0}")]
    Usage(String),
    /// The changelog topic cannot be opened.
    #[error(transparent)]
    Changelog(#[from] DiffError),
    /// The changelog cannot be read to its end.
    #[error("cannot read the changelog {topic}: {message}")]
    Kafka {
        /// The changelog topic.
        topic: String,
        /// What went wrong.
        message: String,
    },
    /// The archive cannot be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The archive cannot be listed.
    #[error(transparent)]
    List(#[from] ListError),
    /// An archive file cannot be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The catalogue cannot be read.
    #[error("cannot read the catalogue: {0}")]
    Catalogue(#[from] CatalogueError),
    /// The archive holds no files of the version's input topics.
    #[error(
        "the archive {url} holds no files of {topics}: check --archive, or start `squall archive` on the version's topics"
    )]
    EmptyArchive {
        /// The archive.
        url: String,
        /// The topics looked for.
        topics: String,
    },
    /// The changelog holds no users yet.
    #[error("the changelog {topic} holds no users yet: the version publishes them once it has applied events")]
    EmptyChangelog {
        /// The changelog topic.
        topic: String,
    },
    /// The runtime.
    #[error("{0}")]
    Runtime(std::io::Error),
    /// The check ran, and some users' attributes differ from the archive's recomputation.
    #[error("{differing} of {compared} compared users differ from the recomputation from the archive")]
    Differs {
        /// Users differing.
        differing: u64,
        /// Users compared.
        compared: u64,
    },
}

/// Users checked but not compared, by why.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NotComparable {
    /// The version applied more of the user's events than the archive holds (it is behind).
    pub archive_behind: u64,
    /// No prefixes of the user's archived events add up to the live evidence (the archive lacks
    /// events the version applied).
    pub no_matching_prefix: u64,
    /// The user's events are in too many partitions to search.
    pub too_many_combinations: u64,
    /// The replay of the matching events reaches other evidence (e.g. the version expired the
    /// user and started afresh).
    pub replay_differs: u64,
}

impl NotComparable {
    /// Users not compared in all.
    pub fn total(&self) -> u64 {
        self.archive_behind + self.no_matching_prefix + self.too_many_combinations + self.replay_differs
    }

    fn count(&mut self, why: Unmatched) {
        match why {
            Unmatched::ArchiveBehind => self.archive_behind += 1,
            Unmatched::NoPrefix => self.no_matching_prefix += 1,
            Unmatched::TooManyCombinations => self.too_many_combinations += 1,
        }
    }
}

/// One attribute over the checked users.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AttributeConsistency {
    /// The attribute.
    pub name: String,
    /// Compared users whose live value equals the recomputed one.
    pub agree: u64,
    /// Compared users whose values differ.
    pub differ: u64,
    /// Checked users not compared.
    pub not_comparable: u64,
}

/// One differing value.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Example {
    /// The user.
    pub user_id: String,
    /// The attribute.
    pub attribute: String,
    /// The version's value (its changelog's).
    pub live: serde_json::Value,
    /// The value recomputed from the archive.
    pub archive: serde_json::Value,
}

/// What `squall consistency` found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// The version's group id.
    pub group_id: String,
    /// The archive.
    pub archive: String,
    /// Changelog messages read.
    pub changelog_messages: u64,
    /// Users in the changelog.
    pub users_in_changelog: u64,
    /// Users checked (all, or the sample).
    pub users_checked: u64,
    /// Checked users compared: their live evidence matched archived events.
    pub users_compared: u64,
    /// Compared users whose archived events go further than the version has applied (compared
    /// as of the point the version reached).
    pub users_behind_archive: u64,
    /// Compared users agreeing on every attribute.
    pub users_agreeing: u64,
    /// Compared users with at least one differing attribute.
    pub users_differing: u64,
    /// Checked users not compared, by why.
    pub not_comparable: NotComparable,
    /// Per attribute the live side answers.
    pub attributes: Vec<AttributeConsistency>,
    /// Attributes only the live side answers (the topology file declares others).
    pub only_live: Vec<String>,
    /// Attributes only the recomputation answers.
    pub only_archive: Vec<String>,
    /// Relative tolerance of float comparisons.
    pub tolerance: f64,
    /// Archive files read.
    pub archive_files: usize,
    /// Archived events of the checked users.
    pub archive_events: u64,
    /// Up to `--examples` differing values, the smallest user ids first.
    pub examples: Vec<Example>,
}

/// `squall consistency` on the command line: prints the report; an error when a user differs.
pub fn cli(args: ConsistencyArgs) -> Result<(), ConsistencyError> {
    let json = args.json;
    let report = check(args)?;
    if json {
        println!("{}", serde_json::to_string(&report).expect("a report serialises"));
    } else {
        print!("{}", table(&report));
    }
    if report.users_differing > 0 {
        return Err(ConsistencyError::Differs { differing: report.users_differing, compared: report.users_compared });
    }
    Ok(())
}

/// The version `group` names: `<name>-v<version>` of the topology `name`.
fn version_of(group: &str, name: &str) -> Result<u32, ConsistencyError> {
    group.strip_prefix(name).and_then(|rest| rest.strip_prefix("-v")).and_then(|v| v.parse().ok()).ok_or_else(|| {
        ConsistencyError::Usage(format!(
            "{group} is not a group id of topology {name} (those are {name}-v<version>): check the group id, or \
                 pass the version's topology file"
        ))
    })
}

/// The topology version `args` name, with their overrides; refused unless the group id is
/// that version's.
fn spec(args: &ConsistencyArgs) -> Result<TopologySpec, ConsistencyError> {
    let spec = TopologySpec::load(&args.topology)?;
    let version = match args.version {
        Some(v) => v,
        None => version_of(&args.group, &spec.name)?,
    };
    let mut spec = spec.with_version(version)?;
    if spec.group_id() != args.group {
        return Err(ConsistencyError::Usage(format!(
            "{} is not the group id of version {version} of {} ({})",
            args.group,
            spec.name,
            spec.group_id()
        )));
    }
    args.brokers.iter().for_each(|v| v.clone_into(&mut spec.kafka.brokers));
    args.catalogue.apply(&mut spec);
    Ok(spec)
}

/// Runs the check.
pub fn check(args: ConsistencyArgs) -> Result<Report, ConsistencyError> {
    let started = Instant::now();
    let spec = spec(&args)?;
    let (live, messages) = read_changelog(&spec.kafka.brokers, &args.group)?;
    if live.is_empty() {
        return Err(ConsistencyError::EmptyChangelog { topic: squall_feeds::changelog::topic(&args.group) });
    }
    let mut users: Vec<&String> = live.keys().collect();
    users.sort_by_key(|u| (user_hash(u), *u));
    users.truncate(args.sample.unwrap_or(usize::MAX));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(ConsistencyError::Runtime)?;
    let topics = [spec.kafka.song_completions.clone(), spec.kafka.ad_impressions.clone()];
    let checked: HashSet<&str> = users.iter().map(|u| u.as_str()).collect();
    let (files, mut archived) = archived_events(&runtime, &args.archive, &topics, &checked)?;
    let symbols = Symbols::default();
    let catalogue =
        runtime.block_on(super::catalogue::Catalogue::load(&spec.cql.nodes, &spec.cql.keyspace, &symbols))?;
    let plan = Arc::new(Plan::compile(&spec.attributes, &symbols));
    let horizon_ms = spec.state.dedup_horizon.as_millis() as i64;

    // The events each user's evidence names, replayed together as the training replay does.
    let mut tally = Tally::default();
    let mut items = Vec::new();
    let mut matched = Vec::new();
    let mut archive_events = 0;
    for user in &users {
        let events = archived.remove(user.as_str()).unwrap_or_default();
        archive_events += events.len() as u64;
        let entries: Vec<Entry> = events
            .iter()
            .map(|(p, e)| Entry {
                stream: (p.topic, p.partition),
                offset: p.offset,
                ts: p.ts,
                key: dedup_key(e.kind(), e.user_id(), e.event_id()),
            })
            .collect();
        match prefix::applied(&entries, live[*user].1.evidence, horizon_ms) {
            Ok(applied) => {
                matched.push((*user, applied.events.len() < applied.archived));
                let mut events: Vec<Option<(Position, Event)>> = events.into_iter().map(Some).collect();
                let picked = applied.events.into_iter().filter_map(|i| events[i].take());
                items.extend(picked.map(|(p, e)| Item::Event(p, e)));
            }
            Err(why) => tally.not_comparable.count(why),
        }
    }
    let mut asof = AsOf::new(plan, symbols, Arc::new(catalogue), horizon_ms, spec.state.user_ttl.as_millis() as i64);
    asof.step(&mut items, &mut Vec::new());
    drop(items);
    for (user, short) in matched {
        let record = &live[user].1;
        match asof.latest(user).filter(|(e, _)| *e == record.evidence) {
            Some((evidence, json)) => tally.compare(user, record, evidence, &json, short),
            None => tally.not_comparable.replay_differs += 1,
        }
    }

    let live_names: Vec<String> =
        live.values().next().map(|(_, r)| r.attributes.iter().map(|(n, _)| n.clone()).collect()).unwrap_or_default();
    let mut report = tally.report(&live_names, args.examples);
    report.group_id.clone_from(&args.group);
    report.archive.clone_from(&args.archive);
    report.changelog_messages = messages;
    report.users_in_changelog = live.len() as u64;
    report.users_checked = users.len() as u64;
    report.archive_files = files;
    report.archive_events = archive_events;
    tracing::info!(
        group_id = %report.group_id,
        checked = report.users_checked,
        compared = report.users_compared,
        differing = report.users_differing,
        seconds = started.elapsed().as_secs_f64(),
        "consistency checked"
    );
    Ok(report)
}

/// Archived events by user, each with its place in the archive.
type ByUser = HashMap<String, Vec<(Position, Event)>>;

/// The archive's files of `topics` listed; their events of the `checked` users by user.
fn archived_events(
    runtime: &tokio::runtime::Runtime,
    url: &str,
    topics: &[String],
    checked: &HashSet<&str>,
) -> Result<(usize, ByUser), ConsistencyError> {
    let archive = Archive::open(url)?;
    let mut files = Vec::new();
    for (i, topic) in topics.iter().enumerate() {
        for (_, entries) in runtime.block_on(archive.list_topic(topic))? {
            files.extend(entries.into_iter().map(|e| (i as u8, e)));
        }
    }
    let n = files.len();
    if n == 0 {
        return Err(ConsistencyError::EmptyArchive { url: url.to_owned(), topics: topics.join(" and ") });
    }
    let mut archived = ByUser::new();
    read_archive(runtime, &archive, files, |p, e| {
        if checked.contains(e.user_id()) {
            match archived.get_mut(e.user_id()) {
                Some(v) => v.push((p, e)),
                None => {
                    archived.insert(e.user_id().to_owned(), vec![(p, e)]);
                }
            }
        }
    })?;
    Ok((n, archived))
}

/// The counts of the comparison as users are added.
#[derive(Default)]
struct Tally {
    not_comparable: NotComparable,
    /// Per attribute: users agreeing, differing.
    per_attribute: HashMap<String, (u64, u64)>,
    compared: u64,
    agreeing: u64,
    behind: u64,
    /// The recomputation's attribute names (of the first user compared).
    archive_names: Option<Vec<String>>,
    /// Differing users' differences, by user id.
    differing: BTreeMap<String, Vec<compare::Difference>>,
}

impl Tally {
    /// Compares `user`'s live `record` with the recomputed attributes (`json`, the view's object),
    /// which applied the same events (`evidence`); `short`: the archive goes further.
    fn compare(&mut self, user: &str, record: &Record, evidence: Evidence, json: &[u8], short: bool) {
        let attributes: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(json).expect("the view writes a JSON object");
        let offline =
            Record { evidence, attributes: attributes.into_iter().map(|(k, v)| (k, v.to_string())).collect() };
        self.archive_names.get_or_insert_with(|| offline.attributes.iter().map(|(n, _)| n.clone()).collect());
        self.compared += 1;
        self.behind += u64::from(short);
        let mut all = true;
        for (name, _, _, ok) in compare::shared(record, &offline, TOLERANCE) {
            let counts = match self.per_attribute.get_mut(name) {
                Some(c) => c,
                None => self.per_attribute.entry(name.to_owned()).or_default(),
            };
            if ok {
                counts.0 += 1
            } else {
                counts.1 += 1
            }
            all &= ok;
        }
        if all {
            self.agreeing += 1;
        } else {
            self.differing.insert(user.to_owned(), compare::differences(user, record, &offline, TOLERANCE));
        }
    }

    /// The report's counts, per attribute the live side answers (`live_names`), with up to
    /// `examples` differing values; the fields about the inputs are left for the caller.
    fn report(self, live_names: &[String], examples: usize) -> Report {
        let archive_names = self.archive_names.unwrap_or_default();
        let value = |s: &str| serde_json::from_str(s).unwrap_or(serde_json::Value::Null);
        let not_comparable = self.not_comparable.total();
        Report {
            group_id: String::new(),
            archive: String::new(),
            changelog_messages: 0,
            users_in_changelog: 0,
            users_checked: 0,
            users_compared: self.compared,
            users_behind_archive: self.behind,
            users_agreeing: self.agreeing,
            users_differing: self.compared - self.agreeing,
            attributes: live_names
                .iter()
                .filter(|n| archive_names.is_empty() || archive_names.contains(n))
                .map(|n| {
                    let (agree, differ) = self.per_attribute.get(n).copied().unwrap_or_default();
                    AttributeConsistency { name: n.clone(), agree, differ, not_comparable }
                })
                .collect(),
            only_live: live_names
                .iter()
                .filter(|n| !archive_names.is_empty() && !archive_names.contains(n))
                .cloned()
                .collect(),
            only_archive: archive_names.iter().filter(|n| !live_names.contains(n)).cloned().collect(),
            not_comparable: self.not_comparable,
            tolerance: TOLERANCE,
            archive_files: 0,
            archive_events: 0,
            examples: self
                .differing
                .into_values()
                .flat_map(|mut d| {
                    d.sort();
                    d
                })
                .take(examples)
                .map(|d| Example { user_id: d.user, attribute: d.attribute, live: value(&d.a), archive: value(&d.b) })
                .collect(),
        }
    }
}

/// Per user, the cut and record of their latest changelog message.
type Latest = HashMap<String, (Epoch, Record)>;

/// The latest record of each user in `group`'s changelog, read from the start to the ends the
/// topic had when reading began, and the messages read.
fn read_changelog(brokers: &str, group: &str) -> Result<(Latest, u64), ConsistencyError> {
    let (topic, consumer, partitions) = changelog_diff::changelog_consumer(brokers, group, "squall-consistency")?;
    let kafka =
        |e: rdkafka::error::KafkaError| ConsistencyError::Kafka { topic: topic.clone(), message: e.to_string() };
    let mut ends: HashMap<i32, i64> = HashMap::new();
    let mut assignment = rdkafka::TopicPartitionList::new();
    for p in partitions {
        let (low, high) = consumer.fetch_watermarks(&topic, p, Duration::from_secs(10)).map_err(kafka)?;
        if high > low {
            ends.insert(p, high);
            assignment.add_partition_offset(&topic, p, rdkafka::Offset::Beginning).map_err(kafka)?;
        }
    }
    consumer.assign(&assignment).map_err(kafka)?;
    let mut latest = Latest::new();
    let (mut messages, mut unreadable) = (0u64, 0u64);
    let mut last = Instant::now();
    let mut open = ends.len();
    while open > 0 {
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            if last.elapsed() > STALL {
                return Err(ConsistencyError::Kafka {
                    topic,
                    message: format!("no message for {} s before its end ({ends:?})", STALL.as_secs()),
                });
            }
            continue;
        };
        let m = m.map_err(kafka)?;
        last = Instant::now();
        let Some(end) = ends.get(&m.partition()).copied() else { continue };
        if m.offset() >= end {
            continue;
        }
        if m.offset() + 1 == end {
            open -= 1;
        }
        messages += 1;
        let Some((user, cut, record)) = m.payload().and_then(changelog_diff::parse) else {
            unreadable += 1;
            continue;
        };
        match latest.get_mut(&user) {
            Some(kept) if kept.0 >= cut => {}
            Some(kept) => *kept = (cut, record),
            None => {
                latest.insert(user, (cut, record));
            }
        }
    }
    if unreadable > 0 {
        tracing::warn!(topic = %topic, unreadable, "consistency: changelog messages it cannot read were left out");
    }
    Ok((latest, messages))
}

/// Reads every file, a few at a time on `runtime`, handing each decoded event to `each`.
fn read_archive(
    runtime: &tokio::runtime::Runtime,
    archive: &Archive,
    files: Vec<(u8, FileEntry)>,
    mut each: impl FnMut(Position, Event),
) -> Result<(), ConsistencyError> {
    type Reading = tokio::task::JoinHandle<Result<ArchivedFile, ReadError>>;
    let mut files = files.into_iter();
    let mut reading: std::collections::VecDeque<(u8, Reading)> = std::collections::VecDeque::new();
    loop {
        while reading.len() < AHEAD
            && let Some((topic, entry)) = files.next()
        {
            let archive = archive.clone();
            reading.push_back((topic, runtime.spawn(async move { archive.read(&entry).await })));
        }
        let Some((topic, read)) = reading.pop_front() else { return Ok(()) };
        let file =
            runtime.block_on(read).map_err(|e| ConsistencyError::Runtime(std::io::Error::other(e.to_string())))??;
        for batch in &file.batches {
            super::dataflow::events(batch, topic, i64::MAX, &mut each);
        }
    }
}

/// The report as a table.
pub fn table(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let nc = &r.not_comparable;
    let _ = writeln!(
        s,
        "{}: {} users checked of {} in the changelog ({} messages), {} archived events of theirs in {} files",
        r.group_id, r.users_checked, r.users_in_changelog, r.changelog_messages, r.archive_events, r.archive_files
    );
    let _ = writeln!(
        s,
        "compared {} ({} as of a point before the archive's end): agreeing {}, differing {}; not comparable {} \
         (archive behind {}, no matching prefix {}, too many partitions {}, replay differs {})",
        r.users_compared,
        r.users_behind_archive,
        r.users_agreeing,
        r.users_differing,
        nc.total(),
        nc.archive_behind,
        nc.no_matching_prefix,
        nc.too_many_combinations,
        nc.replay_differs
    );
    let width = r.attributes.iter().map(|a| a.name.len()).max().unwrap_or(0).max("attribute".len());
    let _ = writeln!(s, "\n{:<width$}  {:>9}  {:>9}  {:>14}", "attribute", "agreeing", "differing", "not comparable");
    for a in &r.attributes {
        let _ = writeln!(s, "{:<width$}  {:>9}  {:>9}  {:>14}", a.name, a.agree, a.differ, a.not_comparable);
    }
    if !r.only_live.is_empty() {
        let _ = writeln!(s, "only the version answers: {}", r.only_live.join(", "));
    }
    if !r.only_archive.is_empty() {
        let _ = writeln!(s, "only the topology file declares: {}", r.only_archive.join(", "));
    }
    if !r.examples.is_empty() {
        let _ = writeln!(s, "\ndiffering values (the smallest user ids first):");
        for e in &r.examples {
            let _ = writeln!(s, "  {}  {}: live {}, archive {}", e.user_id, e.attribute, e.live, e.archive);
        }
    }
    s
}
