//! How long a diff of two versions takes, and differential dataflow against a plain hash map for
//! the same comparison. `cargo run --release -p squall-benches --bin diff -- --brokers 127.0.0.1:9092 --users 1000000`
//!
//! Phases: (1) `compute`: the comparison alone, on records in memory: first all users of both
//! sides, then 1% of them changing in one side (a retraction and an insertion each), through
//! differential dataflow (`squall_benches::diff_dataflow`, the measured alternative) and through
//! the plain comparer squall's diff runs (`squall_operators::compare::Comparer`); (2) `broker`:
//! `squall::changelog_diff::DiffSession` reading two changelog topics of `--users` messages each from the broker until it has compared them all.

use std::time::{Duration, Instant};

use clap::Parser;
use differential_dataflow::input::{Input, InputSession};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use squall_benches::diff_dataflow::CompareWith;
use squall_operators::Evidence;
use squall_operators::compare::{Comparer, Record, Side};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    #[arg(long, default_value_t = 1_000_000)]
    users: usize,
    /// `compute`, `broker` or both.
    #[arg(long, value_delimiter = ',', default_value = "compute,broker")]
    phases: Vec<String>,
    /// The share of its time the broker phase's diff session works while catching up (1: flat out).
    #[arg(long, default_value_t = 1.0)]
    duty: f64,
}

/// A version 1-like record of user `i` (side `b` differs on `skips` for every 100th user when `differ`).
fn record(i: usize, differ: bool) -> Record {
    let skips = if differ && i.is_multiple_of(100) { i % 7 + 1 } else { i % 7 };
    let attributes = vec![
        ("plays".into(), (i % 50).to_string()),
        ("skips".into(), skips.to_string()),
        ("genre_plays".into(), format!("{{\"pop\":{},\"rock\":{}}}", i % 30, i % 20)),
        ("top_genres".into(), "[\"pop\",\"rock\"]".into()),
        ("ad_impressions".into(), (i % 5).to_string()),
        ("ad_categories".into(), format!("{{\"cars\":{}}}", i % 5)),
        ("last_seen_ts".into(), (1_763_750_000_000u64 + i as u64).to_string()),
    ];
    Record {
        evidence: Evidence { events: (i % 55) as u32, hash: (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) },
        attributes,
    }
}

fn compute(users: usize) {
    let ids: Vec<String> = (0..users).map(|i| format!("u{i}")).collect();
    let changed = users / 100;
    // Differential dataflow, one worker, as in the server's diff session.
    let ids2 = ids.clone();
    let (load_s, update_s, compared) = timely::execute_directly(move |worker| {
        let compared = std::rc::Rc::new(std::cell::Cell::new(0isize));
        let c2 = compared.clone();
        let (mut a, mut b, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (a_in, ac) = scope.new_collection::<(String, Record), isize>();
            let (b_in, bc) = scope.new_collection::<(String, Record), isize>();
            let c = ac.compare_with(bc, 1e-9, 20);
            let (probe, _) = c.users.inspect(move |((_, n), _, d)| c2.set(c2.get() + n * d)).probe();
            (a_in, b_in, probe)
        });
        let mut step = |a: &mut InputSession<u64, (String, Record), isize>,
                        b: &mut InputSession<u64, (String, Record), isize>| {
            let t = *a.time() + 1;
            a.advance_to(t);
            b.advance_to(t);
            a.flush();
            b.flush();
            while probe.less_than(&t) {
                worker.step();
            }
        };
        let started = Instant::now();
        for (i, id) in ids2.iter().enumerate() {
            a.insert((id.clone(), record(i, false)));
            b.insert((id.clone(), record(i, true)));
        }
        step(&mut a, &mut b);
        let load = started.elapsed().as_secs_f64();
        let started = Instant::now();
        for (i, id) in ids2.iter().enumerate().take(changed) {
            b.remove((id.clone(), record(i, true)));
            b.insert((id.clone(), record(i, false)));
        }
        step(&mut a, &mut b);
        (load, started.elapsed().as_secs_f64(), compared.get())
    });
    println!(
        "diff_compute engine=differential users={users} load_s={load_s:.2} update_users={changed} update_s={update_s:.3} compared={compared}"
    );
    // The plain comparer squall's diff runs (hash maps, a user's old contribution out, new in).
    let mut h = Comparer::new(1e-9);
    let started = Instant::now();
    for (i, id) in ids.iter().enumerate() {
        h.set(Side::A, id.clone(), record(i, false));
        h.set(Side::B, id.clone(), record(i, true));
    }
    let load_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    for (i, id) in ids.iter().enumerate().take(changed) {
        h.set(Side::B, id.clone(), record(i, false));
    }
    let (compared, agreeing) = h.compared();
    println!(
        "diff_compute engine=hashmap users={users} load_s={load_s:.2} update_users={changed} update_s={:.3} compared={compared} agreeing={agreeing}",
        started.elapsed().as_secs_f64(),
    );
}

fn produce(rt: &tokio::runtime::Runtime, brokers: &str, topic: &str, users: usize, differ: bool) {
    rt.block_on(squall::kafka::create_topics(brokers, &[topic.to_owned()], 6)).expect("create topic");
    let p: ThreadedProducer<_> =
        ClientConfig::new().set("bootstrap.servers", brokers).set("linger.ms", "20").create().expect("producer");
    for i in 0..users {
        let r = record(i, differ);
        let attributes: serde_json::Map<String, serde_json::Value> =
            r.attributes.iter().map(|(n, v)| (n.clone(), serde_json::from_str(v).expect("json"))).collect();
        let body = serde_json::json!({
            "user_id": format!("u{i}"), "attributes": attributes, "cut": 1,
            "events": r.evidence.events, "events_hash": format!("{:016x}", r.evidence.hash),
        })
        .to_string();
        let key = format!("u{i}");
        let mut rec = BaseRecord::to(topic).key(&key).payload(&body);
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, back)) => {
                    rec = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    p.flush(Duration::from_secs(120)).expect("flush");
}

fn broker(brokers: &str, users: usize, duty: f64) {
    let run = format!("diffbench-{}", std::process::id());
    let (a, b) = (format!("{run}-a"), format!("{run}-b"));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let started = Instant::now();
    produce(&rt, brokers, &squall_feeds::changelog::topic(&a), users, false);
    produce(&rt, brokers, &squall_feeds::changelog::topic(&b), users, true);
    println!("diff_produce users={users} seconds={:.1}", started.elapsed().as_secs_f64());
    let started = Instant::now();
    let session = squall::changelog_diff::DiffSession::start(brokers, &a, &b, duty).expect("diff session");
    let report = rt.block_on(async {
        loop {
            let r = session.report();
            if r.caught_up && r.users_compared as usize == users {
                return r;
            }
            assert!(started.elapsed() < Duration::from_secs(900), "no end in sight: {r:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    println!(
        "diff_broker users={users} seconds={:.1} compared={} agreeing={} agreement_percent={:.2} messages={} rss_mb={}",
        started.elapsed().as_secs_f64(),
        report.users_compared,
        report.users_agreeing,
        report.agreement_percent.unwrap_or(0.0),
        report.messages,
        rss_mb()
    );
}

fn rss_mb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(|l| l.to_owned()))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()))
        .map_or(0, |kb| kb / 1024)
}

fn main() {
    let a = Args::parse();
    if a.phases.iter().any(|p| p == "compute") {
        compute(a.users);
    }
    if a.phases.iter().any(|p| p == "broker") {
        broker(&a.brokers, a.users, a.duty);
    }
}
