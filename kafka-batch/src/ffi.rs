//! Everything that calls librdkafka's C API directly: the only module of squall that allows
//! `unsafe`. Each unsafe operation has a block of its own with the invariant it relies on.
//!
//! # Invariants
//!
//! 1. **The client outlives the queue and every message.** [`BatchConsumer`] owns the
//!    `BaseConsumer` (the `rd_kafka_t`) and the fetch queue. Its `Drop` destroys the queue first;
//!    the consumer, a field, is dropped only after that body. Messages live in a [`Batch`], which
//!    borrows the `BatchConsumer` mutably, so none can outlive it, and none is alive during its drop.
//! 2. **The queue handle is destroyed exactly once.** It comes from `rd_kafka_queue_new` (we are
//!    its owner), is never handed out, and is destroyed only in `BatchConsumer::drop`. The
//!    partition queues' handles are destroyed right after forwarding them (the forward keeps its own
//!    reference to our queue, and the partition keeps its fetch queue).
//! 3. **Each message is destroyed exactly once.** `rd_kafka_consume_batch_queue` writes `n`
//!    message pointers into `slots[..n]` and hands their ownership to us. The one [`Batch`] made
//!    from that call destroys exactly those `n` in its `Drop`. The next call, which overwrites the
//!    slots, needs `&mut BatchConsumer`, which the batch holds until it is dropped. A leaked batch
//!    (`mem::forget`) leaks its messages but never destroys them twice.
//! 4. **Borrowed bytes end with the batch.** A [`Message`]'s payload, key and topic name point into
//!    the `rd_kafka_message_t`, which librdkafka neither frees nor changes until we destroy it.
//!    They are handed out with the lifetime of the borrow of the batch, which ends before its
//!    `Drop` destroys the messages.
//! 5. **The wake-up callback outlives its registration.** The boxed closure whose address is the
//!    callback's opaque pointer stays in `BatchConsumer::wake` until the registration is replaced
//!    or disabled. librdkafka swaps the registration and calls the callback under the queue's lock,
//!    so once `rd_kafka_queue_cb_event_enable` returns, no call with the old pointer is in flight.
//! 6. **Only this queue receives the assigned partitions' messages.** The partitions' fetch queues
//!    are forwarded here before `assign`; `rd_kafka_queue_forward` marks them as forwarded by the
//!    application, so starting the fetch keeps our forward instead of routing them to the
//!    consumer queue. (A later `assign`/`unassign` on the consumer stops that: do not call them.)

use std::ffi::{CStr, CString, c_void};
use std::ptr::{self, NonNull};

use rdkafka::bindings as rd;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, DefaultConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::topic_partition_list::TopicPartitionList;

/// The wake-up closure, boxed twice so that its (thin) address can be librdkafka's opaque pointer.
type Wake = Box<dyn Fn() + Send + Sync>;

/// A consumer whose assigned partitions are read a batch at a time from a queue of their own.
///
/// Messages come only from [`poll_batch`](Self::poll_batch). Errors that are not about one
/// partition (a broker down, say), logs and statistics still arrive on the consumer's own queue:
/// keep calling [`consumer`](Self::consumer)`().poll(..)` as well, as for any `BaseConsumer`.
pub struct BatchConsumer<C: ConsumerContext + 'static = DefaultConsumerContext> {
    /// Our queue (owned: from `rd_kafka_queue_new`); destroyed in `Drop`.
    queue: NonNull<rd::rd_kafka_queue_t>,
    /// The registered wake-up closure, if any (invariant 5).
    wake: Option<Box<Wake>>,
    /// Where `rd_kafka_consume_batch_queue` writes message pointers; its length is the batch size.
    slots: Box<[*mut rd::rd_kafka_message_t]>,
    /// The client. A field, so it is dropped after `Drop::drop` has destroyed the queue.
    consumer: BaseConsumer<C>,
}

