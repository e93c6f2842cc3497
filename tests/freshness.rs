//! Reads that say how fresh they are, and the freshness objective, through `squall server` against
//! the real broker and CQL server: every answer's `as_of`, `?min_cut=` and `?max_staleness_ms=`
//! (503 with `Retry-After` until met, 400 when malformed), and `[slo] freshness` in `/metrics`,
//! `/v1/deployments/{group}` and `squall status`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use squall_tests::deployment::{Deployment, Stream, state_dir};
use squall_tests::outage::metric;
use squall_tests::server::SquallServer;
use squall_tests::{produce, stream_config, wait_for};

const TOKEN: &str = "test-token-0123456789abcdef";
/// The epoch of the test topology, milliseconds.
const EPOCH_MS: u64 = 200;

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_millis() as i64
}

/// GET `path` on `url`: status, `Retry-After` and the JSON body.
async fn get(url: &str, path: &str) -> (u16, Option<String>, serde_json::Value) {
    let resp = reqwest::get(format!("{url}{path}")).await.expect("HTTP request");
    let status = resp.status().as_u16();
    let retry = resp.headers().get("retry-after").map(|v| v.to_str().expect("ASCII").to_owned());
    (status, retry, resp.json().await.unwrap_or(serde_json::Value::Null))
}

/// One deployed, promoted version with `[slo] freshness = "5s"` and live events (event times of now).
struct Live {
    d: Deployment,
    stream: Stream,
    server: SquallServer,
    group: String,
}

impl Live {
    async fn start(seed: u64) -> Live {
        let d = Deployment::new("fresh", seed, 4, |f, name| {
            f.topology(
                name,
                1,
                "personalization_v1",
                &[
                    ("state", &format!("epoch = \"{EPOCH_MS}ms\"")),
                    ("runtime", "workers = 2"),
                    ("slo", "freshness = \"5s\""),
                ],
            )
        })
        .await;
        let stream = Stream::new(stream_config(50, d.catalogue), seed, now_ms());
        let server = SquallServer::start(&state_dir("squall-fresh"), TOKEN);
        let group = d.group(1);
        server.cli_ok(&["deploy", d.file()]);
        server.wait_serving(&group).await;
        server.cli_ok(&["promote", &group]);
        Live { d, stream, server, group }
    }

    /// Produces `n` events whose event times (one a millisecond) end now.
    async fn produce_now(&mut self, n: usize) -> Vec<squall_operators::Event> {
        self.stream.at = now_ms() - n as i64;
        let (records, events) = self.stream.batch(&self.d.f, n);
        produce(records).await;
        events
    }

