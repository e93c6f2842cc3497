//! The metrics of the feeds: every `metrics::` series this crate publishes is made here.

/// The series of one feed, labelled `feed`.
pub(crate) struct FeedCounters {
    /// Cuts recorded and not yet written (`squall_feed_lag_cuts`).
    pub lag_cuts: metrics::Gauge,
    /// 1 while the feed has been failing past its deadline (`squall_feed_failing`).
    pub failing: metrics::Gauge,
    /// Users written (`squall_feed_users_written_total`).
    pub users_written: metrics::Counter,
    /// Writes that succeeded (`squall_feed_writes_total{result="ok"}`).
    pub writes_ok: metrics::Counter,
    /// Writes that failed (`squall_feed_writes_total{result="error"}`).
    pub writes_failed: metrics::Counter,
}

impl FeedCounters {
    /// The series of the feed named `feed`.
    pub(crate) fn new(feed: &'static str) -> FeedCounters {
        FeedCounters {
            lag_cuts: metrics::gauge!("squall_feed_lag_cuts", "feed" => feed),
            failing: metrics::gauge!("squall_feed_failing", "feed" => feed),
            users_written: metrics::counter!("squall_feed_users_written_total", "feed" => feed),
            writes_ok: metrics::counter!("squall_feed_writes_total", "feed" => feed, "result" => "ok"),
            writes_failed: metrics::counter!("squall_feed_writes_total", "feed" => feed, "result" => "error"),
        }
    }
}