impl<C: ConsumerContext + 'static> BatchConsumer<C> {
    /// Routes the messages of every partition in `partitions` to a new queue, then assigns them
    /// (at their offsets) to `consumer`. [`poll_batch`](Self::poll_batch) returns at most
    /// `batch_size` messages per call.
    ///
    /// `consumer` must not have been assigned or subscribed yet, and must not be reassigned later:
    /// assignment changes end the routing (librdkafka stops forwarding on unassign).
    pub fn assign(consumer: BaseConsumer<C>, partitions: &TopicPartitionList, batch_size: usize) -> KafkaResult<Self> {
        let rk = consumer.client().native_ptr();
        // SAFETY: `rk` is the live client owned by `consumer`. The new queue is ours to destroy
        // (invariant 2); it is put in `this` at once, whose `Drop` destroys it if we return early.
        let queue = unsafe { rd::rd_kafka_queue_new(rk) };
        let queue =
            NonNull::new(queue).ok_or_else(|| KafkaError::ClientCreation("rd_kafka_queue_new failed".into()))?;
        let this = BatchConsumer {
            queue,
            wake: None,
            slots: vec![ptr::null_mut(); batch_size.max(1)].into_boxed_slice(),
            consumer,
        };
        for tp in partitions.elements() {
            let topic = CString::new(tp.topic()).map_err(KafkaError::Nul)?;
            // SAFETY: `rk` is live (owned by `this.consumer`); `topic` is a NUL-terminated string
            // that outlives the call. The returned handle holds a reference that we release below.
            let part = unsafe { rd::rd_kafka_queue_get_partition(rk, topic.as_ptr(), tp.partition()) };
            let part = NonNull::new(part).ok_or_else(|| {
                KafkaError::ClientCreation(format!("no fetch queue for {}/{}", tp.topic(), tp.partition()))
            })?;
            // SAFETY: both handles are live. The forward takes its own reference to our queue
            // (invariant 6: it is marked as the application's, so assign keeps it).
            unsafe { rd::rd_kafka_queue_forward(part.as_ptr(), this.queue.as_ptr()) };
            // SAFETY: `part` is our handle from `rd_kafka_queue_get_partition`, destroyed once, here;
            // the partition keeps its fetch queue and the forward.
            unsafe { rd::rd_kafka_queue_destroy(part.as_ptr()) };
        }
        this.consumer.assign(partitions)?;
        Ok(this)
    }

    /// The underlying consumer: poll it for errors and events, commit, read watermarks. Do not
    /// assign, unassign or subscribe it (see [`assign`](Self::assign)).
    pub fn consumer(&self) -> &BaseConsumer<C> {
        &self.consumer
    }

    /// Up to `max` (and at most the batch size) messages that are already fetched, without
    /// waiting. Fewer than asked for means the queue was empty: then the wake-up callback, if
    /// set, is called when the next message arrives.
    pub fn poll_batch(&mut self, max: usize) -> Batch<'_> {
        let want = max.min(self.slots.len());
        let n = if want == 0 {
            0
        } else {
            // SAFETY: the queue is live (destroyed only in `Drop`); `slots` has room for `want`
            // pointers, and librdkafka writes at most that many. No earlier batch is alive (it
            // would hold `&mut self`), so no pointer overwritten here is still to be destroyed.
            let n = unsafe { rd::rd_kafka_consume_batch_queue(self.queue.as_ptr(), 0, self.slots.as_mut_ptr(), want) };
            usize::try_from(n).unwrap_or(0).min(want)
        };
        Batch { messages: &self.slots[..n] }
    }

    /// Operations waiting in the queue: the messages fetched and not yet polled, and now and then
    /// one of librdkafka's own (a partition's version barrier, say), which polling skips.
    pub fn queued(&self) -> usize {
        // SAFETY: the queue is live (destroyed only in `Drop`).
        unsafe { rd::rd_kafka_queue_length(self.queue.as_ptr()) }
    }

    /// Calls `wake` (on a librdkafka thread) whenever the queue turns from empty to non-empty.
    /// It must not block or panic (a panic there aborts the process).
    pub fn set_nonempty_callback(&mut self, wake: impl Fn() + Send + Sync + 'static) {
        let wake: Box<Wake> = Box::new(Box::new(wake));
        let opaque = ptr::from_ref::<Wake>(&wake).cast_mut().cast::<c_void>();
        // SAFETY: the queue is live. `opaque` points into the heap allocation of `wake`, which we
        // keep in `self.wake` until the next registration or `Drop` (invariant 5); the previous
        // closure is dropped only after this call has replaced it under the queue's lock.
        unsafe { rd::rd_kafka_queue_cb_event_enable(self.queue.as_ptr(), Some(call_wake), opaque) };
        self.wake = Some(wake);
    }
}

/// librdkafka's queue event callback: calls the registered closure.
///
/// # Safety
/// `opaque` must be the address of a live `Wake` (invariant 5).
unsafe extern "C" fn call_wake(_rk: *mut rd::rd_kafka_t, opaque: *mut c_void) {
    // SAFETY: registered by `set_nonempty_callback` with the address of the `Wake` it keeps alive
    // for as long as the registration (invariant 5); only shared references are made to it.
    let wake = unsafe { &*opaque.cast::<Wake>() };
    wake();
}

