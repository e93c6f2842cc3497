//! The archiver as a deployment of `squall server` (`squall archive start|stop`), against the dev
//! broker and a local directory: started through the server, restarted after a `kill -9`, adopted
//! by a server started after the first one was killed, shown with its progress, stopped and
//! forgotten; every produced record archived exactly once; bad requests answered with 4xx.

use std::collections::BTreeMap;
use std::time::Duration;

use squall_archive::{Archive, ArchivedRecord};
use squall_tests::server::SquallServer;
use squall_tests::{binary, brokers, unique, wait_for, wait_for_committed_at_end};

const PARTITIONS: i32 = 3;
/// Records per partition per phase (one before the kill, one after).
const PER_PHASE: usize = 400;
const TOKEN: &str = "archive-deployment-token";

fn payload(topic: &str, p: i32, i: usize) -> (String, String) {
    let user = format!("u{}", (i * 7 + p as usize) % 50);
    let ts = 1_763_750_000_000 + i as i64 * 10;
    let value = if topic.contains("song") {
        format!(
            r#"{{"event_id":"s{p}-{i}","user_id":"{user}","track_id":"t{}","ms_played":{},"ts":{ts}}}"#,
            i % 13,
            (i * 997) % 400_000
        )
    } else {
        format!(r#"{{"event_id":"a{p}-{i}","user_id":"{user}","ad_id":"a{}","ts":{ts}}}"#, i % 5)
    };
    (user, value)
}

fn produce_phase(topics: &[String; 2], phase: usize) {
    for topic in topics {
        let partitions: Vec<i32> = (0..PARTITIONS).collect();
        squall_tests::produce_to_partitions(topic, &partitions, phase * PER_PHASE, PER_PHASE, |p, i| {
            payload(topic, p, i)
        });
    }
}

fn start_server(state: &std::path::Path) -> SquallServer {
    SquallServer::start_with(
        &binary("squall"),
        state,
        TOKEN,
        "127.0.0.1:0",
        &["--stop-versions-on-exit", "--adopt-timeout", "60s", "--brokers", &brokers()],
    )
}

/// The pid the archiver's runtime file records (the server's state directory).
fn archiver_pid(state: &std::path::Path, group: &str) -> Option<u32> {
    let path = state.join("deployments").join(group).join("process-0.json");
    let file: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    file["pid"].as_u64().map(|p| p as u32)
}

/// Waits until `GET /v1/archives/{group}` satisfies `ok`; the view.
async fn wait_view(
    server: &SquallServer,
    group: &str,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    wait_for(what, Duration::from_secs(90), || async {
        let (status, body) = server.get(&format!("/v1/archives/{group}")).await;
        if status == 200 && ok(&body) { Ok(body) } else { Err(format!("{status} {body}")) }
    })
    .await
}

async fn send(server: &SquallServer, method: reqwest::Method, path: &str, body: Option<&str>) -> (u16, String) {
    let mut req = reqwest::Client::new().request(method, format!("{}{path}", server.url)).bearer_auth(TOKEN);
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b.to_owned());
    }
    let resp = req.send().await.expect("HTTP request");
    (resp.status().as_u16(), resp.text().await.unwrap_or_default())
}

