//! The changelog feed: every changed user of each complete cut, as one message on the compacted
//! topic `<group id>.attributes` (created when missing): key = user id, value = the JSON the HTTP
//! API answers plus `cut`, `events` and `events_hash` (the user's [`squall_operators::Evidence`],
//! hex), header `cut`. Delivery is at least once: after a failed batch or a crash a user may come
//! again with the same or a later cut, never an earlier one after a later one from the same run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use serde::Serialize;
use squall_operators::Epoch;
use squall_operators::UserSnapshot;
use squall_operators::attributes::AttributesView;
use tokio::runtime::Handle;

use crate::progress::Progress;
use crate::{FeedError, Sink, Version};

/// The changelog topic of `group_id`.
pub fn topic(group_id: &str) -> String {
    format!("{group_id}.attributes")
}

/// One changelog message's value.
#[derive(Serialize)]
pub struct Message<'a> {
    /// The user.
    pub user_id: &'a str,
    /// Topology name.
    pub topology: &'a str,
    /// Version number.
    pub version: u32,
    /// Consumer group id.
    pub group_id: &'a str,
    /// The attributes, as the HTTP API answers them.
    pub attributes: AttributesView<'a>,
    /// The cut the state belongs to.
    pub cut: Epoch,
    /// Events applied to the user.
    pub events: u32,
    /// Sum of their dedup keys' low 64 bits, hex.
    pub events_hash: String,
}

/// Counts the failed deliveries of a feed's producer (the changelog's, the replica's).
pub(crate) struct Deliveries {
    /// The feed.
    pub(crate) feed: &'static str,
    /// Messages not delivered.
    pub(crate) failed: Arc<AtomicU64>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(feed = self.feed, error = %e, "feed delivery failed");
        }
    }
}

/// Creates `topic` compacted, unless it exists.
pub async fn create_topic(brokers: &str, topic: &str, partitions: i32, replication: i32) -> Result<(), FeedError> {
    // Compacted: a reader that starts from the beginning gets every user's latest value.
    create_topic_with(brokers, topic, partitions, replication, &[("cleanup.policy", "compact")]).await.map(|_| ())
}

/// Creates `topic` with `config` unless it exists (a feed's topic: the changelog's, the
/// replica's); the admin client, for what the caller does next.
pub(crate) async fn create_topic_with(
    brokers: &str,
    topic: &str,
    partitions: i32,
    replication: i32,
    config: &[(&str, &str)],
) -> Result<AdminClient<DefaultClientContext>, FeedError> {
    let err = |message: String| FeedError::Kafka { topic: topic.to_owned(), message };
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create().map_err(|e| err(e.to_string()))?;
    let mut new = NewTopic::new(topic, partitions.max(1), TopicReplication::Fixed(replication.max(1)));
    for (key, value) in config {
        new = new.set(key, value);
    }
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.create_topics([&new], &options).await.map_err(|e| err(e.to_string()))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(err(format!("cannot create it: {code}"))),
        }
    }
    Ok(admin)
}

/// Publishes changed users to the version's changelog topic.
pub struct ChangelogSink {
    version: Version,
    topic: String,
    producer: ThreadedProducer<Deliveries>,
    failed: Arc<AtomicU64>,
    progress: Progress,
    runtime: Handle,
}

impl ChangelogSink {
    /// Creates the topic when missing and the producer; the last cut the feed wrote, if any.
    pub async fn open(
        version: Version,
        brokers: &str,
        partitions: i32,
        replication: i32,
        session: Arc<scylla::client::session::Session>,
        keyspace: &str,
        runtime: Handle,
    ) -> Result<(ChangelogSink, Option<Epoch>), FeedError> {
        let topic = topic(&version.group_id);
        create_topic(brokers, &topic, partitions, replication).await?;
        let failed = Arc::new(AtomicU64::new(0));
        let producer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            // No duplicates or reordering from the producer's own retries.
            .set("enable.idempotence", "true")
            // A batch of users per cut: let librdkafka batch them.
            .set("linger.ms", "5")
            .create_with_context(Deliveries { feed: "changelog", failed: Arc::clone(&failed) })
            .map_err(|e| FeedError::Kafka { topic: topic.clone(), message: e.to_string() })?;
        let (progress, written) =
            Progress::open(session, keyspace, &version.group_id, "changelog", version.share).await?;
        Ok((ChangelogSink { version, topic, producer, failed, progress, runtime }, written))
    }
}

impl Sink for ChangelogSink {
    fn name(&self) -> &'static str {
        "changelog"
    }

    fn write(&mut self, cut: Epoch, users: &[(String, UserSnapshot)]) -> Result<(), FeedError> {
        let err = |message: String| FeedError::Kafka { topic: self.topic.clone(), message };
        let before = self.failed.load(Ordering::Relaxed);
        let cut_header = cut.to_string();
        let v = &self.version;
        for (user, snapshot) in users {
            let state = v.restore(user, snapshot)?;
            let evidence = state.evidence();
            let message = Message {
                user_id: user,
                topology: &v.topology,
                version: v.version,
                group_id: &v.group_id,
                attributes: AttributesView::new(&state, &v.plan, &v.symbols),
                cut,
                events: evidence.events,
                events_hash: format!("{:016x}", evidence.hash),
            };
            let payload = serde_json::to_vec(&message).map_err(|e| err(e.to_string()))?;
            let headers = OwnedHeaders::new().insert(Header { key: "cut", value: Some(&cut_header) });
            let mut record = BaseRecord::to(&self.topic).key(user.as_str()).payload(&payload).headers(headers);
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err((e, _)) => return Err(err(e.to_string())),
                }
            }
        }
        self.producer.flush(Duration::from_secs(30)).map_err(|e| err(format!("flush: {e}")))?;
        let failed = self.failed.load(Ordering::Relaxed) - before;
        if failed > 0 {
            return Err(err(format!("{failed} of {} messages were not delivered", users.len())));
        }
        Ok(())
    }

    fn save_progress(&mut self, cut: Epoch) -> Result<(), FeedError> {
        self.runtime.block_on(self.progress.save(cut))
    }
}
