//! `squall-gen`: creates the dev topics and catalogue, produces a skewed event stream, and checks
//! the served attributes against a from-scratch recomputation.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use squall::generate::{CatalogueGen, EventGen, EventGenConfig, Generated};
use squall::version::http::UserAttributes;
use squall::{kafka, telemetry};
use squall_enrichment::schema;
use squall_feeds::now_ms;
use squall_operators::{Attributes, Event, EventKind};
use squall_topologies::{TopologySpec, oracle};

/// Dev tools for squall: topics, catalogue, events, and checking the answers.
#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the input topics and their dead-letter topics (existing ones are kept).
    Topics {
        #[arg(long, default_value = "127.0.0.1:9092")]
        brokers: String,
        #[arg(long, default_value_t = 6)]
        partitions: i32,
        #[arg(long, default_value = "song-completions")]
        song_topic: String,
        #[arg(long, default_value = "ad-impressions")]
        ad_topic: String,
        #[arg(long, default_value = ".dlq")]
        dlq_suffix: String,
    },
    /// Create the keyspace and tables and load a generated catalogue.
    Catalogue {
        #[arg(long, default_value = "127.0.0.1:9042")]
        cql: String,
        #[arg(long, default_value = "squall")]
        keyspace: String,
        #[command(flatten)]
        catalogue: CatalogueArgs,
    },
    /// Produce generated events at a rate; optionally write the expected attributes of the most active users.
    Events {
        #[arg(long, default_value = "127.0.0.1:9092")]
        brokers: String,
        #[arg(long, default_value = "song-completions")]
        song_topic: String,
        #[arg(long, default_value = "ad-impressions")]
        ad_topic: String,
        /// Events per second (0: as fast as possible).
        #[arg(long, default_value_t = 20_000)]
        rate: u64,
        /// Records to produce.
        #[arg(long, default_value_t = 200_000)]
        count: u64,
        /// Distinct users.
        #[arg(long, default_value_t = 100_000)]
        users: u64,
        #[arg(long, default_value_t = 0.01)]
        duplicates: f64,
        #[arg(long, default_value_t = 0.001)]
        malformed: f64,
        #[arg(long, default_value_t = 0.005)]
        unknown: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[command(flatten)]
        catalogue: CatalogueArgs,
        /// Write the expected attributes of users u1..=u<N>, under every version of --topology, to this JSON file.
        #[arg(long)]
        expect_file: Option<PathBuf>,
        /// The topology file whose versions --expect-file covers.
        #[arg(long, default_value = "topologies/personalization.toml")]
        topology: PathBuf,
        #[arg(long, default_value_t = 5)]
        expect_users: u64,
    },
    /// Compare the attributes served at --url with an expectations file, waiting up to --timeout.
    Check {
        /// Base URL of a squall process, e.g. http://127.0.0.1:8080.
        #[arg(long)]
        url: String,
        #[arg(long)]
        expect_file: PathBuf,
        #[arg(long, default_value = "60")]
        timeout_secs: u64,
    },
}

#[derive(clap::Args, Clone, Copy)]
struct CatalogueArgs {
    #[arg(long, default_value_t = 100_000)]
    tracks: u64,
    #[arg(long, default_value_t = 2_000)]
    ads: u64,
    #[arg(long, default_value_t = 7)]
    catalogue_seed: u64,
}

impl CatalogueArgs {
    fn generator(self) -> CatalogueGen {
        CatalogueGen { tracks: self.tracks, ads: self.ads, seed: self.catalogue_seed }
    }
}

