//! Event-id deduplication within a horizon of event time.
//!
//! # Notes
//! An event is dropped as a resend when an event with the same key (topic kind, user, event_id)
//! was counted before and has not expired. Keys expire once their `ts` falls more than `horizon`
//! behind the newest `ts` this worker has seen (its watermark), checked by [`Dedup::expire`].
//! So a resend within the horizon is always dropped; one arriving later may be counted again.
//! Keys are 128-bit hashes: an accidental collision is far less likely than a hardware error.
//! A horizon of zero turns deduplication off (every event counts).

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use crate::event::EventKind;

/// The key of an event for deduplication.
///
/// # Notes
/// The xxh3-128 of `kind, len(user_id) as u32 LE, user_id, event_id`. Checkpoints store these
/// keys, so the bytes hashed must never change.
#[inline]
pub fn dedup_key(kind: EventKind, user_id: &str, event_id: &str) -> u128 {
    let (user, event) = (user_id.as_bytes(), event_id.as_bytes());
    let len = 5 + user.len() + event.len();
    // One-shot hashing of a stack copy: the streaming hasher's set-up cost more than the hash.
    let mut buf = [0u8; 128];
    if len > buf.len() {
        return dedup_key_streamed(kind, user, event);
    }
    buf[0] = kind as u8;
    buf[1..5].copy_from_slice(&(user.len() as u32).to_le_bytes());
    buf[5..5 + user.len()].copy_from_slice(user);
    buf[5 + user.len()..len].copy_from_slice(event);
    xxhash_rust::xxh3::xxh3_128(&buf[..len])
}

fn dedup_key_streamed(kind: EventKind, user: &[u8], event: &[u8]) -> u128 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&[kind as u8]);
    h.update(&(user.len() as u32).to_le_bytes());
    h.update(user);
    h.update(event);
    h.digest128()
}

/// Hashes `u128` keys that are already uniform hashes by taking their low bits.
#[derive(Default, Clone, Copy)]
pub struct IdentityHasher(u64);

impl std::hash::Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(b);
        }
    }
    fn write_u128(&mut self, i: u128) {
        self.0 = i as u64;
    }
}

/// The event ids seen within the horizon, with their event times.
#[derive(Clone, Debug)]
pub struct Dedup {
    horizon_ms: i64,
    seen: HashMap<u128, i64, BuildHasherDefault<IdentityHasher>>,
    watermark: i64,
}

impl Dedup {
    /// Keeps ids for `horizon_ms` of event time behind the newest event.
    pub fn new(horizon_ms: i64) -> Self {
        Dedup { horizon_ms, seen: HashMap::default(), watermark: i64::MIN }
    }

    /// Records `key`; true if it is new (count the event), false if it is a resend.
    #[inline]
    pub fn first_time(&mut self, key: u128, ts: i64) -> bool {
        if self.horizon_ms <= 0 {
            return true;
        }
        self.watermark = self.watermark.max(ts);
        match self.seen.entry(key) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(ts);
                true
            }
        }
    }

    /// Forgets ids older than the horizon; returns how many were dropped.
    pub fn expire(&mut self) -> usize {
        let cutoff = self.watermark.saturating_sub(self.horizon_ms);
        let before = self.seen.len();
        self.seen.retain(|_, ts| *ts >= cutoff);
        before - self.seen.len()
    }

    /// Ids retained.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no id is retained.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Every retained `(key, ts)`, for checkpoints.
    pub fn entries(&self) -> impl Iterator<Item = (u128, i64)> + '_ {
        self.seen.iter().map(|(k, t)| (*k, *t))
    }

    /// Restores retained ids from a checkpoint.
    pub fn restore(&mut self, entries: impl IntoIterator<Item = (u128, i64)>) {
        for (k, ts) in entries {
            self.watermark = self.watermark.max(ts);
            self.seen.insert(k, ts);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 24 * 3600 * 1000;

    #[test]
    fn keys_do_not_depend_on_how_they_are_hashed() {
        for (u, e) in [("u1", "e1"), ("", ""), ("user-42", &"e".repeat(200) as &str), (&"u".repeat(123), "e")] {
            for kind in [EventKind::Song, EventKind::Ad] {
                assert_eq!(dedup_key(kind, u, e), dedup_key_streamed(kind, u.as_bytes(), e.as_bytes()), "{u} {e}");
            }
        }
        // The boundaries are part of the key.
        assert_ne!(dedup_key(EventKind::Song, "u1", "e1"), dedup_key(EventKind::Song, "u1e", "1"));
        assert_ne!(dedup_key(EventKind::Song, "u1", "e1"), dedup_key(EventKind::Ad, "u1", "e1"));
    }

    #[test]
    fn a_resend_is_dropped_and_kinds_and_users_are_separate() {
        let mut d = Dedup::new(H);
        let k = dedup_key(EventKind::Song, "u1", "e1");
        assert!(d.first_time(k, 10));
        assert!(!d.first_time(k, 10));
        assert!(d.first_time(dedup_key(EventKind::Ad, "u1", "e1"), 10));
        assert!(d.first_time(dedup_key(EventKind::Song, "u2", "e1"), 10));
        // The length prefix keeps ("u1", "2e") and ("u12", "e") apart.
        assert_ne!(dedup_key(EventKind::Song, "u1", "2e"), dedup_key(EventKind::Song, "u12", "e"));
    }

    #[test]
    fn a_zero_horizon_counts_everything() {
        let mut d = Dedup::new(0);
        let k = dedup_key(EventKind::Song, "u1", "e1");
        assert!(d.first_time(k, 10) && d.first_time(k, 10));
        assert!(d.is_empty());
    }

    #[test]
    fn ids_expire_only_beyond_the_horizon() {
        let mut d = Dedup::new(H);
        let old = dedup_key(EventKind::Song, "u1", "old");
        let edge = dedup_key(EventKind::Song, "u1", "edge");
        d.first_time(old, 0);
        d.first_time(edge, 1);
        d.first_time(dedup_key(EventKind::Song, "u1", "new"), H + 1);
        assert_eq!(d.expire(), 1);
        assert!(!d.first_time(edge, 1), "within the horizon: still a resend");
        assert!(d.first_time(old, 0), "beyond the horizon: forgotten");
    }
}