impl<C: ConsumerContext + 'static> Drop for BatchConsumer<C> {
    fn drop(&mut self) {
        // SAFETY: the queue is live. Disabling under the queue's lock means no callback call is in
        // flight afterwards, so `self.wake` may be freed once this body ends (invariant 5).
        unsafe { rd::rd_kafka_queue_cb_event_enable(self.queue.as_ptr(), None, ptr::null_mut()) };
        // SAFETY: our own handle, destroyed once, here (invariant 2). No batch is alive (it would
        // borrow `self`). Messages still queued are destroyed with it. The client is dropped only
        // after this body (invariant 1); the partitions' forwards keep the (now disabled) queue
        // object alive until the client's close unassigns them.
        unsafe { rd::rd_kafka_queue_destroy(self.queue.as_ptr()) };
    }
}

/// Messages returned by one [`BatchConsumer::poll_batch`]; destroyed when the batch is dropped.
pub struct Batch<'c> {
    /// Owned message pointers, all non-null, each destroyed once in `Drop` (invariant 3).
    messages: &'c [*mut rd::rd_kafka_message_t],
}

impl Batch<'_> {
    /// How many messages.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// The messages in the order librdkafka queued them (offset order within a partition).
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Message<'_>> + '_ {
        self.messages.iter().map(|&raw| {
            // SAFETY: librdkafka filled `messages` with non-null pointers to messages it handed to
            // us; each stays valid and unchanged until `Drop` below, after this borrow (invariant 4).
            Message { raw: unsafe { &*raw } }
        })
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        for &raw in self.messages {
            // SAFETY: `raw` came from the `rd_kafka_consume_batch_queue` call that made this batch,
            // which gave us its ownership; it is destroyed here once (invariant 3), and no
            // `Message` borrowing it is alive (they borrow `self`).
            unsafe { rd::rd_kafka_message_destroy(raw) };
        }
    }
}

/// One message of a [`Batch`], borrowed from it.
#[derive(Clone, Copy)]
pub struct Message<'b> {
    raw: &'b rd::rd_kafka_message_t,
}

impl<'b> Message<'b> {
    /// The topic's name ("" if librdkafka gives none, as for an error not about a partition).
    pub fn topic(&self) -> &'b str {
        if self.raw.rkt.is_null() {
            return "";
        }
        // SAFETY: a non-null `rkt` is the message's topic handle, kept alive by the message (it
        // holds a reference to its partition, which holds its topic) until it is destroyed.
        let name = unsafe { rd::rd_kafka_topic_name(self.raw.rkt) };
        if name.is_null() {
            return "";
        }
        // SAFETY: `rd_kafka_topic_name` returns the topic's NUL-terminated name, owned by the
        // topic handle and alive as long as the message (above, invariant 4).
        let name = unsafe { CStr::from_ptr(name) };
        name.to_str().unwrap_or("")
    }

    /// Which topic the message is from, cheaper to compare than [`topic`](Self::topic): the
    /// address of its topic handle, which librdkafka shares between all messages of a topic (one
    /// handle per topic per client, kept while any of the topic's partitions is assigned). Compare
    /// only ids of messages from the same [`BatchConsumer`]; it is never dereferenced.
    pub fn topic_id(&self) -> TopicId {
        TopicId(self.raw.rkt.addr())
    }

    /// The partition.
    pub fn partition(&self) -> i32 {
        self.raw.partition
    }

    /// The offset.
    pub fn offset(&self) -> i64 {
        self.raw.offset
    }

    /// The payload; for an error (see [`error`](Self::error)), librdkafka's description of it.
    pub fn payload(&self) -> Option<&'b [u8]> {
        // SAFETY: librdkafka sets `payload` to null or to `len` initialised bytes owned by the
        // message, unchanged until it is destroyed after this borrow ends (invariant 4).
        unsafe { bytes(self.raw.payload, self.raw.len) }
    }

    /// The key.
    pub fn key(&self) -> Option<&'b [u8]> {
        // SAFETY: as for the payload: null or `key_len` bytes owned by the message (invariant 4).
        unsafe { bytes(self.raw.key, self.raw.key_len) }
    }

    /// `Some` if this is an error about the partition rather than a message (as `BaseConsumer::poll`
    /// would return it).
    pub fn error(&self) -> Option<KafkaError> {
        match self.raw.err {
            rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR => None,
            rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__PARTITION_EOF => {
                Some(KafkaError::PartitionEOF(self.raw.partition))
            }
            err => Some(KafkaError::MessageConsumption(RDKafkaErrorCode::from(err))),
        }
    }
}

/// See [`Message::topic_id`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TopicId(usize);

/// `len` bytes at `data`, or `None` if `data` is null.
///
/// # Safety
/// A non-null `data` must point to `len` initialised bytes that stay valid and unchanged for `'a`.
unsafe fn bytes<'a>(data: *mut c_void, len: usize) -> Option<&'a [u8]> {
    if data.is_null() {
        return None;
    }
    // SAFETY: the caller's contract.
    Some(unsafe { std::slice::from_raw_parts(data.cast::<u8>().cast_const(), len) })
}
