//! The lease of a version process on its squall server: a process started with
//! `--adopt-timeout` keeps running while some server renews the lease (the server's monitor asks
//! `GET /v1/status?launch_id=<its launch id>` every second), and stops itself cleanly, the same way
//! as on SIGTERM, once nobody has for that long. So a server that dies leaves its versions serving,
//! a server started after it adopts them by renewing their leases, and no version outlives every
//! server for long.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A lease that expires `timeout` after it was last renewed.
#[derive(Debug)]
pub struct Lease {
    timeout: Duration,
    renewed: Mutex<Instant>,
}

impl Lease {
    /// A lease renewed now.
    pub fn new(timeout: Duration) -> Lease {
        Lease { timeout, renewed: Mutex::new(Instant::now()) }
    }

    /// How long the lease lasts without a renewal.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Renews the lease.
    pub fn renew(&self) {
        *self.renewed.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    fn deadline(&self) -> Instant {
        *self.renewed.lock().unwrap_or_else(|p| p.into_inner()) + self.timeout
    }

    /// Completes once the lease has gone `timeout` without a renewal.
    pub async fn expired(&self) {
        loop {
            let deadline = self.deadline();
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn expires_only_after_a_whole_timeout_without_renewal() {
        let lease = std::sync::Arc::new(Lease::new(Duration::from_secs(10)));
        let expired = tokio::spawn({
            let lease = std::sync::Arc::clone(&lease);
            async move { lease.expired().await }
        });
        for _ in 0..5 {
            tokio::time::advance(Duration::from_secs(9)).await;
            lease.renew();
        }
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!expired.is_finished(), "renewed 9 s ago");
        tokio::time::advance(Duration::from_secs(2)).await;
        tokio::time::timeout(Duration::from_millis(1), expired).await.expect("expired").unwrap();
        assert_eq!(lease.timeout(), Duration::from_secs(10));
    }
}
