//! The seam between the control plane and Kafka: a [`LagSource`] tells what a group committed
//! and how far the topics have got. The server uses [`KafkaLag`]; tests use fakes.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::BaseConsumer;
use squall_operators::Partition;

use crate::kafka::{self, Inputs, KafkaSetupError, PartitionLag};
use crate::values::GroupId;

/// Committed offsets and high watermarks. Both calls block (call them off the async workers).
pub trait LagSource: Send + Sync + 'static {
    /// Per partition of `inputs`: the offset `group` committed, the high watermark, the lag.
    fn lag(&self, group: &GroupId, inputs: &Inputs) -> Result<Vec<PartitionLag>, KafkaSetupError>;

    /// The offsets `group` committed on the partitions of `inputs` (those it never committed are
    /// left out).
    fn committed(&self, group: &GroupId, inputs: &Inputs) -> Result<BTreeMap<Partition, i64>, KafkaSetupError>;
}

/// How often the partitions of a group's inputs are looked up again (topics can grow).
const PARTITIONS_EVERY: Duration = Duration::from_secs(60);

/// Reads lag from the brokers, through one client per group that is kept between calls, with
/// the partitions it looked up last.
#[derive(Default)]
pub struct KafkaLag {
    readers: Mutex<HashMap<GroupId, Reader>>,
}

struct Reader {
    client: Arc<BaseConsumer>,
    partitions: Option<(Instant, Vec<Partition>)>,
}

impl LagSource for KafkaLag {
    fn lag(&self, group: &GroupId, inputs: &Inputs) -> Result<Vec<PartitionLag>, KafkaSetupError> {
        let (client, known) = {
            let mut readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
            let reader = match readers.get_mut(group) {
                Some(r) => r,
                None => {
                    let client = Arc::new(kafka::group_reader(&inputs.brokers, group.as_str())?);
                    readers.entry(group.clone()).or_insert(Reader { client, partitions: None })
                }
            };
            let known = reader.partitions.clone().filter(|(at, _)| at.elapsed() < PARTITIONS_EVERY);
            (Arc::clone(&reader.client), known)
        };
        let partitions = match known {
            Some((_, p)) => p,
            None => {
                let found: Vec<Partition> = kafka::partitions_with(&client, &inputs.brokers, &inputs.topics)?
                    .into_iter()
                    .map(|(p, _)| p)
                    .collect();
                let mut readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(r) = readers.get_mut(group) {
                    r.partitions = Some((Instant::now(), found.clone()));
                }
                found
            }
        };
        kafka::lag(&client, &inputs.brokers, &partitions)
    }

    fn committed(&self, group: &GroupId, inputs: &Inputs) -> Result<BTreeMap<Partition, i64>, KafkaSetupError> {
        let partitions: Vec<Partition> = inputs.partitions()?.into_iter().map(|(p, _)| p).collect();
        let reader = kafka::group_reader(&inputs.brokers, group.as_str())?;
        kafka::committed(&reader, &inputs.brokers, &partitions)
    }
}
