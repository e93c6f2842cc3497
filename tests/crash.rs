//! Crash test: `kill -9` the squall process at random moments while events flow, restart it from
//! its checkpoints each time, and compare every user's attributes with the oracle at the end.
//! Deduplication is off and the stream has no resends, so a replayed event would be counted twice
//! and show up as a mismatch.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use squall::generate::{CatalogueGen, EventGen, EventGenConfig, Generated};
use squall_operators::{Event, EventKind};
use squall_tests::{Fixture, Squall, brokers, produce, unique, wait_for_committed_at_end};
use squall_topologies::oracle;

const T0: i64 = 1_763_750_000_000;

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_at_random_moments_loses_nothing_and_counts_nothing_twice() {
    let seed: u64 = std::env::var("SQUALL_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    println!("crash test seed {seed} (rerun with SQUALL_CRASH_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);

    let catalogue = CatalogueGen { tracks: 200, ads: 20, seed: 5 };
    let f = Fixture::new(
        4,
        (0..catalogue.tracks).map(|i| catalogue.track(i)).collect(),
        (0..catalogue.ads).map(|i| catalogue.ad(i)).collect(),
    )
    .await;
    let checkpoints = std::env::temp_dir().join(unique("checkpoints"));
    let topology = f.topology(
        "crash",
        1,
        "personalization_v1",
        &[(
            "state",
            &format!(
                "epoch = \"100ms\"\ncompact_every = 5\ndedup_horizon = \"0s\"\ncheckpoint_dir = \"{}\"",
                checkpoints.display()
            ),
        )],
    );

    let config = EventGenConfig {
        users: 300,
        catalogue,
        run_id: unique("run"),
        duplicate_share: 0.0,
        unknown_share: 0.02,
        malformed_share: 0.01,
        ..Default::default()
    };
    let mut generator = EventGen::new(config, seed);
    let mut events: Vec<Event> = Vec::new();
    let mut batches: Vec<Vec<(String, String, Vec<u8>)>> = vec![Vec::new(); 8];
    for i in 0..24_000 {
        let record = match generator.next_at(T0 + i) {
            Generated::Event(e) => {
                let topic = if e.kind() == EventKind::Song { f.songs.clone() } else { f.ads.clone() };
                let r = (topic, e.user_id().to_owned(), e.to_json());
                events.push(e);
                r
            }
            Generated::Malformed(_, bytes) => (f.songs.clone(), "x".into(), bytes),
        };
        batches[i as usize * 8 / 24_000].push(record);
    }

    let mut kills = 0;
    let mut recoveries = 0;
    let last = batches.pop().expect("8 batches");
    for batch in batches {
        let squall = Squall::run(&topology, &["--workers", "2"]);
        recoveries += squall.stdout().iter().filter(|l| l.contains("recovered from checkpoint")).count();
        let producing = tokio::spawn(produce(batch));
        // The moment of the kill is random by design; nothing is awaited here.
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..1500))).await;
        squall.kill9();
        kills += 1;
        producing.await.expect("producer");
    }
    let squall = Squall::run(&topology, &["--workers", "2"]);
    recoveries += squall.stdout().iter().filter(|l| l.contains("recovered from checkpoint")).count();
    produce(last).await;

    let expected = oracle::expected(&squall_tests::declaration(1), events.iter(), &catalogue.oracle());
    // Wait (up to 120 s in all) until every user equals the oracle; then count who does not.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut mismatches: BTreeMap<String, String>;
    loop {
        mismatches = squall.oracle_mismatches(&expected).await;
        if mismatches.is_empty() || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "crash test: kills={kills} recoveries={recoveries} events={} users={} mismatches={}",
        events.len(),
        expected.len(),
        mismatches.len()
    );
    assert!(
        mismatches.is_empty(),
        "users differing from the oracle: {:?}",
        mismatches.iter().take(5).collect::<Vec<_>>()
    );
    assert!(recoveries >= 1, "at least one restart resumed from a checkpoint");

    // The offsets of complete checkpoints are committed under the version's group id.
    wait_for_committed_at_end(&brokers(), "crash-v1", &[&f.songs, &f.ads], 4, Duration::from_secs(30)).await;
    let _ = std::fs::remove_dir_all(&checkpoints);
}
