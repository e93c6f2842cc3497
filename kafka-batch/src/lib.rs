//! Batch consumption from librdkafka: a consumer's assigned partitions, read many messages per call.
//!
//! rust-rdkafka 0.39 returns one message per `BaseConsumer::poll`, and each costs a librdkafka
//! event, an `Arc`, and four clock reads (librdkafka's poll bookkeeping and rust-rdkafka's
//! timeout loop); it has no batch API. [`BatchConsumer`] forwards the assigned partitions' fetch
//! queues to one queue of its own and reads it with `rd_kafka_consume_batch_queue`: one lock, poll
//! bookkeeping and clock read per batch instead of per message. Everything else (errors that are
//! not about a partition, logs, statistics, commits) stays on the consumer's own queue, served by
//! its ordinary `poll`.
//!
//! This crate is squall's only `unsafe` code, all of it in one module (`ffi.rs`) whose header
//! states the invariants: the client outlives the queue and every message; each message is
//! destroyed exactly once, when its [`Batch`] is dropped; payloads, keys and topic names borrowed
//! from a message cannot outlive the batch; the wake-up closure outlives its registration.
//!
//! ```no_run
//! use rdkafka::{ClientConfig, Offset, TopicPartitionList};
//! use squall_kafka_batch::BatchConsumer;
//!
//! let consumer = ClientConfig::new()
//!     .set("bootstrap.servers", "127.0.0.1:9092")
//!     .set("group.id", "example")
//!     .create()?;
//! let mut tpl = TopicPartitionList::new();
//! tpl.add_partition_offset("song-completions", 0, Offset::Beginning)?;
//! let mut batches = BatchConsumer::assign(consumer, &tpl, 512)?;
//! loop {
//!     {
//!         // A batch borrows the consumer: read it, then let it go.
//!         let batch = batches.poll_batch(4096);
//!         for m in batch.iter() {
//!             println!("{}/{}@{}: {:?}", m.topic(), m.partition(), m.offset(), m.payload());
//!         }
//!     }
//!     // Errors that are not about a partition still come from the consumer's own queue.
//!     if let Some(Err(e)) = batches.consumer().poll(std::time::Duration::ZERO) {
//!         eprintln!("{e}");
//!     }
//! #   break;
//! }
//! # Ok::<(), rdkafka::error::KafkaError>(())
//! ```
#![warn(missing_docs)]

#[allow(unsafe_code)]
mod ffi;

pub use ffi::{Batch, BatchConsumer, Message, TopicId};