    /// The status of the version, as the server sums it over its processes.
    async fn status(&self) -> serde_json::Value {
        let (_, body) = self.server.get(&format!("/v1/deployments/{}", self.group)).await;
        body["status"].clone()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_carry_as_of_and_honour_min_cut_and_max_staleness() {
    let mut live = Live::start(31).await;
    let events = live.produce_now(500).await;
    let user = events[0].user_id().to_owned();
    let url = live.server.url.clone();
    let path = format!("/v1/users/{user}/attributes");
    let first = wait_for(&format!("{user} to be answered"), Duration::from_secs(60), || async {
        match get(&url, &path).await {
            (200, _, body) => Ok(body),
            (status, _, body) => Err(format!("{status} {body}")),
        }
    })
    .await;
    assert_eq!(first["as_of"]["standby"], false, "{first}");
    assert!(first["as_of"]["cut"].as_u64().is_some_and(|c| c > 0), "{first}");

    // While events flow, one user's answers never go back to an earlier cut.
    let producer = {
        let mut more = Stream::new(stream_config(50, live.d.catalogue), 32, 0);
        let f = squall_tests::Fixture {
            songs: live.d.f.songs.clone(),
            ads: live.d.f.ads.clone(),
            keyspace: live.d.f.keyspace.clone(),
        };
        tokio::spawn(async move {
            for _ in 0..10 {
                more.at = now_ms() - 100;
                let (records, _) = more.batch(&f, 100);
                produce(records).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let mut last = 0;
    let mut cuts = Vec::new();
    for _ in 0..100 {
        let (status, _, body) = get(&url, &path).await;
        assert_eq!(status, 200, "{body}");
        let cut = body["as_of"]["cut"].as_u64().expect("as_of.cut");
        assert!(cut >= last, "the cut went back from {last} to {cut}: {body}");
        assert_eq!(body["as_of"]["standby"], false);
        cuts.push(cut);
        last = cut;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    producer.await.expect("producer");
    assert!(cuts.first() < cuts.last(), "the cut moved on while events flowed: {cuts:?}");
    // The process's watermark is an event time of this run's events.
    let (_, _, body) = get(&url, &path).await;
    let watermark = body["as_of"]["watermark_ms"].as_i64().expect("a watermark once events are read");
    assert!(watermark >= events[0].ts() - 60_000 && watermark <= now_ms() + 60_000, "{body}");

    // A cut ten epochs ahead of the one just answered: 503 with Retry-After (whole seconds)
    // through the server, then 200. (Not ahead of the loop's last cut: awaiting the producer
    // took about as long as ten epochs.)
    let (_, _, body) = get(&url, &path).await;
    let ahead = body["as_of"]["cut"].as_u64().expect("as_of.cut") + 10;
    let (status, retry, body) = get(&url, &format!("{path}?min_cut={ahead}")).await;
    assert_eq!(status, 503, "{body}");
    let retry: u64 = retry.expect("Retry-After").parse().expect("whole seconds");
    assert!((1..=3).contains(&retry), "ten 200 ms epochs ahead: {retry} s");
    assert_eq!(body["error"]["message"], format!("min_cut = {ahead} is not reached"), "{body}");
    let detail = body["error"]["detail"].as_str().expect("detail");
    assert!(detail.starts_with("this process has applied cut ") && detail.ends_with("(200 ms epochs)"), "{detail}");
    let met = wait_for(&format!("cut {ahead}"), Duration::from_secs(30), || async {
        match get(&url, &format!("{path}?min_cut={ahead}")).await {
            (200, _, body) => Ok(body),
            (status, retry, body) => Err(format!("{status} (Retry-After {retry:?}) {body}")),
        }
    })
    .await;
    assert!(met["as_of"]["cut"].as_u64().is_some_and(|c| c >= ahead), "{met}");

    // Staleness: now minus the end of the cut's last epoch.
    let (status, _, body) = get(&url, &format!("{path}?max_staleness_ms=60000&min_cut=0")).await;
    assert_eq!(status, 200, "{body}");
    let mut unmet = None;
    for _ in 0..5 {
        // A read within a millisecond of its cut's publication would meet it: try again.
        if let (503, retry, body) = get(&url, &format!("{path}?max_staleness_ms=1")).await {
            unmet = Some((retry, body));
            break;
        }
    }
    let (retry, body) = unmet.expect("a 503 for max_staleness_ms=1");
    assert_eq!(retry.as_deref(), Some("1"), "the next cut is at most one 200 ms epoch away: {body}");
    assert_eq!(body["error"]["message"], "max_staleness_ms = 1 is not met");
    assert!(body["error"]["detail"].as_str().is_some_and(|d| d.contains(" ms ago")), "{body}");

    // Malformed bounds: 400 saying which and why, through the server and from the version itself.
    let version_url = live.server.wait_serving(&live.group).await["urls"][0].as_str().expect("a url").to_owned();
    let far = (now_ms() as u64 + 7_200_000) / EPOCH_MS;
    for (query, detail) in [
        ("min_cut=-1".to_owned(), "min_cut = -1 is negative".to_owned()),
        ("min_cut=soon".to_owned(), "min_cut = \"soon\" is not a whole number".to_owned()),
        ("max_staleness_ms=-5".to_owned(), "max_staleness_ms = -5 is negative".to_owned()),
        ("max_staleness_ms=0".to_owned(), "max_staleness_ms = 0 is out of range: use 1..=86400000".to_owned()),
        (
            "max_staleness_ms=86400001".to_owned(),
            "max_staleness_ms = 86400001 is out of range: use 1..=86400000".to_owned(),
        ),
        (format!("min_cut={far}"), format!("min_cut = {far} is out of range: at most ")),
    ] {
        for base in [&url, &version_url] {
            let (status, retry, body) = get(base, &format!("{path}?{query}")).await;
            assert_eq!((status, retry), (400, None), "{base} ?{query}: {body}");
            assert_eq!(body["error"]["message"], "invalid read bound", "{body}");
            let got = body["error"]["detail"].as_str().expect("detail");
            assert!(got.starts_with(&detail), "{base} ?{query}: {got:?}, not {detail:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_freshness_objective_is_measured_for_every_event_applied() {
    let mut live = Live::start(33).await;
    for _ in 0..3 {
        live.produce_now(400).await;
    }
    // Every event read is applied, and a later cut has made all of them visible.
    let status = wait_for("the events applied to be measured", Duration::from_secs(60), || async {
        let s = live.status().await;
        let applied = s["applied"].as_u64().unwrap_or(0);
        let measured = s["freshness"]["events_last_hour"].as_u64().unwrap_or(0);
        let read = s["applied"].as_u64().unwrap_or(0)
            + s["duplicates"].as_u64().unwrap_or(0)
            + s["dead_letters"].as_u64().unwrap_or(0);
        if read == 1200 && measured == applied {
            Ok(s)
        } else {
            Err(format!("{read} read, {applied} applied, {measured} measured: {s}"))
        }
    })
    .await;
    let f = &status["freshness"];
    assert_eq!(f["objective_ms"], 5000, "{f}");
    let (events, within) = (f["events_last_hour"].as_u64().unwrap(), f["within_last_hour"].as_u64().unwrap());
    assert!(within <= events && events > 1000, "{f}");

    // The histogram counts the same events, per process and summed by the server.
    let version_url = live.server.wait_serving(&live.group).await["urls"][0].as_str().expect("a url").to_owned();
    let group = format!("group_id=\"{}\"", live.group);
    let text = reqwest::get(format!("{version_url}/metrics")).await.unwrap().text().await.unwrap();
    assert!(text.contains("# TYPE squall_freshness_delay_seconds histogram"), "{text}");
    assert_eq!(metric(&text, "squall_freshness_delay_seconds_count", &group), events as f64, "{text}");
    let inf = format!("{group},le=\"+Inf\"");
    assert_eq!(metric(&text, "squall_freshness_delay_seconds_bucket", &inf), events as f64);
    let le5 = format!("{group},le=\"5\"");
    assert_eq!(metric(&text, "squall_freshness_delay_seconds_bucket", &le5), within as f64, "within 5 s: {text}");
    assert!(text.contains("squall_freshness_breached{"), "{text}");
    // Measured from event times of just now: more than nothing, far less than a minute each.
    let mean = metric(&text, "squall_freshness_delay_seconds_sum", &group) / events as f64;
    assert!(mean > 0.0 && mean < 60.0, "mean delay {mean} s");
    let merged = reqwest::get(format!("{}/metrics", live.server.url)).await.unwrap().text().await.unwrap();
    assert_eq!(metric(&merged, "squall_freshness_delay_seconds_count", &group), events as f64, "{merged}");

    // `squall status` and the status page show the share of the last hour within the objective.
    let out = live.server.cli_ok(&["status", &live.group]);
    let line =
        out.lines().find(|l| l.starts_with("freshness:")).unwrap_or_else(|| panic!("no freshness line in\n{out}"));
    assert!(line.contains("events in the last hour within 5000 ms") && line.contains('%'), "{line}");
    let page = reqwest::get(&live.server.url).await.unwrap().text().await.unwrap();
    assert!(page.contains("freshness (last hour)"), "the status page has the column");
}
