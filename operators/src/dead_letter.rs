//! `dead.dead_letter_to(..)`: writes records that failed to decode to `<topic><suffix>`, with their reason.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, ThreadedProducer};
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;

use crate::epoch::Epoch;
use crate::source::DeadLetter;

/// Sends dead letters to Kafka.
pub trait DeadLetterTo {
    /// Produces each dead letter to `<source topic><suffix>` with the original key and payload,
    /// and headers `reason`, `detail`, `source_topic`, `source_partition`, `source_offset`.
    fn dead_letter_to(self, brokers: &str, suffix: &str) -> Result<(), KafkaError>;
}

impl<'scope> DeadLetterTo for Stream<'scope, Epoch, Vec<DeadLetter>> {
    fn dead_letter_to(self, brokers: &str, suffix: &str) -> Result<(), KafkaError> {
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            // Dead letters are rare; send them promptly rather than batching.
            .set("linger.ms", "5")
            // Keep dead letters queued through a broker outage of any length instead of dropping
            // them after the default 5 minutes (librdkafka retries delivery until it succeeds).
            .set("message.timeout.ms", "0")
            .create()?;
        let suffix = suffix.to_owned();
        self.sink(Pipeline, "DeadLetterTo", move |(input, _frontier)| {
            input.for_each(|_time, data| {
                for dl in data.drain(..) {
                    let topic = format!("{}{}", dl.topic, suffix);
                    let (partition, offset) = (dl.partition.to_string(), dl.offset.to_string());
                    let headers = OwnedHeaders::new()
                        .insert(Header { key: "reason", value: Some(dl.reason.as_str()) })
                        .insert(Header { key: "detail", value: Some(dl.detail.as_str()) })
                        .insert(Header { key: "source_topic", value: Some(dl.topic.as_str()) })
                        .insert(Header { key: "source_partition", value: Some(partition.as_str()) })
                        .insert(Header { key: "source_offset", value: Some(offset.as_str()) });
                    let mut record = BaseRecord::<Vec<u8>, Vec<u8>>::to(&topic).payload(&dl.payload).headers(headers);
                    if let Some(key) = &dl.key {
                        record = record.key(key);
                    }
                    let mut record = record;
                    // A full local queue is the only error worth waiting out; others are logged.
                    loop {
                        match producer.send(record) {
                            Ok(()) => break,
                            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                                record = r;
                                producer.poll(Duration::from_millis(10));
                            }
                            Err((e, _)) => {
                                tracing::error!(topic = %topic, error = %e, "cannot produce dead letter");
                                break;
                            }
                        }
                    }
                }
            });
        });
        Ok(())
    }
}