#[cfg(test)]
mod tests {
    //! Against librdkafka's built-in mock cluster (in process, no broker needed). The same paths
    //! against the real dev broker: `tests/kafka_batch.rs`.

    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use rdkafka::consumer::BaseConsumer;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};

    use super::*;

    /// A mock cluster with topics `a` and `b` of 3 partitions; message `i` of partition `p` of
    /// topic `t` has key `t/p/i` and payload `payload t p i`.
    fn cluster(per_partition: usize) -> MockCluster<'static, DefaultProducerContext> {
        let mock = MockCluster::new(1).expect("mock cluster");
        for t in ["a", "b"] {
            mock.create_topic(t, 3, 1).expect("topic");
        }
        let producer: ThreadedProducer<DefaultProducerContext> =
            ClientConfig::new().set("bootstrap.servers", mock.bootstrap_servers()).create().expect("producer");
        for t in ["a", "b"] {
            for p in 0..3 {
                for i in 0..per_partition {
                    let (key, payload) = (format!("{t}/{p}/{i}"), format!("payload {t} {p} {i}"));
                    producer.send(BaseRecord::to(t).partition(p).key(&key).payload(&payload)).expect("send");
                }
            }
        }
        producer.flush(Duration::from_secs(10)).expect("flush");
        mock
    }

    fn consumer(mock: &MockCluster<'static, DefaultProducerContext>) -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", mock.bootstrap_servers())
            .set("group.id", "kafka-batch-test")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .create()
            .expect("consumer")
    }

    /// Per (topic, partition), the offsets and payloads read until `want` messages or 20 s.
    type Read = BTreeMap<(String, i32), Vec<(i64, String)>>;

    /// What was read, the batch sizes, and each topic's `topic_id`s.
    fn read_all(
        batches: &mut BatchConsumer,
        want: usize,
        max: usize,
    ) -> (Read, Vec<usize>, BTreeMap<String, Vec<TopicId>>) {
        let (mut read, mut sizes, mut n) = (Read::new(), Vec::new(), 0);
        let mut ids: BTreeMap<String, Vec<TopicId>> = BTreeMap::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while n < want && Instant::now() < deadline {
            // The consumer's own queue must carry no messages: they all go to the batch queue.
            if let Some(Ok(m)) = batches.consumer().poll(Duration::ZERO) {
                panic!("a message on the consumer queue: {m:?}");
            }
            let batch = batches.poll_batch(max);
            sizes.push(batch.len());
            for m in batch.iter() {
                assert!(m.error().is_none(), "{:?}", m.error());
                let key = String::from_utf8(m.key().expect("key").to_vec()).unwrap();
                assert_eq!(key, format!("{}/{}/{}", m.topic(), m.partition(), m.offset()));
                let payload = String::from_utf8(m.payload().expect("payload").to_vec()).unwrap();
                read.entry((m.topic().to_owned(), m.partition())).or_default().push((m.offset(), payload));
                let topic_ids = ids.entry(m.topic().to_owned()).or_default();
                if !topic_ids.contains(&m.topic_id()) {
                    topic_ids.push(m.topic_id());
                }
                n += 1;
            }
            if batch.is_empty() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        (read, sizes, ids)
    }

    #[test]
    fn reads_each_assigned_message_once_in_offset_order() {
        let mock = cluster(300);
        let mut tpl = TopicPartitionList::new();
        // Three of the six partitions, one from an offset: the others must never show up.
        tpl.add_partition_offset("a", 0, Offset::Beginning).unwrap();
        tpl.add_partition_offset("a", 2, Offset::Offset(100)).unwrap();
        tpl.add_partition_offset("b", 1, Offset::Beginning).unwrap();
        let mut batches = BatchConsumer::assign(consumer(&mock), &tpl, 64).expect("assign");
        let (read, sizes, ids) = read_all(&mut batches, 300 + 200 + 300, 1000);

        let expected: Read = [("a", 0, 0), ("a", 2, 100), ("b", 1, 0)]
            .into_iter()
            .map(|(t, p, from)| {
                let msgs = (from..300).map(|i| (i, format!("payload {t} {p} {i}"))).collect();
                ((t.to_owned(), p), msgs)
            })
            .collect();
        assert_eq!(read, expected);
        // One id per topic, a different one for each.
        assert_eq!(ids.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert!(ids.values().all(|v| v.len() == 1), "{ids:?}");
        assert_ne!(ids["a"], ids["b"]);
        // At most the batch size per call, and batches of more than one message happen.
        assert!(sizes.iter().all(|&n| n <= 64), "{sizes:?}");
        assert!(sizes.iter().any(|&n| n > 1), "{sizes:?}");
        // Nothing more arrives (no duplicates, nothing from unassigned partitions).
        std::thread::sleep(Duration::from_millis(200));
        assert!(batches.poll_batch(1000).is_empty());
        assert_eq!(batches.queued(), 0);
    }

    #[test]
    fn max_and_the_batch_size_bound_a_batch() {
        let mock = cluster(50);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("a", 1, Offset::Beginning).unwrap();
        let mut batches = BatchConsumer::assign(consumer(&mock), &tpl, 16).expect("assign");
        // `queued` counts librdkafka's operations: the 50 messages, and maybe a control op.
        let deadline = Instant::now() + Duration::from_secs(20);
        while batches.queued() < 50 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(batches.poll_batch(0).is_empty());
        let mut offsets = |max| batches.poll_batch(max).iter().map(|m| m.offset()).collect::<Vec<_>>();
        assert_eq!(offsets(7), (0..7).collect::<Vec<_>>());
        // More than the batch size: capped at it.
        assert_eq!(offsets(1000), (7..23).collect::<Vec<_>>());
        assert_eq!(offsets(1000), (23..39).collect::<Vec<_>>());
        assert_eq!(offsets(1000), (39..50).collect::<Vec<_>>());
        assert_eq!(offsets(1000), Vec::<i64>::new());
        assert_eq!(batches.queued(), 0);
    }

    #[test]
    fn wakes_when_messages_arrive() {
        let mock = cluster(0);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("a", 0, Offset::Beginning).unwrap();
        let mut batches = BatchConsumer::assign(consumer(&mock), &tpl, 16).expect("assign");
        let wakes = Arc::new(AtomicUsize::new(0));
        let w = Arc::clone(&wakes);
        batches.set_nonempty_callback(move || {
            w.fetch_add(1, Ordering::SeqCst);
        });
        assert!(batches.poll_batch(16).is_empty());
        let producer: ThreadedProducer<DefaultProducerContext> =
            ClientConfig::new().set("bootstrap.servers", mock.bootstrap_servers()).create().expect("producer");
        producer.send(BaseRecord::to("a").partition(0).key("k").payload("v")).expect("send");
        producer.flush(Duration::from_secs(10)).expect("flush");
        let deadline = Instant::now() + Duration::from_secs(20);
        while wakes.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(wakes.load(Ordering::SeqCst) >= 1, "no wake-up");
        // The wake-up says the queue became non-empty; what woke it may be an op served inside
        // the call (not a message), so the message may take another call.
        let deadline = Instant::now() + Duration::from_secs(10);
        let payloads = loop {
            let batch = batches.poll_batch(16);
            let payloads: Vec<Option<Vec<u8>>> = batch.iter().map(|m| m.payload().map(<[u8]>::to_vec)).collect();
            if !payloads.is_empty() || Instant::now() > deadline {
                break payloads;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(payloads, vec![Some(b"v".to_vec())]);
    }

    #[test]
    fn dropping_with_queued_and_unconsumed_messages_ends() {
        // librdkafka's destroy waits for every message and queue reference: a leak here would hang.
        let mock = cluster(200);
        let bootstrap = mock.bootstrap_servers();
        let (done_tx, done) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", bootstrap)
                .set("group.id", "kafka-batch-test")
                .create()
                .expect("consumer");
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset("b", 0, Offset::Beginning).unwrap();
            tpl.add_partition_offset("b", 2, Offset::Beginning).unwrap();
            let mut batches = BatchConsumer::assign(consumer, &tpl, 32).expect("assign");
            let deadline = Instant::now() + Duration::from_secs(20);
            while batches.queued() < 400 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            assert_eq!(batches.poll_batch(32).len(), 32);
            batches.set_nonempty_callback(|| {});
            // One batch still borrowed when its consumer goes: the batch must go first (the borrow
            // checker sees to that), then the queue with its 358 messages, then the client.
            let batch = batches.poll_batch(10);
            assert_eq!(batch.len(), 10);
            drop(batch);
            drop(batches);
            done_tx.send(()).unwrap();
        });
        done.recv_timeout(Duration::from_secs(30)).expect("the consumer was not destroyed within 30 s");
    }

    #[test]
    fn a_partition_error_arrives_as_an_error_message() {
        // Offset 1000 of a 5-message partition, with resets turned into errors: librdkafka
        // reports that on the partition's queue, which is ours.
        let mock = cluster(5);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("a", 0, Offset::Offset(1000)).unwrap();
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", mock.bootstrap_servers())
            .set("group.id", "kafka-batch-test")
            .set("auto.offset.reset", "error")
            .create()
            .expect("consumer");
        let mut batches = BatchConsumer::assign(consumer, &tpl, 16).expect("assign");
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut errors = Vec::new();
        while Instant::now() < deadline && errors.is_empty() {
            for m in batches.poll_batch(16).iter() {
                let e = m.error().expect("only an error can arrive");
                errors.push((m.topic().to_owned(), m.partition(), e.to_string()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!((errors[0].0.as_str(), errors[0].1), ("a", 0));
        assert!(errors[0].2.contains("Local: No offset to automatically reset to"), "{errors:?}");
    }
}