fn main() -> ExitCode {
    telemetry::init_logging(false);
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    match rt.block_on(run(Cli::parse().command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Topics { brokers, partitions, song_topic, ad_topic, dlq_suffix } => {
            let topics = vec![song_topic.clone(), ad_topic.clone(), song_topic + &dlq_suffix, ad_topic + &dlq_suffix];
            kafka::create_topics(&brokers, &topics, partitions).await?;
            println!("topics ready on {brokers}: {}", topics.join(", "));
        }
        Command::Catalogue { cql, keyspace, catalogue } => {
            let started = Instant::now();
            let session = schema::connect(&cql).await?;
            schema::create(&session, &keyspace, 1).await?;
            let g = catalogue.generator();
            let tracks = schema::insert_tracks(&session, &keyspace, (0..g.tracks).map(|i| g.track(i)), 256).await?;
            let ads = schema::insert_ads(&session, &keyspace, (0..g.ads).map(|i| g.ad(i)), 256).await?;
            println!(
                "catalogue loaded into {keyspace} at {cql}: {tracks} tracks, {ads} ads in {:.1?}",
                started.elapsed()
            );
        }
        Command::Events {
            brokers,
            song_topic,
            ad_topic,
            rate,
            count,
            users,
            duplicates,
            malformed,
            unknown,
            seed,
            catalogue,
            expect_file,
            expect_users,
            topology,
        } => {
            let run_id = format!("r{}s{seed}", now_ms());
            let config = EventGenConfig {
                users,
                catalogue: catalogue.generator(),
                run_id,
                duplicate_share: duplicates,
                malformed_share: malformed,
                unknown_share: unknown,
                ..Default::default()
            };
            let watched: HashSet<String> = (1..=expect_users).map(|i| format!("u{i}")).collect();
            let produced = tokio::task::spawn_blocking(move || {
                produce(&brokers, &song_topic, &ad_topic, config, seed, rate, count, &watched)
            })
            .await??;
            if let Some(path) = expect_file {
                let oracle_catalogue = catalogue.generator().oracle();
                let spec = TopologySpec::load(&topology)?;
                let expectations: Expectations = spec
                    .versions
                    .iter()
                    .map(|(v, s)| (*v, oracle::expected(&s.attributes, produced.iter(), &oracle_catalogue)))
                    .collect();
                std::fs::write(&path, serde_json::to_vec_pretty(&expectations)?)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                let users = expectations.values().next().map_or(0, BTreeMap::len);
                println!("expected attributes of {users} users written to {}", path.display());
            }
        }
        Command::Check { url, expect_file, timeout_secs } => {
            check(&url, &expect_file, Duration::from_secs(timeout_secs)).await?
        }
    }
    Ok(())
}

/// Per version, every watched user's expected attributes.
type Expectations = BTreeMap<u32, BTreeMap<String, Attributes>>;

/// Produces `count` records at `rate`/s; returns the valid events of the `watched` users.
#[allow(clippy::too_many_arguments)]
fn produce(
    brokers: &str,
    song_topic: &str,
    ad_topic: &str,
    config: EventGenConfig,
    seed: u64,
    rate: u64,
    count: u64,
    watched: &HashSet<String>,
) -> anyhow::Result<Vec<Event>> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        // Batch for throughput; the demo's rates need no lower latency than this.
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .context("cannot create a Kafka producer")?;
    let mut generator = EventGen::new(config, seed);
    let mut kept = Vec::new();
    let started = Instant::now();
    let mut last_report = Instant::now();
    for n in 0..count {
        if rate > 0 {
            let due = Duration::from_secs_f64(n as f64 / rate as f64);
            let elapsed = started.elapsed();
            if due > elapsed {
                std::thread::sleep(due - elapsed);
            }
        }
        let (topic, key, payload) = match generator.next_at(now_ms()) {
            Generated::Event(e) => {
                let topic = if e.kind() == EventKind::Song { song_topic } else { ad_topic };
                let key = e.user_id().to_owned();
                let payload = e.to_json();
                if watched.contains(&key) {
                    kept.push(e);
                }
                (topic, key, payload)
            }
            Generated::Malformed(kind, bytes) => {
                (if kind == EventKind::Song { song_topic } else { ad_topic }, "bad".into(), bytes)
            }
        };
        let mut record = BaseRecord::to(topic).key(&key).payload(&payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => anyhow::bail!("produce to {topic}: {e}"),
            }
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            println!("produced {n} records ({:.0}/s)", n as f64 / started.elapsed().as_secs_f64());
            last_report = Instant::now();
        }
    }
    producer.flush(Duration::from_secs(60)).context("flush")?;
    let secs = started.elapsed().as_secs_f64();
    println!("produced {count} records in {secs:.1}s ({:.0}/s)", count as f64 / secs);
    Ok(kept)
}

async fn check(url: &str, path: &PathBuf, timeout: Duration) -> anyhow::Result<()> {
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let expected: Expectations = serde_json::from_slice(&text)?;
    let deadline = Instant::now() + timeout;
    let client = HttpClient::new(url)?;
    let users: Vec<String> = expected.values().next().map(|m| m.keys().cloned().collect()).unwrap_or_default();
    for user in &users {
        loop {
            let got = client.attributes(user).await?;
            let want = got.as_ref().and_then(|g| expected.get(&g.version)).and_then(|m| m.get(user));
            let diff = match (&got, want) {
                (Some(g), Some(w)) => oracle::difference(&g.attributes, w),
                (Some(g), None) => Some(format!("no expectation for version {}", g.version)),
                _ => Some("not found yet".to_owned()),
            };
            match diff {
                None => {
                    let g = got.expect("matched");
                    let show = |n: &str| g.attributes.get(n).map_or("-".to_owned(), ToString::to_string);
                    println!(
                        "{user}: matches ({} plays, {} ads, top genres {})",
                        show("plays"),
                        show("ad_impressions"),
                        show("top_genres")
                    );
                    break;
                }
                Some(d) if Instant::now() > deadline => {
                    anyhow::bail!("{user} differs from the expected attributes: {d}")
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    println!("all {} users match the expected attributes", users.len());
    Ok(())
}

/// Reads attributes from a squall process's HTTP API.
struct HttpClient {
    base: String,
    client: reqwest::Client,
}

impl HttpClient {
    fn new(url: &str) -> anyhow::Result<Self> {
        anyhow::ensure!(
            url.starts_with("http://") || url.starts_with("https://"),
            "--url must start with http:// or https://"
        );
        Ok(HttpClient { base: url.trim_end_matches('/').to_owned(), client: reqwest::Client::new() })
    }

    async fn attributes(&self, user: &str) -> anyhow::Result<Option<UserAttributes>> {
        let url = format!("{}/v1/users/{user}/attributes", self.base);
        let resp = self.client.get(&url).send().await.with_context(|| format!("GET {url}"))?;
        match resp.status().as_u16() {
            404 => Ok(None),
            200 => Ok(Some(resp.json().await.with_context(|| format!("GET {url}: body"))?)),
            other => anyhow::bail!("GET {url}: unexpected status {other}: {}", resp.text().await.unwrap_or_default()),
        }
    }
}
