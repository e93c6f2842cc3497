//! Observability against the real broker and CQL server: the server's Prometheus metrics (fixed
//! label names, per-partition lag, the versions' own series) and its status page, rendered in
//! headless Chromium and checked on a screenshot.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use squall_enrichment::TrackRow;
use squall_tests::server::SquallServer;
use squall_tests::{Fixture, produce, unique, wait_for};

const TOKEN: &str = "observe-token-0123456789abcdef";

fn chromium() -> PathBuf {
    let path = PathBuf::from("/usr/bin/chromium");
    assert!(path.is_file(), "{} is missing: `scripts/devenv.sh install-browser` installs it", path.display());
    path
}

/// Starts a server with one promoted version that has consumed `events` song completions.
async fn running_version(events: usize) -> (Fixture, SquallServer, String) {
    let f = Fixture::new(
        2,
        vec![("t1".into(), TrackRow { genre: Some("rock".into()), artist_id: None, duration_ms: None })],
        vec![],
    )
    .await;
    let name = unique("obs").replace('_', "-");
    let file = f.topology(&name, 1, "personalization_v1", &[("state", "epoch = \"200ms\"")]);
    let dir = std::env::temp_dir().join(unique("squall-observe"));
    let server = SquallServer::start(&dir, TOKEN);
    server.cli_ok(&["deploy", file.to_str().unwrap()]);
    let group = format!("{name}-v1");
    let records: Vec<_> = (0..events)
        .map(|i| {
            let e = json!({"event_id": format!("e{i}"), "user_id": format!("u{}", i % 10), "track_id": "t1",
                           "ms_played": 40_000, "ts": 1_763_750_000_000i64 + i as i64});
            (f.songs.clone(), format!("u{}", i % 10), e.to_string().into_bytes())
        })
        .collect();
    produce(records).await;
    produce([(f.songs.clone(), "x".to_owned(), b"{not json".to_vec())]).await;
    wait_for(&format!("{group} to apply {events} events"), Duration::from_secs(60), || async {
        let (_, d) = server.get(&format!("/v1/deployments/{group}")).await;
        match d["status"]["applied"].as_u64() {
            Some(n) if n == events as u64 && d["lag"] == 0 && d["dead_letters"] == 1 => Ok(()),
            _ => Err(d.to_string()),
        }
    })
    .await;
    server.cli_ok(&["promote", &group]);
    (f, server, group)
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_carry_fixed_labels_lag_and_the_versions_series() {
    let (f, server, group) = running_version(500).await;
    let _ = server.get("/v1/users/u1/attributes").await;
    let text = reqwest::get(format!("{}/metrics", server.url)).await.expect("metrics").text().await.expect("text");
    let line = |prefix: &str, needles: &[&str]| {
        text.lines()
            .find(|l| l.starts_with(prefix) && needles.iter().all(|n| l.contains(n)))
            .unwrap_or_else(|| panic!("no {prefix} line with {needles:?} in:\n{text}"))
            .to_owned()
    };
    let lag = line(
        "squall_consumer_lag{",
        &[
            &format!("group_id=\"{group}\""),
            "topology=",
            "version=\"1\"",
            &format!("topic=\"{}\"", f.songs),
            "partition=\"0\"",
        ],
    );
    assert!(lag.ends_with(" 0"), "{lag}");
    let consumed = line(
        "squall_events_consumed_total{",
        &[&format!("group_id=\"{group}\""), "version=\"1\"", "topology=", &format!("topic=\"{}\"", f.songs)],
    );
    let consumed: f64 = consumed.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(consumed >= 500.0, "{consumed}");
    line("squall_events_dead_lettered_total{", &[&format!("group_id=\"{group}\""), "reason=\"malformed_json\""]);
    line("squall_events_applied_total{", &["worker=\""]);
    line("squall_http_request_seconds", &["route=\"/v1/users/{user_id}/attributes\""]);
    line("squall_enrichment_cache_misses_total{", &[&format!("group_id=\"{group}\"")]);
    line("squall_checkpoint_write_seconds_bucket{", &[&format!("group_id=\"{group}\""), "le=\""]);
    line("squall_enrichment_lookup_seconds_bucket{", &["version=\"1\"", "process=\"0\"", "le=\""]);
    // One TYPE line per family, as the exposition format requires.
    let mut types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).collect();
    let n = types.len();
    types.sort_unstable();
    types.dedup();
    assert_eq!(types.len(), n, "duplicate TYPE lines in:\n{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_renders_deployments_and_charts_in_chromium() {
    let (f, server, group) = running_version(300).await;
    // More events once the version is up and the monitor has read its counters once (the
    // baseline a rate needs: on a loaded machine the first reading came after the events were all
    // applied, and the history never showed them), so that the monitor sees them being applied.
    wait_for("the monitor's first reading of the version's counters", Duration::from_secs(30), || async {
        let (_, d) = server.get(&format!("/v1/deployments/{group}")).await;
        if d["status"].is_object() { Ok(()) } else { Err(d.to_string()) }
    })
    .await;
    let more: Vec<_> = (0..3000)
        .map(|i| {
            let e = json!({"event_id": format!("m{i}"), "user_id": format!("u{}", i % 10), "track_id": "t1",
                           "ms_played": 40_000, "ts": 1_763_760_000_000i64 + i as i64});
            (f.songs.clone(), format!("u{}", i % 10), e.to_string().into_bytes())
        })
        .collect();
    produce(more).await;
    // A few seconds of history, including the second the events were applied, so the charts have lines.
    wait_for("5 s of history with a throughput peak", Duration::from_secs(30), || async {
        let (_, d) = server.get(&format!("/v1/deployments/{group}")).await;
        let history = d["history"].as_array().cloned().unwrap_or_default();
        let peak = history.iter().filter_map(|s| s["events_per_sec"].as_f64()).fold(0.0, f64::max);
        if history.len() >= 5 && peak > 0.0 { Ok(()) } else { Err(format!("{} samples, peak {peak}", history.len())) }
    })
    .await;
    let dir = std::env::temp_dir().join(unique("chromium"));
    std::fs::create_dir_all(&dir).unwrap();
    let browser = |extra: &[&str]| {
        Command::new(chromium())
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,900"])
            .args(["--virtual-time-budget=10000", "--run-all-compositor-stages-before-draw"])
            .arg(format!("--user-data-dir={}", dir.join("profile").display()))
            .args(extra)
            .arg(format!("{}/", server.url))
            .output()
            .expect("run chromium")
    };
    let dom = browser(&["--dump-dom"]);
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(dom.contains("data-ready=\"true\""), "the page never loaded the deployments:\n{dom}");
    assert!(dom.contains(&format!("<tr data-group=\"{group}\">")), "no row for {group}:\n{dom}");
    assert!(dom.contains("state-promoted"), "{dom}");
    assert_eq!(dom.matches("<canvas").count(), 2, "one lag and one throughput chart:\n{dom}");

    let shot = dir.join("status.png");
    let out = browser(&[&format!("--screenshot={}", shot.display())]);
    assert!(shot.is_file(), "no screenshot: {}", String::from_utf8_lossy(&out.stderr));
    // Chromium can return before the file is complete on a loaded machine: read it once it
    // decodes whole.
    let (info, pixels) = wait_for("a complete PNG screenshot", Duration::from_secs(10), || async {
        let file = std::fs::File::open(&shot).map_err(|e| e.to_string())?;
        let mut reader = png::Decoder::new(std::io::BufReader::new(file)).read_info().map_err(|e| e.to_string())?;
        let mut pixels = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut pixels).map_err(|e| e.to_string())?;
        Ok((info, pixels))
    })
    .await;
    assert_eq!((info.width, info.height), (1280, 900));
    let channels = info.line_size / info.width as usize;
    let matches = |p: &[u8], rgb: [u8; 3]| p[..3].iter().zip(rgb).all(|(a, b)| a.abs_diff(b) <= 24);
    let count = |rgb: [u8; 3]| pixels.chunks(channels).filter(|p| matches(p, rgb)).count();
    // Rows the throughput line passes through: a flat line covers 2 or 3, the peak many more.
    let rows = |rgb: [u8; 3]| {
        pixels.chunks(info.line_size).filter(|row| row.chunks(channels).any(|p| matches(p, rgb))).count()
    };
    // The lag line (#2f6fde) and the events/s line (#d9480f) are drawn, the promoted state (#0a7b34) is shown.
    let (lag, rate, promoted) = (count([0x2f, 0x6f, 0xde]), count([0xd9, 0x48, 0x0f]), count([0x0a, 0x7b, 0x34]));
    println!(
        "status page screenshot {}: lag-line pixels {lag}, throughput-line pixels {rate}, promoted-state pixels {promoted}",
        shot.display()
    );
    assert!(lag > 300, "the lag chart has no line ({lag} pixels)");
    assert!(rate > 300, "the throughput chart has no line ({rate} pixels)");
    let rate_rows = rows([0xd9, 0x48, 0x0f]);
    assert!(rate_rows > 20, "the throughput chart shows no peak (its line spans {rate_rows} rows)");
    assert!(promoted > 20, "the promoted state is not shown ({promoted} pixels)");
}
