//! The event-time watermark: the time no unread event can be behind, from the sources' progress.
//!
//! # Notes
//! Each partition's progress is the newest `ts` it has delivered. A partition that has been at
//! its end (librdkafka's partition EOF: nothing more to read right now) for the source's
//! `idle_after` is *idle* and does not hold the watermark back, as Flink's `withIdleness`; its
//! next message makes it active again. At
//! every epoch's end each source worker reports a [`Progress`]: the least progress over its active
//! partitions (`i64::MAX` when all are idle or it owns none) and the newest over all of them. The
//! watermark for the events of epoch `e` folds the reports of the epochs before `e` from every
//! worker: the least `low`, or, when every partition is idle, the newest `high` (nothing is left
//! to read, so nothing can be behind it). It never moves back. A worker that has not reported
//! yet holds it where it is.
//!
//! Only reports of *earlier* epochs are used, so the watermark that applies to an event is one
//! its own partition had already passed when the event was read: a resend is dropped whenever its
//! partition had not moved a horizon past its original, whatever the order the partitions are read
//! in. A worker does not wait for the reports: it folds those that have arrived, so it may use an
//! epoch's report an epoch later than its peers (a lower watermark: ids and users are kept
//! longer, never dropped early); per source worker the report of the latest epoch wins, in
//! whatever order they arrive. A checkpoint records the watermark each worker used at the cut.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use crate::epoch::Epoch;
use crate::event::Event;

/// A source worker's event-time progress at the end of an epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The source worker.
    pub worker: u32,
    /// The least of its active partitions' newest `ts` (`i64::MIN` while one has delivered
    /// nothing yet; `i64::MAX` when all are idle).
    pub low: i64,
    /// The newest `ts` any of its partitions delivered (`i64::MIN`: none yet).
    pub high: i64,
}

/// A report on its way to one maintaining worker (the first field): every report goes to every
/// worker, through an exchange on that field (one operator, not timely's three of `broadcast`).
pub type Report = (u32, Progress);

/// `report` addressed to each of `peers` workers.
pub fn to_every(report: Progress, peers: usize) -> impl Iterator<Item = Report> {
    (0..peers as u32).map(move |to| (to, report))
}

/// One partition's event-time progress, as its source worker tracks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionClock {
    /// The newest `ts` it delivered (`i64::MIN`: none yet).
    pub newest: i64,
    /// The oldest `ts` it delivered (`i64::MAX`: none yet).
    pub oldest: i64,
    /// At its end: it does not hold the watermark back.
    pub idle: bool,
}

impl Default for PartitionClock {
    fn default() -> Self {
        PartitionClock { newest: i64::MIN, oldest: i64::MAX, idle: false }
    }
}

impl PartitionClock {
    /// A message of this partition was read (an event with event time `ts`, if it decoded).
    #[inline]
    pub fn read(&mut self, ts: Option<i64>) {
        self.idle = false;
        if let Some(ts) = ts {
            self.newest = self.newest.max(ts);
            self.oldest = self.oldest.min(ts);
        }
    }
}

/// The report of a worker whose partitions' clocks are `clocks`.
pub fn progress<'a>(worker: u32, clocks: impl IntoIterator<Item = &'a PartitionClock>) -> Progress {
    let mut p = Progress { worker, low: i64::MAX, high: i64::MIN };
    for c in clocks {
        p.high = p.high.max(c.newest);
        if !c.idle {
            p.low = p.low.min(c.newest);
        }
    }
    p
}

/// Folds the sources' reports into the watermark; one per maintaining worker.
#[derive(Clone, Debug)]
pub struct Watermark {
    /// The report of the latest epoch folded, per source worker.
    latest: Vec<Option<(Epoch, Progress)>>,
    /// Reports not folded yet, by the epoch they end.
    pending: BTreeMap<Epoch, Vec<Progress>>,
    value: i64,
}

impl Watermark {
    /// For `peers` source workers, starting at `restored` (a checkpoint's, or `i64::MIN`).
    pub fn new(peers: usize, restored: i64) -> Self {
        Watermark { latest: vec![None; peers], pending: BTreeMap::new(), value: restored }
    }

    /// The watermark.
    pub fn get(&self) -> i64 {
        self.value
    }

    /// Keeps reports of the end of `epoch` for later.
    pub fn push(&mut self, epoch: Epoch, reports: impl IntoIterator<Item = Progress>) {
        self.pending.entry(epoch).or_default().extend(reports);
    }

    /// Keeps reports addressed to this worker, of the end of `epoch`, for later.
    pub fn receive(&mut self, epoch: Epoch, reports: impl IntoIterator<Item = Report>) {
        self.push(epoch, reports.into_iter().map(|(_, p)| p));
    }

