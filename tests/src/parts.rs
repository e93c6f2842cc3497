//! Checkpoint parts for the tests of the checkpoint stores (`outage.rs`, `checkpoint_resume.rs`).

use squall_operators::checkpoint::{DedupRun, Part};
use squall_operators::dedup::Fingerprint;
use squall_operators::{KeyGroups, Partition, UserSnapshot};

/// A user's state as checkpoints keep it; the store treats it as opaque, so any words do.
pub fn snapshot(plays: usize) -> UserSnapshot {
    UserSnapshot { plan: 7, words: vec![plays as u32, 1, 2], names: vec!["rock".into()] }
}

/// The key groups of these parts: 64.
pub fn key_groups() -> KeyGroups {
    KeyGroups::new(64).expect("64 key groups")
}

/// A dedup id made from `n`.
pub fn id(n: u64) -> Fingerprint {
    Fingerprint { hi: n.wrapping_mul(0x9E37_79B9_7F4A_7C15), lo: n as u16 }
}

/// A part of 2 workers with one dedup id in bucket `cut` (buckets of 1 s, event time `cut` s).
pub fn part(cut: u64, worker: usize, users: &[(&str, usize)], offset: i64) -> Part {
    let key_group = key_groups().of(users.first().map_or("x", |u| u.0));
    Part {
        cut,
        worker,
        peers: 2,
        key_groups: key_groups(),
        users: users.iter().map(|(u, n)| (u.to_string(), snapshot(*n))).collect(),
        dedup: vec![DedupRun { key_group, bucket: cut as i64, ids: vec![id(cut * 10 + worker as u64)] }],
        bucket_ms: 1000,
        watermark: cut as i64 * 1000,
        offsets: vec![(Partition { topic: "t".into(), partition: worker as i32 }, offset)],
        ..Default::default()
    }
}

/// Runs `f` on a thread outside the runtime (the stores' blocking methods drive their requests on
/// the runtime and may not run on one of its threads).
pub fn off<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join().expect("thread"))
}