#[tokio::test]
async fn the_server_runs_restarts_adopts_and_stops_an_archiver() {
    let topics = [unique("archdep_song"), unique("archdep_ad")];
    squall::kafka::create_topics(&brokers(), &topics, PARTITIONS).await.expect("create topics");
    let state = std::env::temp_dir().join(unique("squall_archdep_state"));
    let dir = std::env::temp_dir().join(unique("squall_archdep_archive"));
    let url = dir.to_str().unwrap().to_owned();
    let group = unique("archdep_group");
    let topic_list = format!("{}=song,{}=ad", topics[0], topics[1]);
    std::fs::create_dir_all(&dir).expect("the archive's directory");
    let server = start_server(&state);

    // Bad requests: precise 4xx, nothing started.
    let post = reqwest::Method::POST;
    for (body, status, says) in [
        (r#"{"url":"ftp://nowhere/x"}"#.to_owned(), 400, "url"),
        (format!(r#"{{"url":"{url}","topics":["mystery"]}}"#), 400, "mystery=song"),
        (format!(r#"{{"url":"{url}","topics":[]}}"#), 400, "topics is empty"),
        (format!(r#"{{"url":"{url}","rows_per_file":0}}"#), 400, "rows_per_file"),
        (format!(r#"{{"url":"{url}","max_file_age":"soon"}}"#), 400, "max_file_age"),
        (r#"{"url":""}"#.to_owned(), 400, "url is empty"),
        (r#"{"url":"relative/archive"}"#.to_owned(), 400, "absolute path"),
        (format!(r#"{{"url":"{url}/missing"}}"#), 400, "no such directory"),
        (r#"{"url":"/"}"#.to_owned(), 400, "root"),
        (r#"{"topics":1}"#.to_owned(), 422, "invalid archive request"),
    ] {
        let (got, text) = send(&server, post.clone(), "/v1/archives", Some(&body)).await;
        assert_eq!(got, status, "{body}: {text}");
        assert!(text.contains(says), "{body}: {text}");
    }
    let (got, _) = server.post("/v1/archives", None).await;
    assert_eq!(got, 401, "no token");
    let (got, text) = send(&server, reqwest::Method::DELETE, "/v1/archives/nobody", None).await;
    assert_eq!(got, 404, "{text}");
    assert!(text.contains("no archiver with group id"), "{text}");
    assert_eq!(server.get("/v1/archives/nobody").await.0, 404);
    assert_eq!(server.get("/v1/archives").await.1, serde_json::json!([]));

    // Started through the server; a second start of the same group is refused.
    produce_phase(&topics, 0);
    let start = ["archive", "start", "--url", &url, "--group", &group, "--topics", &topic_list];
    let started = server.cli_ok(&[&start[..], &["--rows-per-file", "97", "--max-file-age", "200ms"]].concat());
    assert!(started.contains(&format!("under group {group}")), "{started}");
    let again = server.cli(&start);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("runs already"), "{again:?}");

    let archive = Archive::open(&url).expect("open the archive");
    wait_view(&server, &group, "the archiver running with a file written", |v| {
        v["state"] == "running" && v["files"].as_u64().is_some_and(|f| f > 0)
    })
    .await;

    // kill -9 the archiver: the server restarts it, and it resumes where the archive ends.
    let pid = archiver_pid(&state, &group).expect("the archiver's runtime file");
    std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().expect("kill -9");
    produce_phase(&topics, 1);
    let last = (2 * PER_PHASE - 1) as i64;
    let view = wait_view(&server, &group, "restarted and caught up", |v| {
        v["state"] == "running"
            && v["restarts"].as_u64() == Some(1)
            && v["lag"].as_i64() == Some(0)
            && v["partitions"].as_array().is_some_and(|p| {
                p.len() == 2 * PARTITIONS as usize && p.iter().all(|p| p["committed"].as_i64() == Some(last + 1))
            })
    })
    .await;
    assert!(view["last_error"].as_str().is_some_and(|e| e.contains("signal: 9")), "{view}");
    for p in view["partitions"].as_array().unwrap() {
        assert_eq!((p["committed"].as_i64(), p["high_watermark"].as_i64()), (Some(last + 1), Some(last + 1)), "{p}");
    }
    let new_pid = archiver_pid(&state, &group).expect("the restarted archiver's runtime file");
    assert_ne!(new_pid, pid);

    // Shown by `squall list` and `squall status`.
    let list = server.cli_ok(&["list"]);
    assert!(list.contains(&group) && list.contains("running"), "{list}");
    let status = server.cli_ok(&["status", &group]);
    assert!(status.contains(&format!("archiver:  {group} (running)")) && status.contains(&topics[0]), "{status}");

    // A server killed and started again adopts the archiver: same process, no restart.
    server.kill9();
    let server = start_server(&state);
    let view = wait_view(&server, &group, "the archiver adopted", |v| v["state"] == "running").await;
    assert_eq!((view["adopted"].as_bool(), view["restarts"].as_u64()), (Some(true), Some(0)), "{view}");
    assert_eq!(archiver_pid(&state, &group), Some(new_pid));

    // Stopped: it stores and commits what it holds, exits cleanly, and is forgotten.
    let stopped = server.cli_ok(&["archive", "stop", &group]);
    assert!(stopped.contains(&format!("stopped archiver {group}")), "{stopped}");
    assert_eq!(server.get(&format!("/v1/archives/{group}")).await.0, 404);
    assert_eq!(archiver_pid(&state, &group), None, "a clean exit removes its runtime file");
    wait_for_committed_at_end(&brokers(), &group, &[&topics[0], &topics[1]], PARTITIONS, Duration::from_secs(30)).await;

    // Every record archived exactly once, with its value.
    for topic in &topics {
        let files = archive.list_topic(topic).await.expect("a consistent manifest");
        assert_eq!(files.keys().copied().collect::<Vec<_>>(), (0..PARTITIONS).collect::<Vec<_>>());
        let offsets: BTreeMap<i32, i64> = archive.last_offsets(topic).await.unwrap();
        assert!(offsets.values().all(|o| *o == last), "{offsets:?}");
        for (p, files) in files {
            let mut records: Vec<ArchivedRecord> = Vec::new();
            for f in &files {
                records.extend(archive.read(f).await.expect("a readable file").records());
            }
            let got: Vec<i64> = records.iter().map(|r| r.offset).collect();
            assert_eq!(got, (0..=last).collect::<Vec<_>>(), "{topic}/{p}: every offset exactly once");
            for r in &records {
                assert_eq!(r.value, payload(topic, p, r.offset as usize).1.as_bytes(), "{topic}/{p}@{}", r.offset);
            }
        }
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&state);
}