    /// Folds the reports of the epochs before `epoch`; the watermark for the events of `epoch`.
    pub fn before(&mut self, epoch: Epoch) -> i64 {
        while let Some(entry) = self.pending.first_entry() {
            let at = *entry.key();
            if at >= epoch {
                break;
            }
            for p in entry.remove() {
                if let Some(slot) = self.latest.get_mut(p.worker as usize)
                    && slot.is_none_or(|(e, _)| e <= at)
                {
                    *slot = Some((at, p));
                }
            }
        }
        let mut low = i64::MAX;
        let mut high = i64::MIN;
        for p in &self.latest {
            let Some((_, p)) = p else { return self.value };
            low = low.min(p.low);
            high = high.max(p.high);
        }
        let candidate = if low == i64::MAX { high } else { low };
        self.value = self.value.max(candidate);
        self.value
    }
}

/// Progress reports for an input that is not Kafka (a test's or a benchmark's own).
pub trait ReportProgress<'scope> {
    /// Each worker's input as one partition that is never idle: with every batch, the newest
    /// `ts` this worker has been given so far.
    fn report_progress(&self) -> Stream<'scope, Epoch, Vec<Report>>;
}

impl<'scope> ReportProgress<'scope> for Stream<'scope, Epoch, Vec<Event>> {
    fn report_progress(&self) -> Stream<'scope, Epoch, Vec<Report>> {
        let scope = self.scope();
        let (worker, peers) = (scope.index() as u32, scope.peers());
        let mut builder = OperatorBuilder::new("ReportProgress".to_owned(), scope);
        let mut input = builder.new_input(self.clone(), Pipeline);
        let (output, stream) = builder.new_output::<Vec<Report>>();
        let mut output = OutputBuilder::<_, CapacityContainerBuilder<Vec<Report>>>::from(output);
        builder.build(move |_caps| {
            let mut newest = i64::MIN;
            move |_frontiers| {
                let mut out = output.activate();
                input.for_each(|cap, data| {
                    newest = data.iter().map(Event::ts).fold(newest, i64::max);
                    let report = Progress { worker, low: newest, high: newest };
                    out.session(&cap).give_iterator(to_every(report, peers));
                });
            }
        });
        stream
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(newest: i64, idle: bool) -> PartitionClock {
        PartitionClock { newest, oldest: newest, idle }
    }

    #[test]
    fn a_report_is_the_least_active_partition_and_the_newest_of_all() {
        let p = progress(1, &[clock(50, false), clock(90, true), clock(70, false)]);
        assert_eq!(p, Progress { worker: 1, low: 50, high: 90 });
        let idle = progress(0, &[clock(50, true)]);
        assert_eq!((idle.low, idle.high), (i64::MAX, 50));
        let unread = progress(0, &[clock(i64::MIN, false), clock(70, false)]);
        assert_eq!(unread.low, i64::MIN);
        assert_eq!(progress(0, &[]), Progress { worker: 0, low: i64::MAX, high: i64::MIN });
    }

    #[test]
    fn the_watermark_uses_earlier_epochs_waits_for_every_worker_and_never_goes_back() {
        let mut w = Watermark::new(2, i64::MIN);
        w.push(5, [Progress { worker: 0, low: 100, high: 100 }]);
        assert_eq!(w.before(6), i64::MIN, "worker 1 has not reported");
        w.push(5, [Progress { worker: 1, low: 40, high: 300 }]);
        w.push(6, [Progress { worker: 1, low: 200, high: 300 }]);
        assert_eq!(w.before(6), 40, "epoch 6's reports are for the events after it");
        assert_eq!(w.before(7), 100);
        // Everything idle: the newest of all.
        w.push(7, [Progress { worker: 0, low: i64::MAX, high: 150 }, Progress { worker: 1, low: i64::MAX, high: 300 }]);
        assert_eq!(w.before(8), 300);
        // A partition becomes active again behind it: the watermark stays.
        w.push(8, [Progress { worker: 0, low: 120, high: 150 }]);
        assert_eq!(w.before(9), 300);
    }

    #[test]
    fn a_report_that_arrives_late_does_not_replace_a_later_one() {
        let mut w = Watermark::new(1, i64::MIN);
        w.push(5, [Progress { worker: 0, low: 500, high: 500 }]);
        assert_eq!(w.before(6), 500);
        // Epoch 4's report, folded after epoch 5's: epoch 5's stays.
        w.push(4, [Progress { worker: 0, low: 400, high: 400 }]);
        w.push(6, [Progress { worker: 0, low: 450, high: 600 }]);
        assert_eq!(w.before(7), 500, "epoch 6's low is behind, and the watermark never goes back");
        assert_eq!(w.latest[0].map(|(e, _)| e), Some(6));
    }

    #[test]
    fn a_restored_watermark_is_where_it_starts() {
        let mut w = Watermark::new(1, 500);
        w.push(1, [Progress { worker: 0, low: i64::MIN, high: i64::MIN }]);
        assert_eq!(w.before(2), 500);
    }
}
