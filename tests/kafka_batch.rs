//! `squall-kafka-batch` against the real dev broker: the batch queue gets every message of the
//! assigned partitions once, in offset order, from where each was assigned, and keeps doing so for
//! messages produced while it reads; the consumer's own queue gets none of them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::{Offset, TopicPartitionList};
use squall_kafka_batch::BatchConsumer;
use squall_tests::{brokers, produce_to_partitions, unique};

/// Produces records `from..from + n` to each of `partitions` of `topic`, in order: key `p/i`,
/// payload `value p i`.
fn produce(topic: &str, partitions: &[i32], from: usize, n: usize) {
    produce_to_partitions(topic, partitions, from, n, |p, i| (format!("{p}/{i}"), format!("value {p} {i}")));
}

/// Reads until `want` messages arrived (or 30 s): per partition, (offset, key, payload).
fn read(batches: &mut BatchConsumer, want: usize) -> BTreeMap<i32, Vec<(i64, String, String)>> {
    let mut out: BTreeMap<i32, Vec<(i64, String, String)>> = BTreeMap::new();
    let mut n = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while n < want && Instant::now() < deadline {
        match batches.consumer().poll(Duration::ZERO) {
            Some(Ok(m)) => panic!("a message on the consumer's own queue: {m:?}"),
            Some(Err(e)) => panic!("consumer error: {e}"),
            None => {}
        }
        let batch = batches.poll_batch(256);
        for m in batch.iter() {
            assert!(m.error().is_none(), "{:?}", m.error());
            let text = |b: Option<&[u8]>| String::from_utf8(b.expect("bytes").to_vec()).expect("utf8");
            out.entry(m.partition()).or_default().push((m.offset(), text(m.key()), text(m.payload())));
            n += 1;
        }
        if batch.is_empty() {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    out
}

fn expected(p: i32, offsets: std::ops::Range<i64>) -> Vec<(i64, String, String)> {
    offsets.map(|i| (i, format!("{p}/{i}"), format!("value {p} {i}"))).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_batch_queue_reads_each_assigned_message_once_in_order_and_keeps_up_with_new_ones() {
    let topic = unique("batch");
    squall::kafka::create_topics(&brokers(), std::slice::from_ref(&topic), 4).await.expect("create topic");
    tokio::task::block_in_place(|| produce(&topic, &[0, 1, 2, 3], 0, 500));

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("batch-group"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Beginning).unwrap();
    tpl.add_partition_offset(&topic, 3, Offset::Offset(120)).unwrap();
    let mut batches = BatchConsumer::assign(consumer, &tpl, 128).expect("assign");
    let wakes = Arc::new(AtomicUsize::new(0));
    let w = Arc::clone(&wakes);
    batches.set_nonempty_callback(move || {
        w.fetch_add(1, Ordering::SeqCst);
    });

    let first = tokio::task::block_in_place(|| read(&mut batches, 500 + 380));
    assert_eq!(first.keys().copied().collect::<Vec<_>>(), vec![0, 3], "only the assigned partitions");
    assert_eq!(first[&0], expected(0, 0..500));
    assert_eq!(first[&3], expected(3, 120..500));

    // Drained: produce more, to all four partitions; only the assigned ones' arrive, after a wake-up.
    tokio::task::block_in_place(|| std::thread::sleep(Duration::from_millis(300)));
    assert!(batches.poll_batch(256).is_empty(), "nothing beyond what was produced");
    let woken = wakes.load(Ordering::SeqCst);
    tokio::task::block_in_place(|| produce(&topic, &[0, 1, 2, 3], 500, 100));
    let second = tokio::task::block_in_place(|| read(&mut batches, 200));
    assert_eq!(second[&0], expected(0, 500..600));
    assert_eq!(second[&3], expected(3, 500..600));
    assert_eq!(second.len(), 2);
    assert!(wakes.load(Ordering::SeqCst) > woken, "the callback announced the new messages");
    tokio::task::block_in_place(|| std::thread::sleep(Duration::from_millis(300)));
    assert!(batches.poll_batch(256).is_empty(), "no message twice");
}
