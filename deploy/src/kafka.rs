//! Kafka metadata and administration: the partitions a topology reads, and topic creation for dev tools.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use squall_operators::{EventKind, Partition};
use squall_topologies::TopologySpec;

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

/// The input topics of a topology, each with its event kind, and the brokers they are on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inputs {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// The topics and the kind of event each carries.
    pub topics: Vec<(String, EventKind)>,
}

impl Inputs {
    /// The inputs of `spec`.
    pub fn of(spec: &TopologySpec) -> Inputs {
        Inputs {
            brokers: spec.kafka.brokers.clone(),
            topics: vec![
                (spec.kafka.song_completions.clone(), EventKind::Song),
                (spec.kafka.ad_impressions.clone(), EventKind::Ad),
            ],
        }
    }

    /// Every partition of the topics (see [`partitions`]).
    pub fn partitions(&self) -> Result<Vec<(Partition, EventKind)>, KafkaSetupError> {
        partitions(&self.brokers, &self.topics)
    }
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
    partitions_with(&consumer, brokers, topics)
}

/// As [`partitions`], through an existing client (one made with `allow.auto.create.topics=false`,
/// such as a [`group_reader`]).
pub fn partitions_with(
    consumer: &BaseConsumer,
    brokers: &str,
    topics: &[(String, EventKind)],
) -> Result<Vec<(Partition, EventKind)>, KafkaSetupError> {
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

/// One partition's progress under a group: what the group committed, and the high watermark.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct PartitionLag {
    /// Topic.
    pub topic: String,
    /// Partition number.
    pub partition: i32,
    /// Next offset the group will read, as committed; `None` when it never committed.
    pub committed: Option<i64>,
    /// Offset of the next message produced to the partition.
    pub high_watermark: i64,
    /// Messages not yet covered by a commit (`high_watermark - committed`, or all retained ones).
    pub lag: i64,
}

/// A consumer that only reads metadata and committed offsets of `group_id`; it never joins the group.
pub fn group_reader(brokers: &str, group_id: &str) -> Result<BaseConsumer, KafkaSetupError> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("allow.auto.create.topics", "false")
        .create()
        .map_err(|source| KafkaSetupError::Metadata { brokers: brokers.into(), source })
}

/// The offsets `reader`'s group committed for `partitions` (partitions without a commit are left out).
pub fn committed(
    reader: &BaseConsumer,
    brokers: &str,
    partitions: &[Partition],
) -> Result<std::collections::BTreeMap<Partition, i64>, KafkaSetupError> {
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition(&p.topic, p.partition);
    }
    let got = reader
        .committed_offsets(tpl, Duration::from_secs(10))
        .map_err(|source| KafkaSetupError::Metadata { brokers: brokers.into(), source })?;
    Ok(got
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            rdkafka::Offset::Offset(o) if o >= 0 => {
                Some((Partition { topic: e.topic().to_owned(), partition: e.partition() }, o))
            }
            _ => None,
        })
        .collect())
}

/// Per partition of `partitions`: committed offset of `reader`'s group, high watermark, lag.
pub fn lag(
    reader: &BaseConsumer,
    brokers: &str,
    partitions: &[Partition],
) -> Result<Vec<PartitionLag>, KafkaSetupError> {
    let committed = committed(reader, brokers, partitions)?;
    Ok(partitions
        .iter()
        .zip(watermarks(reader, brokers, partitions)?)
        .map(|(p, (low, high))| {
            let c = committed.get(p).copied();
            PartitionLag {
                topic: p.topic.clone(),
                partition: p.partition,
                committed: c,
                high_watermark: high,
                lag: (high - c.unwrap_or(low)).max(0),
            }
        })
        .collect())
}

/// Per partition of `partitions`, in order: the earliest offset the brokers hold and the next
/// one to be written (the low and high watermarks).
fn watermarks(
    reader: &BaseConsumer,
    brokers: &str,
    partitions: &[Partition],
) -> Result<Vec<(i64, i64)>, KafkaSetupError> {
    partitions
        .iter()
        .map(|p| {
            reader
                .fetch_watermarks(&p.topic, p.partition, Duration::from_secs(10))
                .map_err(|source| KafkaSetupError::Metadata { brokers: brokers.into(), source })
        })
        .collect()
}

/// The high watermarks (next offsets to be written) of `partitions` of `topic`, in one request per
/// leader: a ListOffsets for the latest offset, which is what `fetch_watermarks` asks one
/// partition at a time.
pub fn high_watermarks(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: &[i32],
    timeout: Duration,
) -> Result<std::collections::HashMap<i32, i64>, String> {
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition_offset(topic, *p, rdkafka::Offset::End).map_err(|e| e.to_string())?;
    }
    let answered = consumer.offsets_for_times(tpl, timeout).map_err(|e| e.to_string())?;
    answered
        .elements()
        .iter()
        .map(|e| {
            e.error().map_err(|err| format!("partition {}: {err}", e.partition()))?;
            match e.offset() {
                rdkafka::Offset::Offset(high) => Ok((e.partition(), high)),
                other => Err(format!("partition {}: no latest offset ({other:?})", e.partition())),
            }
        })
        .collect()
}

/// Per partition of `partitions`: the earliest offset the brokers still hold (the low watermark).
pub fn earliest(
    reader: &BaseConsumer,
    brokers: &str,
    partitions: &[Partition],
) -> Result<std::collections::BTreeMap<Partition, i64>, KafkaSetupError> {
    let marks = watermarks(reader, brokers, partitions)?;
    Ok(partitions.iter().cloned().zip(marks.into_iter().map(|(low, _)| low)).collect())
}
