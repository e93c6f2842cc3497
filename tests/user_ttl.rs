//! `state.user_ttl` against the real broker and CQL server: a user not seen for the TTL of event
//! time is forgotten, by the checkpoints too (a restart does not bring them back), and starts
//! fresh when they return; a user seen within the TTL keeps their state.

use std::time::Duration;

use serde_json::json;
use squall_enrichment::TrackRow;
use squall_tests::outage::metric;
use squall_tests::{Fixture, Record, Squall, produce, unique, wait_for};

const T0: i64 = 1_763_750_000_000;
const HOUR: i64 = 3_600_000;

fn song(f: &Fixture, event_id: &str, user: &str, track: &str, ts: i64) -> Record {
    let payload = json!({"event_id": event_id, "user_id": user, "track_id": track, "ms_played": 200_000, "ts": ts});
    (f.songs.clone(), user.into(), payload.to_string().into_bytes())
}

/// Waits until `user`'s attributes satisfy `check` (`None`: the user is unknown, 404).
async fn wait_user(squall: &Squall, user: &str, what: &str, check: impl Fn(Option<&serde_json::Value>) -> bool) {
    wait_for(&format!("{user}: {what}"), Duration::from_secs(60), || async {
        let (status, body) = squall.get(&format!("/v1/users/{user}/attributes")).await;
        let attributes = (status == 200).then_some(&body["attributes"]);
        if check(attributes) { Ok(()) } else { Err(format!("{status} {body}")) }
    })
    .await;
}

fn plays(n: u64) -> impl Fn(Option<&serde_json::Value>) -> bool {
    move |a| a.is_some_and(|a| a["plays"] == n)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_not_seen_for_the_ttl_is_forgotten_everywhere_and_starts_fresh() {
    let rock = TrackRow { genre: Some("rock".into()), artist_id: Some("ar".into()), duration_ms: Some(200_000) };
    let jazz = TrackRow { genre: Some("jazz".into()), ..rock.clone() };
    let f = Fixture::new(3, vec![("t1".into(), rock), ("t2".into(), jazz)], vec![]).await;
    let dir = std::env::temp_dir().join(unique("ttl-ckpt"));
    let state = format!(
        "epoch = \"100ms\"\ncompact_every = 5\ndedup_horizon = \"10m\"\nuser_ttl = \"1h\"\ncheckpoint_dir = \"{}\"",
        dir.display()
    );
    let topology = f.topology("ttl", 1, "personalization_v1", &[("state", &state)]);
    let squall = Squall::run(&topology, &["--workers", "2"]);
    produce([song(&f, "o1", "old", "t1", T0), song(&f, "o2", "old", "t1", T0 + 1)]).await;
    wait_user(&squall, "old", "two plays", plays(2)).await;

    // Two hours later in event time, for every worker: `old` has not been seen for longer than the
    // TTL; `kept` was seen half an hour before.
    let mut later: Vec<Record> =
        (0..200).map(|i| song(&f, &format!("n{i}"), &format!("u{i}"), "t1", T0 + 2 * HOUR)).collect();
    later.push(song(&f, "k1", "kept", "t1", T0 + 3 * HOUR / 2));
    later.push(song(&f, "k2", "kept", "t1", T0 + 2 * HOUR));
    produce(later).await;
    wait_user(&squall, "kept", "two plays", plays(2)).await;
    wait_user(&squall, "old", "forgotten", |a| a.is_none()).await;
    // Two more cuts complete: the part that lists `old` as expired is durable.
    let cut = || async {
        let text = reqwest::get(format!("{}/metrics", squall.url)).await.unwrap().text().await.unwrap();
        metric(&text, "squall_checkpoint_last_complete_cut", "")
    };
    let expired_at = cut().await;
    wait_for("two more complete cuts", Duration::from_secs(30), || async {
        let now = cut().await;
        if now >= expired_at + 2.0 { Ok(()) } else { Err(format!("cut {now}")) }
    })
    .await;
    squall.stop();

    // The checkpoint forgot them too.
    let squall = Squall::run(&topology, &["--workers", "2"]);
    assert!(squall.stdout().iter().any(|l| l.contains("recovered from checkpoint")));
    wait_user(&squall, "kept", "two plays after the restart", plays(2)).await;
    let (status, _) = squall.get("/v1/users/old/attributes").await;
    assert_eq!(status, 404, "an expired user is not recovered");

    // They return and start fresh.
    produce([song(&f, "o3", "old", "t2", T0 + 2 * HOUR + 5)]).await;
    wait_user(&squall, "old", "one fresh play", |a| {
        a.is_some_and(|a| a["plays"] == 1 && a["genre_plays"] == json!({"jazz": 1}))
    })
    .await;
    let (_, status) = squall.get("/v1/status").await;
    assert_eq!(status["users"], 202, "{status}");
    squall.stop();
    let _ = std::fs::remove_dir_all(dir);
}
