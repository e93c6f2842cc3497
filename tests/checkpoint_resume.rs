//! The CQL checkpoint store's `read`, `latest_complete` and `resume` (a standby's bootstrap and
//! takeover) against the test CQL server (`SQUALL_TEST_CQL`): a read changes nothing and folds
//! what recovery would, also beside a writer and compactor; a resume deletes what lies beyond its
//! cut, as recovery does, and the writer and compaction go on from it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use scylla::client::session::Session;
use squall_enrichment::schema;
use squall_operators::UserSnapshot;
use squall_operators::checkpoint::{CheckpointError, CheckpointStore, Part, Recovered, RecoveryScope};
use squall_operators::checkpoint_cql::CqlCheckpoints;
use squall_operators::dedup::Fingerprint;
use squall_tests::parts::{id, key_groups, off, part, snapshot};
use squall_tests::{cql, unique};

/// A part of worker 0 that writes every user of `users` with `plays`.
fn crowd_part(cut: u64, users: &[String], plays: usize) -> Part {
    Part { users: users.iter().map(|u| (u.clone(), snapshot(plays))).collect(), ..part(cut, 0, &[], cut as i64) }
}

/// `n` users of one key group no other user here is in, so that its rows grow enough to be
/// rebased; and that key group.
fn crowd(n: usize) -> (Vec<String>, u32) {
    let taken: Vec<u32> = ["a", "b", "c", "d", "x", "ghost"].iter().map(|u| key_groups().of(u)).collect();
    let target = (0..64).find(|g| !taken.contains(g)).unwrap();
    let users = (0..400_000).map(|i| format!("u{i}")).filter(|u| key_groups().of(u) == target).take(n).collect();
    (users, target)
}

/// A fresh keyspace on the test server.
async fn keyspace() -> (Arc<Session>, String) {
    let session = Arc::new(schema::connect(&cql()).await.expect("connect to the test CQL server"));
    let ks = unique("ks");
    schema::create(&session, &ks, 1).await.expect("keyspace");
    (session, ks)
}

async fn open(session: &Arc<Session>, ks: &str) -> CqlCheckpoints {
    CqlCheckpoints::open(Arc::clone(session), ks, "g-v1", tokio::runtime::Handle::current()).await.expect("open")
}

fn all() -> RecoveryScope {
    RecoveryScope::single(key_groups(), 2)
}

/// Complete cuts 1 to 3 of two workers (b expires at 3), and worker 0's part of cut 4, which
/// never completes: it brings a new user, `ghost`, and changes `a`.
fn three_cuts_and_a_part(store: &mut CqlCheckpoints) {
    store.write_parts(&[part(1, 0, &[("a", 1)], 1), part(1, 1, &[("b", 1)], 1)]).unwrap();
    store.write_parts(&[part(2, 0, &[("a", 2)], 2), part(2, 1, &[("c", 1)], 2)]).unwrap();
    let mut expired = part(3, 1, &[], 3);
    expired.expired = vec!["b".into()];
    store.write_parts(&[part(3, 0, &[("a", 3)], 3), expired]).unwrap();
    store.write_part(&part(4, 0, &[("ghost", 4), ("a", 4)], 4)).unwrap();
}

/// The state of [`three_cuts_and_a_part`] at cut 3.
fn check_cut_3(rec: &Recovered) {
    assert_eq!(rec.cut, 3);
    assert_eq!(rec.users, HashMap::from([("a".into(), snapshot(3)), ("c".into(), snapshot(1))]));
    assert_eq!(rec.offsets.values().copied().collect::<Vec<_>>(), vec![3, 3]);
    assert_eq!((rec.watermark, rec.bucket_ms), (3000, 1000));
    assert_eq!(rec.dedup.iter().map(|r| r.ids.len()).sum::<usize>(), 6);
}

/// Asserts that two folds give the same state (all but the bytes read).
fn assert_same_state(a: &Recovered, b: &Recovered) {
    assert_eq!((a.cut, a.bucket_ms, a.watermark, &a.offsets), (b.cut, b.bucket_ms, b.watermark, &b.offsets));
    assert_eq!(a.users, b.users, "users at cut {}", a.cut);
    assert_eq!(a.dedup, b.dedup, "dedup ids at cut {}", a.cut);
}

/// The cuts of `table`'s rows of version g-v1 (a full scan; small test tables only).
async fn cuts(session: &Session, ks: &str, table: &str) -> Vec<i64> {
    let rows = session
        .query_unpaged(format!("SELECT group_id, cut FROM {ks}.{table}"), ())
        .await
        .expect("scan")
        .into_rows_result()
        .expect("rows");
    let mut cuts: Vec<i64> = rows
        .rows::<(String, i64)>()
        .expect("typed")
        .map(|r| r.expect("row"))
        .filter(|r| r.0 == "g-v1")
        .map(|r| r.1)
        .collect();
    cuts.sort();
    cuts
}

