//! Kafka metadata and administration: the partitions a topology reads, and topic creation for dev tools.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use squall_operators::{EventKind, Partition};

/// Kafka metadata problems, with what to do about them.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    /// The brokers did not answer.
    #[error(
        "cannot read metadata from Kafka at {brokers}: {source} (is the broker running? `scripts/devenv.sh up` starts the dev broker)"
    )]
    Metadata {
        /// `bootstrap.servers`.
        brokers: String,
        /// librdkafka's error.
        source: rdkafka::error::KafkaError,
    },
    /// A topic does not exist or has no partitions.
    #[error("topic {topic:?} does not exist on {brokers} (create it, e.g. `squall-gen topics`)")]
    NoTopic {
        /// The topic.
        topic: String,
        /// `bootstrap.servers`.
        brokers: String,
    },
    /// Topic creation failed.
    #[error("cannot create topic {topic:?}: {message}")]
    Create {
        /// The topic.
        topic: String,
        /// Why.
        message: String,
    },
}

/// Every partition of `topics`, sorted by topic then partition, each with its topic's event kind.
pub fn partitions(
    brokers: &str,
    topics: &[(String, EventKind)],
) -> Result<Vec<(Partition, EventKind)>, KafkaSetupError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        // Metadata lookups must not create topics as a side effect.
        .set("allow.auto.create.topics", "false")
        .create()
        .map_err(|source| KafkaSetupError::Metadata { brokers: brokers.into(), source })?;
    let mut out = Vec::new();
    for (topic, kind) in topics {
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .map_err(|source| KafkaSetupError::Metadata { brokers: brokers.into(), source })?;
        let t = md.topics().iter().find(|t| t.name() == topic);
        let parts: Vec<i32> = match t {
            Some(t) if t.error().is_none() => t.partitions().iter().map(|p| p.id()).collect(),
            _ => Vec::new(),
        };
        if parts.is_empty() {
            return Err(KafkaSetupError::NoTopic { topic: topic.clone(), brokers: brokers.into() });
        }
        out.extend(parts.into_iter().map(|p| (Partition { topic: topic.clone(), partition: p }, *kind)));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Creates each topic with `partitions` partitions (replication 1); existing topics are left as they are.
pub async fn create_topics(brokers: &str, topics: &[String], partitions: i32) -> Result<(), KafkaSetupError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(|source| KafkaSetupError::Metadata { brokers: brokers.into(), source })?;
    let new: Vec<NewTopic> = topics.iter().map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1))).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&new, &opts)
        .await
        .map_err(|source| KafkaSetupError::Metadata { brokers: brokers.into(), source })?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(KafkaSetupError::Create { topic, message: code.to_string() }),
        }
    }
    Ok(())
}