/// The cuts of every row, mark and ids row of g-v1: (groups, ids, marks).
async fn all_cuts(session: &Session, ks: &str) -> (Vec<i64>, Vec<i64>, Vec<i64>) {
    (
        cuts(session, ks, "checkpoint_groups").await,
        cuts(session, ks, "checkpoint_ids").await,
        cuts(session, ks, "checkpoint_marks").await,
    )
}

/// The rows of key group `kg`: (cut, writer, users).
async fn group_rows(session: &Session, ks: &str, kg: u32) -> Vec<(i64, i32, Vec<u8>)> {
    session
        .query_unpaged(
            format!("SELECT cut, writer, users FROM {ks}.checkpoint_groups WHERE group_id = ? AND key_group = ?"),
            ("g-v1", kg as i32),
        )
        .await
        .expect("select")
        .into_rows_result()
        .expect("rows")
        .rows::<(i64, i32, Vec<u8>)>()
        .expect("typed")
        .map(|r| r.expect("row"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_folds_as_recovery_does_and_deletes_nothing() {
    let (session, ks) = keyspace().await;
    let mut active = open(&session, &ks).await;
    let mut standby = open(&session, &ks).await;
    assert!(off(|| standby.read(&all())).unwrap().is_none());
    off(|| three_cuts_and_a_part(&mut active));
    let written = all_cuts(&session, &ks).await;
    assert!(written.0.contains(&4) && written.1.contains(&4) && written.2.contains(&4), "{written:?}");
    let read = off(|| standby.read(&all())).unwrap().unwrap();
    check_cut_3(&read);
    assert_eq!(all_cuts(&session, &ks).await, written, "a read deletes nothing");
    // Recovery (of a fresh handle, as after a restart) returns the same, and does delete.
    let mut recovering = open(&session, &ks).await;
    let recovered = off(|| recovering.recover(&all())).unwrap().unwrap();
    assert_same_state(&read, &recovered);
    assert_eq!(read.bytes_read, recovered.bytes_read);
    let (groups, ids, marks) = all_cuts(&session, &ks).await;
    assert!(groups.iter().chain(&ids).chain(&marks).all(|c| *c <= 3), "recovery deleted cut 4");

    // A compaction seen half done reads as before it: the crowd's key group is rebased at cut 6
    // (its base written, the rows it folds deleted), then those rows are put back, as if the
    // compactor had not deleted them yet.
    let (crowd, target) = crowd(2000);
    let before = off(|| {
        recovering.write_parts(&[crowd_part(5, &crowd, 5), part(5, 1, &[("d", 5)], 5)]).unwrap();
        recovering.write_parts(&[crowd_part(6, &crowd[..1500], 6), part(6, 1, &[], 6)]).unwrap();
        standby.read(&all()).unwrap().unwrap()
    });
    assert_eq!((before.cut, &before.users[&crowd[0]], &before.users[&crowd[1999]]), (6, &snapshot(6), &snapshot(5)));
    let folded = group_rows(&session, &ks, target).await;
    assert_eq!(folded.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>(), vec![(5, 0), (6, 0)]);
    assert_eq!(off(|| recovering.compact(1_000_000)).unwrap().map(|c| c.0), Some(6));
    assert_eq!(group_rows(&session, &ks, target).await.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>(), vec![(6, -1)]);
    let insert =
        format!("INSERT INTO {ks}.checkpoint_groups (group_id, key_group, cut, writer, users) VALUES (?, ?, ?, ?, ?)");
    for (cut, writer, users) in folded {
        session.query_unpaged(insert.as_str(), ("g-v1", target as i32, cut, writer, users)).await.expect("put back");
    }
    let half_done = off(|| standby.read(&all())).unwrap().unwrap();
    assert_same_state(&before, &half_done);
}

/// What a read would see had it read the marks just before a cut completed and the key groups
/// after a compaction at that cut: a base beyond the cut it folds at, and the rows that base
/// folded gone. It must not fold what is left; it reads again, and fails if that keeps happening.
#[tokio::test(flavor = "multi_thread")]
async fn a_read_that_finds_a_base_beyond_its_cut_fails_rather_than_fold_without_it() {
    let (session, ks) = keyspace().await;
    let mut active = open(&session, &ks).await;
    let (crowd, target) = crowd(2000);
    off(|| {
        active.write_parts(&[part(1, 0, &[("a", 1)], 1), part(1, 1, &[("b", 1)], 1)]).unwrap();
        active.write_parts(&[crowd_part(2, &crowd, 2), part(2, 1, &[], 2)]).unwrap();
        active.write_parts(&[crowd_part(3, &crowd[..1500], 3), part(3, 1, &[], 3)]).unwrap();
        // A compactor that keeps the marks (not process 0), so that cut 2's stay.
        active.recover(&RecoveryScope { tidy: false, ..all() }).unwrap();
        assert_eq!(active.compact(1_000_000).unwrap().map(|c| c.0), Some(3));
    });
    assert_eq!(group_rows(&session, &ks, target).await.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>(), vec![(3, -1)]);
    for worker in 0..2 {
        session
            .query_unpaged(
                format!("DELETE FROM {ks}.checkpoint_marks WHERE group_id = ? AND cut = ? AND worker = ?"),
                ("g-v1", 3_i64, worker),
            )
            .await
            .expect("delete a mark");
    }
    let mut standby = open(&session, &ks).await;
    assert_eq!(off(|| standby.latest_complete()).unwrap(), Some(2));
    match off(|| standby.read(&all())) {
        Err(CheckpointError::Compacted { what }) => assert!(what.contains(&format!("key group {target}")), "{what}"),
        Ok(rec) => panic!(
            "read a state without the crowd's rows: {:?} users at cut {:?}",
            rec.as_ref().map(|r| r.users.len()),
            rec.map(|r| r.cut)
        ),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_latest_complete_cut_is_the_newest_with_every_mark() {
    let (session, ks) = keyspace().await;
    let mut store = open(&session, &ks).await;
    off(|| {
        assert_eq!(store.latest_complete().unwrap(), None);
        store.write_part(&part(1, 0, &[("a", 1)], 1)).unwrap();
        assert_eq!(store.latest_complete().unwrap(), None);
        three_cuts_and_a_part(&mut store);
        assert_eq!(store.latest_complete().unwrap(), Some(3));
        store.write_part(&part(4, 1, &[], 4)).unwrap();
        assert_eq!(store.latest_complete().unwrap(), Some(4));
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resume_deletes_what_lies_beyond_its_cut_and_writing_and_compaction_go_on() {
    let (session, ks) = keyspace().await;
    let mut active = open(&session, &ks).await;
    let mut standby = open(&session, &ks).await;
    off(|| three_cuts_and_a_part(&mut active));
    let held = off(|| standby.read(&all())).unwrap().unwrap();
    // Process 1 of 2 deletes the beyond rows of the key groups it compacts, and no marks.
    let mut other = open(&session, &ks).await;
    let second = RecoveryScope { local: 1..2, tidy: false, ..all() };
    off(|| other.resume(&second, 3)).unwrap();
    assert_eq!(all_cuts(&session, &ks).await.2, vec![1, 1, 2, 2, 3, 3, 4], "the mark of cut 4 stays");

    off(|| standby.resume(&all(), 3)).unwrap();
    let (groups, ids, marks) = all_cuts(&session, &ks).await;
    assert!(groups.iter().chain(&ids).chain(&marks).all(|c| *c <= 3), "cut 4 is gone: {groups:?} {ids:?} {marks:?}");
    let mut fresh = open(&session, &ks).await;
    let after = off(|| fresh.recover(&all())).unwrap().unwrap();
    check_cut_3(&after);
    assert!(!after.users.contains_key("ghost"));
    assert_same_state(&held, &after);

    // The writer goes on from cut 3: cuts 4 and 5 fold onto it, with a crowd in one key group
    // that has changed enough to be rebased at the first compaction.
    let (crowd, target) = crowd(2000);
    off(|| {
        standby.write_parts(&[crowd_part(4, &crowd, 4), part(4, 1, &[("c", 40)], 4)]).unwrap();
        let mut gone = part(5, 1, &[("d", 50)], 5);
        gone.expired = vec!["c".into()];
        standby.write_parts(&[crowd_part(5, &crowd[..1500], 5), gone]).unwrap();
    });
    let mut fresh = open(&session, &ks).await;
    let before = off(|| fresh.recover(&all())).unwrap().unwrap();
    assert_eq!(before.cut, 5);
    assert_eq!(before.users.len(), 2 + crowd.len(), "a, d and the crowd");
    assert_eq!((&before.users["a"], &before.users["d"]), (&snapshot(3), &snapshot(50)));
    assert_eq!((&before.users[&crowd[0]], &before.users[&crowd[1999]]), (&snapshot(5), &snapshot(4)));
    assert_eq!(before.offsets.values().copied().collect::<Vec<_>>(), vec![5, 5]);
    // A compaction after the resume rebuilds what it needs from the rows: the crowd's key group
    // is rebased into one base, and the state is kept exactly.
    let (cut, removed) = off(|| standby.compact(3000)).unwrap().expect("compacted");
    assert_eq!(cut, 5);
    assert!(removed > 0);
    let crowd_rows = group_rows(&session, &ks, target).await;
    assert_eq!(crowd_rows.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>(), vec![(5, -1)], "one base at cut 5");
    let mut fresh = open(&session, &ks).await;
    let compacted = off(|| fresh.recover(&all())).unwrap().unwrap();
    assert_eq!((&compacted.users, compacted.cut), (&before.users, before.cut));
    assert!(compacted.dedup.iter().all(|r| r.bucket >= 2), "buckets older than 5 s - 3 s are gone");
    assert_eq!(compacted.dedup, before.dedup.into_iter().filter(|r| r.bucket >= 2).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resume_from_a_cut_that_is_not_the_latest_complete_one_changes_nothing() {
    let (session, ks) = keyspace().await;
    let mut store = open(&session, &ks).await;
    assert!(matches!(off(|| store.resume(&all(), 1)), Err(CheckpointError::NotLatest { cut: 1, latest: None })));
    off(|| three_cuts_and_a_part(&mut store));
    let written = all_cuts(&session, &ks).await;
    for cut in [2, 4] {
        match off(|| store.resume(&all(), cut)) {
            Err(CheckpointError::NotLatest { cut: c, latest: Some(3) }) if c == cut => {}
            other => panic!("resume at {cut}: {other:?}"),
        }
    }
    assert_eq!(all_cuts(&session, &ks).await, written, "nothing was deleted");
    let mut fresh = open(&session, &ks).await;
    check_cut_3(&off(|| fresh.recover(&all())).unwrap().unwrap());
}

/// A standby's reads while the active process writes and compacts at every cut (rebasing a
/// crowd's key group each time, and expiring a dedup bucket every fourth cut) return the state at
/// the cut they report, or an error (compacted under them too often), never another state.
#[tokio::test(flavor = "multi_thread")]
async fn a_read_beside_a_writer_and_a_compactor_gives_the_state_at_its_cut() {
    const CUTS: u64 = 60;
    let (session, ks) = keyspace().await;
    let mut active = open(&session, &ks).await;
    let mut standby = open(&session, &ks).await;
    let (crowd, _) = crowd(1500);
    let user = |cut: u64| format!("w{}", cut % 5);
    // A quarter of a second of event time per cut: a bucket (1 s) expires every fourth cut.
    let bucket = |cut: u64| (cut as i64 * 250).div_euclid(1000);
    let paced = |mut p: Part| {
        p.watermark = p.cut as i64 * 250;
        p.dedup[0].bucket = bucket(p.cut);
        p
    };
    let parts = |cut: u64| {
        [crowd_part(cut, &crowd, cut as usize), part(cut, 1, &[(user(cut).as_str(), cut as usize)], 0)].map(paced)
    };
    // At cut c: the crowd at c, each w-user at its newest write, the ids of the live buckets
    // (those of the 8 s behind the watermark).
    let expected = |cut: u64| {
        let mut users: HashMap<String, UserSnapshot> =
            crowd.iter().map(|u| (u.clone(), snapshot(cut as usize))).collect();
        let mut ids = Vec::new();
        for c in 1..=cut {
            users.insert(user(c), snapshot(c as usize));
            if bucket(c) >= (cut as i64 * 250 - 8000).div_euclid(1000) {
                ids.extend([id(c * 10), id(c * 10 + 1)]);
            }
        }
        ids.sort_by_key(|i| (i.hi, i.lo));
        (users, ids)
    };
    let done = AtomicBool::new(false);
    let (checked, gave_up) = off(|| {
        std::thread::scope(|s| {
            s.spawn(|| {
                for cut in 1..=CUTS {
                    active.write_parts(&parts(cut)).unwrap();
                    active.compact(8_000).unwrap();
                }
                done.store(true, Ordering::Release);
            });
            let (mut checked, mut gave_up) = (0, 0);
            while !done.load(Ordering::Acquire) {
                match standby.read(&all()) {
                    Ok(Some(rec)) => {
                        let mut ids: Vec<Fingerprint> = rec.dedup.iter().flat_map(|r| r.ids.clone()).collect();
                        ids.sort_by_key(|i| (i.hi, i.lo));
                        assert!(
                            (rec.users.clone(), ids) == expected(rec.cut),
                            "the state read at cut {} is not its state",
                            rec.cut
                        );
                        checked += 1;
                    }
                    Ok(None) => {}
                    Err(CheckpointError::Compacted { .. }) => gave_up += 1,
                    Err(e) => panic!("{e}"),
                }
            }
            (checked, gave_up)
        })
    });
    println!("{checked} reads checked, {gave_up} gave up");
    assert!(checked > 0, "no read completed ({gave_up} gave up)");
    let last = off(|| standby.read(&all())).unwrap().unwrap();
    assert_eq!(last.cut, CUTS);
}
