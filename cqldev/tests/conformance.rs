//! Conformance of `squall-cql-dev` with Cassandra on every statement shape squall sends, through
//! the unmodified scylla 1.9 driver against the real binary.
//!
//! Each test is named after the Cassandra behaviour it checks, and asserts the answer the CQL
//! reference gives. Where the dev server cannot answer as Cassandra does, the test asserts that
//! it refuses loudly (an error reply, never a different answer). The statements are copied from
//! squall's sources (named beside each constant): change them together.

mod support;

use std::collections::HashMap;

use futures::TryStreamExt;
use scylla::{
    client::session::Session,
    errors::DbError,
    response::{PagingState, PagingStateResponse},
    statement::{Statement, batch::Batch, prepared::PreparedStatement},
    value::MaybeUnset,
};
use support::{DevServer, db_error};

// feeds/src/profile.rs: a version's profile table (one column per attribute, all types squall
// writes) and its prepared insert.
const PROFILE_DDL: &str = "CREATE TABLE IF NOT EXISTS ks.attributes_t_v1 (user_id text PRIMARY KEY, cut bigint, \
    written_at_ms bigint, events bigint, events_hash bigint, max_ms_5d bigint, skip_ratio double, last_genre text, \
    plays_by_genre map<text, bigint>, share_by_genre map<text, double>, top_artists list<text>)";
const PROFILE_INSERT: &str = "INSERT INTO ks.attributes_t_v1 (user_id, cut, written_at_ms, events, events_hash, \
    max_ms_5d, skip_ratio, last_genre, plays_by_genre, share_by_genre, top_artists) \
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
const PROFILE_SELECT: &str = "SELECT cut, events, max_ms_5d, skip_ratio, last_genre, plays_by_genre, share_by_genre, \
    top_artists FROM ks.attributes_t_v1 WHERE user_id = ?";
// feeds/src/profile.rs: promotions.
const PROMOTED_DDL: &str = "CREATE TABLE IF NOT EXISTS ks.promoted_versions (topology text PRIMARY KEY, \
    group_id text, version int, table_name text, promoted_at_ms bigint)";
const PROMOTED_INSERT: &str = "INSERT INTO ks.promoted_versions (topology, group_id, version, table_name, \
    promoted_at_ms) VALUES (?, ?, ?, ?, ?)";
// feeds/src/progress.rs
const PROGRESS_DDL: &str = "CREATE TABLE IF NOT EXISTS ks.feed_progress (group_id text, feed text, cut bigint, \
    written_at_ms bigint, PRIMARY KEY ((group_id, feed)))";
const PROGRESS_READ: &str = "SELECT cut FROM ks.feed_progress WHERE group_id = ? AND feed = ?";
const PROGRESS_SAVE: &str = "INSERT INTO ks.feed_progress (group_id, feed, cut, written_at_ms) VALUES (?, ?, ?, ?)";
// feeds/src/progress.rs, operators/src/checkpoint_cql.rs: look before creating.
const TABLES_IN_KEYSPACE: &str = "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ?";
// operators/src/checkpoint_cql.rs
const MARKS_DDL: &str = "CREATE TABLE IF NOT EXISTS ks.checkpoint_marks (group_id text, cut bigint, worker int, \
    peers int, key_groups int, bucket_ms bigint, watermark bigint, offsets blob, PRIMARY KEY (group_id, cut, worker))";
const GROUPS_DDL: &str = "CREATE TABLE IF NOT EXISTS ks.checkpoint_groups (group_id text, key_group int, cut bigint, \
    writer int, users blob, PRIMARY KEY ((group_id, key_group), cut, writer))";
const IDS_DDL: &str = "CREATE TABLE IF NOT EXISTS ks.checkpoint_ids (group_id text, key_group int, bucket bigint, \
    cut bigint, writer int, ids blob, PRIMARY KEY ((group_id, key_group), bucket, cut, writer))";
const INSERT_MARK: &str = "INSERT INTO ks.checkpoint_marks (group_id, cut, worker, peers, key_groups, bucket_ms, \
    watermark, offsets) VALUES (?, ?, ?, ?, ?, ?, ?, ?)";
const SELECT_MARKS: &str = "SELECT cut, worker, peers, key_groups, bucket_ms, watermark, offsets \
    FROM ks.checkpoint_marks WHERE group_id = ?";
const DELETE_MARK: &str = "DELETE FROM ks.checkpoint_marks WHERE group_id = ? AND cut = ? AND worker = ?";
const INSERT_GROUP: &str =
    "INSERT INTO ks.checkpoint_groups (group_id, key_group, cut, writer, users) VALUES (?, ?, ?, ?, ?)";
const SELECT_GROUP: &str = "SELECT cut, writer, users FROM ks.checkpoint_groups WHERE group_id = ? AND key_group = ?";
const DELETE_GROUP_ROW: &str =
    "DELETE FROM ks.checkpoint_groups WHERE group_id = ? AND key_group = ? AND cut = ? AND writer = ?";
const INSERT_IDS: &str =
    "INSERT INTO ks.checkpoint_ids (group_id, key_group, bucket, cut, writer, ids) VALUES (?, ?, ?, ?, ?, ?)";
const SELECT_IDS: &str = "SELECT bucket, cut, writer, ids FROM ks.checkpoint_ids WHERE group_id = ? AND key_group = ?";
/// The keys only (a standby taking over finds the rows beyond its cut without reading blobs).
const SELECT_GROUP_KEYS: &str = "SELECT cut, writer FROM ks.checkpoint_groups WHERE group_id = ? AND key_group = ?";
const SELECT_IDS_KEYS: &str = "SELECT bucket, cut, writer FROM ks.checkpoint_ids WHERE group_id = ? AND key_group = ?";
const DELETE_IDS_ROW: &str = "DELETE FROM ks.checkpoint_ids WHERE group_id = ? AND key_group = ? AND bucket = ? \
    AND cut = ? AND writer = ?";
// enrichment/src/catalogue.rs
const CATALOGUE_KEYSPACE: &str =
    "CREATE KEYSPACE IF NOT EXISTS ks WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}";
const TRACKS_DDL: &str =
    "CREATE TABLE IF NOT EXISTS ks.tracks (track_id text PRIMARY KEY, genre text, artist_id text, duration_ms int)";
const ADS_DDL: &str = "CREATE TABLE IF NOT EXISTS ks.ads (ad_id text PRIMARY KEY, advertiser_id text, category text)";
const INSERT_TRACK: &str = "INSERT INTO ks.tracks (track_id, genre, artist_id, duration_ms) VALUES (?, ?, ?, ?)";
const SELECT_TRACK: &str = "SELECT genre, artist_id, duration_ms FROM ks.tracks WHERE track_id = ?";
const SCAN_TRACKS: &str = "SELECT track_id, genre, artist_id, duration_ms FROM ks.tracks";
const INSERT_AD: &str = "INSERT INTO ks.ads (ad_id, advertiser_id, category) VALUES (?, ?, ?)";
const SCAN_ADS: &str = "SELECT ad_id, advertiser_id, category FROM ks.ads";

/// A profile row as squall writes it.
type ProfileValues = (
    &'static str,
    i64,
    i64,
    i64,
    i64,
    Option<i64>,
    Option<f64>,
    Option<&'static str>,
    Option<HashMap<String, i64>>,
    Option<HashMap<String, f64>>,
    Option<Vec<String>>,
);
/// A profile row as read back (without the key and bookkeeping columns but `cut` and `events`).
type ProfileRow = (
    i64,
    i64,
    Option<i64>,
    Option<f64>,
    Option<String>,
    Option<HashMap<String, i64>>,
    Option<HashMap<String, f64>>,
    Option<Vec<String>>,
);

/// A fresh server with squall's whole schema in keyspace `ks`, created as squall creates it.
async fn squall_schema() -> (DevServer, Session) {
    let server = DevServer::start();
    let session = server.session().await;
    for ddl in [
        CATALOGUE_KEYSPACE,
        TRACKS_DDL,
        ADS_DDL,
        PROFILE_DDL,
        PROMOTED_DDL,
        PROGRESS_DDL,
        MARKS_DDL,
        GROUPS_DDL,
        IDS_DDL,
    ] {
        session.query_unpaged(ddl, ()).await.unwrap_or_else(|e| panic!("{ddl}: {e}"));
    }
    (server, session)
}

async fn prepare(session: &Session, text: &str) -> PreparedStatement {
    session.prepare(text).await.unwrap_or_else(|e| panic!("prepare {text}: {e}"))
}

async fn profile(session: &Session, user: &str) -> Option<ProfileRow> {
    let select = prepare(session, PROFILE_SELECT).await;
    let rows = session.execute_unpaged(&select, (user,)).await.unwrap().into_rows_result().unwrap();
    rows.maybe_first_row::<ProfileRow>().unwrap()
}

fn full_profile(user: &'static str, cut: i64) -> ProfileValues {
    (
        user,
        cut,
        1_700_000_000_000,
        10,
        -7,
        Some(215_000),
        Some(0.25),
        Some("jazz"),
        Some(HashMap::from([("jazz".into(), 3), ("rock".into(), 1)])),
        Some(HashMap::from([("jazz".into(), 0.75), ("rock".into(), 0.25)])),
        Some(vec!["a1".into(), "a2".into()]),
    )
}

/// The error of a statement the dev server must refuse, with its message.
fn refused<T: std::fmt::Debug, E: std::fmt::Display>(what: &str, result: Result<T, E>) -> String {
    match result {
        Ok(answer) => panic!("{what}: the dev server answered {answer:?} instead of refusing"),
        Err(error) => error.to_string(),
    }
}

#[tokio::test]
async fn a_bound_null_overwrites_the_old_value() {
    let (_server, session) = squall_schema().await;
    let insert = prepare(&session, PROFILE_INSERT).await;
    session.execute_unpaged(&insert, full_profile("u1", 1)).await.unwrap();
    // The windowed attribute fell out of its window: squall binds null for every attribute.
    let nulls: ProfileValues = ("u1", 2, 1_700_000_000_001, 11, 5, None, None, None, None, None, None);
    session.execute_unpaged(&insert, nulls).await.unwrap();
    assert_eq!(profile(&session, "u1").await, Some((2, 11, None, None, None, None, None, None)));
}

#[tokio::test]
async fn a_literal_null_overwrites_the_old_value() {
    let (_server, session) = squall_schema().await;
    let insert = prepare(&session, PROFILE_INSERT).await;
    session.execute_unpaged(&insert, full_profile("u1", 1)).await.unwrap();
    session
        .query_unpaged(
            "INSERT INTO ks.attributes_t_v1 (user_id, cut, max_ms_5d, last_genre, plays_by_genre, top_artists) \
             VALUES ('u1', 3, null, null, null, null)",
            (),
        )
        .await
        .unwrap();
    let (cut, events, max_ms, ratio, genre, plays, share, top) = profile(&session, "u1").await.unwrap();
    assert_eq!((cut, events, max_ms, genre, plays, top), (3, 10, None, None, None, None));
    assert_eq!((ratio, share.map(|s| s.len())), (Some(0.25), Some(2)), "columns not named keep their values");
}

#[tokio::test]
async fn an_unset_value_leaves_the_column_untouched() {
    let (_server, session) = squall_schema().await;
    let insert = prepare(&session, PROFILE_INSERT).await;
    session.execute_unpaged(&insert, full_profile("u1", 1)).await.unwrap();
    let partial = prepare(
        &session,
        "INSERT INTO ks.attributes_t_v1 (user_id, cut, max_ms_5d, skip_ratio, last_genre) VALUES (?, ?, ?, ?, ?)",
    )
    .await;
    let values = ("u1", 4_i64, MaybeUnset::<i64>::Unset, MaybeUnset::Set(None::<f64>), MaybeUnset::<&str>::Unset);
    session.execute_unpaged(&partial, values).await.unwrap();
    let (cut, _, max_ms, ratio, genre, ..) = profile(&session, "u1").await.unwrap();
    assert_eq!((cut, max_ms, ratio, genre.as_deref()), (4, Some(215_000), None, Some("jazz")));
}

#[tokio::test]
async fn an_update_writes_a_bound_null_and_skips_an_unset_value() {
    let (_server, session) = squall_schema().await;
    let insert = prepare(&session, PROFILE_INSERT).await;
    session.execute_unpaged(&insert, full_profile("u1", 1)).await.unwrap();
    let update =
        prepare(&session, "UPDATE ks.attributes_t_v1 SET max_ms_5d = ?, last_genre = ?, cut = ? WHERE user_id = ?")
            .await;
    session.execute_unpaged(&update, (None::<i64>, MaybeUnset::<&str>::Unset, 5_i64, "u1")).await.unwrap();
    let (cut, _, max_ms, _, genre, ..) = profile(&session, "u1").await.unwrap();
    assert_eq!((cut, max_ms, genre.as_deref()), (5, None, Some("jazz")));
}

#[tokio::test]
async fn a_bound_null_in_a_batch_overwrites_the_old_value() {
    let (_server, session) = squall_schema().await;
    let insert = prepare(&session, PROFILE_INSERT).await;
    session.execute_unpaged(&insert, full_profile("u1", 1)).await.unwrap();
    let mut batch = Batch::default();
    batch.append_statement(insert.clone());
    batch.append_statement(insert.clone());
    let nulls: ProfileValues = ("u1", 2, 0, 11, 5, None, None, None, None, None, None);
    session.batch(&batch, (nulls, full_profile("u2", 2))).await.unwrap();
    assert_eq!(profile(&session, "u1").await, Some((2, 11, None, None, None, None, None, None)));
    assert_eq!(profile(&session, "u2").await.unwrap().2, Some(215_000));
}

#[tokio::test]
async fn a_null_or_unset_primary_key_is_refused_as_invalid() {
    let (_server, session) = squall_schema().await;
    let insert_group = prepare(&session, INSERT_GROUP).await;
    let null_key = session.execute_unpaged(&insert_group, ("g", 1, None::<i64>, 0, vec![1u8])).await;
    assert_eq!(db_error(&null_key.unwrap_err()), Some(&DbError::Invalid));
    let unset_key = session.execute_unpaged(&insert_group, ("g", MaybeUnset::<i32>::Unset, 1_i64, 0, vec![1u8])).await;
    assert_eq!(db_error(&unset_key.unwrap_err()), Some(&DbError::Invalid));
    let track = prepare(&session, INSERT_TRACK).await;
    let null_partition = session.execute_unpaged(&track, (None::<&str>, "g", "a", 1)).await;
    assert_eq!(db_error(&null_partition.unwrap_err()), Some(&DbError::Invalid));
    // Nothing was written.
    let select = prepare(&session, SELECT_GROUP).await;
    let rows = session.execute_unpaged(&select, ("g", 1)).await.unwrap().into_rows_result().unwrap();
    assert_eq!(rows.rows_num(), 0);
}

#[tokio::test]
async fn an_insert_is_an_upsert_of_the_named_columns() {
    let (_server, session) = squall_schema().await;
    let insert = prepare(&session, INSERT_TRACK).await;
    let select = prepare(&session, SELECT_TRACK).await;
    session.execute_unpaged(&insert, ("t1", "jazz", "a1", 1)).await.unwrap();
    session.execute_unpaged(&insert, ("t1", "rock", None::<&str>, 2)).await.unwrap();
    let rows = session.execute_unpaged(&select, ("t1",)).await.unwrap().into_rows_result().unwrap();
    let row = rows.single_row::<(Option<String>, Option<String>, Option<i32>)>().unwrap();
    assert_eq!(row, (Some("rock".into()), None, Some(2)));
    let miss = session.execute_unpaged(&select, ("t2",)).await.unwrap().into_rows_result().unwrap();
    assert_eq!(miss.rows_num(), 0, "a missing key is no row, not a row of nulls");
}

#[tokio::test]
async fn maps_and_lists_are_replaced_whole_and_an_empty_one_is_null() {
    let (_server, session) = squall_schema().await;
    let insert = prepare(&session, PROFILE_INSERT).await;
    session.execute_unpaged(&insert, full_profile("u1", 1)).await.unwrap();
    let mut second = full_profile("u1", 2);
    second.8 = Some(HashMap::from([("pop".into(), 9)]));
    second.9 = Some(HashMap::new());
    second.10 = Some(vec!["a3".into()]);
    session.execute_unpaged(&insert, second).await.unwrap();
    let (_, _, _, _, _, plays, share, top) = profile(&session, "u1").await.unwrap();
    assert_eq!(plays, Some(HashMap::from([("pop".into(), 9)])), "replaced, not merged");
    assert_eq!(share, None, "Cassandra stores an empty collection as null");
    assert_eq!(top, Some(vec!["a3".to_owned()]), "replaced, not appended");
    let update = prepare(&session, "UPDATE ks.attributes_t_v1 SET top_artists = ? WHERE user_id = ?").await;
    session.execute_unpaged(&update, (vec!["b1", "b2", "b1"], "u1")).await.unwrap();
    assert_eq!(profile(&session, "u1").await.unwrap().7, Some(vec!["b1".into(), "b2".into(), "b1".into()]));
}

#[tokio::test]
async fn bigint_and_double_edge_values_round_trip_exactly() {
    let (_server, session) = squall_schema().await;
    let insert = prepare(&session, PROFILE_INSERT).await;
    let cases: [(i64, f64); 8] = [
        (i64::MIN, f64::NAN),
        (i64::MAX, f64::INFINITY),
        (-1, f64::NEG_INFINITY),
        (0, -0.0),
        (1, f64::MIN_POSITIVE),
        (i64::MIN + 1, f64::MAX),
        (i64::MAX - 1, f64::MIN),
        (42, 5e-324),
    ];
    for (i, (int, float)) in cases.iter().enumerate() {
        let user: &'static str = ["e0", "e1", "e2", "e3", "e4", "e5", "e6", "e7"][i];
        let mut row = full_profile(user, *int);
        row.4 = *int;
        row.5 = Some(*int);
        row.6 = Some(*float);
        row.9 = Some(HashMap::from([("x".into(), *float)]));
        session.execute_unpaged(&insert, row).await.unwrap();
    }
    for (i, (int, float)) in cases.iter().enumerate() {
        let user = ["e0", "e1", "e2", "e3", "e4", "e5", "e6", "e7"][i];
        let (cut, _, max_ms, ratio, _, _, share, _) = profile(&session, user).await.unwrap();
        assert_eq!((cut, max_ms), (*int, Some(*int)));
        let ratio = ratio.unwrap();
        assert_eq!(ratio.to_bits(), float.to_bits(), "{user}: {ratio} is {float}, bit for bit");
        assert_eq!(share.unwrap()["x"].to_bits(), float.to_bits(), "{user}: in a map too");
    }
}

#[tokio::test]
async fn a_partition_read_returns_its_rows_in_clustering_order() {
    let (_server, session) = squall_schema().await;
    let insert = prepare(&session, INSERT_MARK).await;
    let select = prepare(&session, SELECT_MARKS).await;
    for (cut, worker) in [(5_i64, 1_i32), (i64::MAX, 0), (-3, 0), (5, 0), (i64::MIN, 7), (0, 2)] {
        session.execute_unpaged(&insert, ("g", cut, worker, 2, 64, 60_000_i64, cut, vec![1u8])).await.unwrap();
    }
    session.execute_unpaged(&insert, ("other", 1_i64, 0, 2, 64, 60_000_i64, 0_i64, Vec::<u8>::new())).await.unwrap();
    type Mark = (i64, i32, i32, i32, i64, i64, Vec<u8>);
    let rows = session.execute_unpaged(&select, ("g",)).await.unwrap().into_rows_result().unwrap();
    let keys: Vec<(i64, i32)> =
        rows.rows::<Mark>().unwrap().map(|r| r.map(|m| (m.0, m.1))).collect::<Result<_, _>>().unwrap();
    assert_eq!(keys, [(i64::MIN, 7), (-3, 0), (0, 2), (5, 0), (5, 1), (i64::MAX, 0)]);
}

#[tokio::test]
async fn a_delete_by_full_primary_key_removes_only_that_row() {
    let (_server, session) = squall_schema().await;
    let insert_mark = prepare(&session, INSERT_MARK).await;
    let insert_group = prepare(&session, INSERT_GROUP).await;
    let insert_ids = prepare(&session, INSERT_IDS).await;
    for cut in [1_i64, 2] {
        for writer in [-1_i32, 0] {
            session.execute_unpaged(&insert_mark, ("g", cut, writer, 1, 4, 1_i64, 0_i64, vec![9u8])).await.unwrap();
            session.execute_unpaged(&insert_group, ("g", 3, cut, writer, vec![cut as u8])).await.unwrap();
            session.execute_unpaged(&insert_ids, ("g", 3, 100_i64, cut, writer, vec![0u8])).await.unwrap();
        }
    }
    let delete_mark = prepare(&session, DELETE_MARK).await;
    let delete_group_row = prepare(&session, DELETE_GROUP_ROW).await;
    let delete_ids_row = prepare(&session, DELETE_IDS_ROW).await;
    session.execute_unpaged(&delete_mark, ("g", 1_i64, -1_i32)).await.unwrap();
    session.execute_unpaged(&delete_group_row, ("g", 3, 1_i64, -1_i32)).await.unwrap();
    session.execute_unpaged(&delete_ids_row, ("g", 3, 100_i64, 1_i64, -1_i32)).await.unwrap();
    // Deleting a row that does not exist is no error.
    session.execute_unpaged(&delete_group_row, ("g", 3, 9_i64, 9_i32)).await.unwrap();

    let select_marks = prepare(&session, SELECT_MARKS).await;
    let marks = session.execute_unpaged(&select_marks, ("g",)).await.unwrap().into_rows_result().unwrap();
    let marks: Vec<(i64, i32)> = marks
        .rows::<(i64, i32, i32, i32, i64, i64, Vec<u8>)>()
        .unwrap()
        .map(|r| r.map(|m| (m.0, m.1)))
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(marks, [(1, 0), (2, -1), (2, 0)]);
    let select_group = prepare(&session, SELECT_GROUP).await;
    let group = session.execute_unpaged(&select_group, ("g", 3)).await.unwrap().into_rows_result().unwrap();
    let group: Vec<(i64, i32, Vec<u8>)> = group.rows().unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(group, [(1, 0, vec![1]), (2, -1, vec![2]), (2, 0, vec![2])]);
    let select_ids = prepare(&session, SELECT_IDS).await;
    let ids = session.execute_unpaged(&select_ids, ("g", 3)).await.unwrap().into_rows_result().unwrap();
    let ids: Vec<(i64, i64, i32, Vec<u8>)> = ids.rows().unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(ids.iter().map(|r| (r.1, r.2)).collect::<Vec<_>>(), [(1, 0), (2, -1), (2, 0)]);
    let keys = prepare(&session, SELECT_GROUP_KEYS).await;
    let keys = session.execute_unpaged(&keys, ("g", 3)).await.unwrap().into_rows_result().unwrap();
    let keys: Vec<(i64, i32)> = keys.rows().unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(keys, [(1, 0), (2, -1), (2, 0)]);
    let keys = prepare(&session, SELECT_IDS_KEYS).await;
    let keys = session.execute_unpaged(&keys, ("g", 3)).await.unwrap().into_rows_result().unwrap();
    let keys: Vec<(i64, i64, i32)> = keys.rows().unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(keys.iter().map(|r| (r.1, r.2)).collect::<Vec<_>>(), [(1, 0), (2, -1), (2, 0)]);
}

#[tokio::test]
async fn a_delete_by_partition_key_removes_the_whole_partition() {
    let (_server, session) = squall_schema().await;
    let insert_group = prepare(&session, INSERT_GROUP).await;
    for (key_group, cut) in [(1, 1_i64), (1, 2), (2, 1)] {
        session.execute_unpaged(&insert_group, ("g", key_group, cut, 0, vec![1u8])).await.unwrap();
    }
    let delete = prepare(&session, "DELETE FROM ks.checkpoint_groups WHERE group_id = ? AND key_group = ?").await;
    session.execute_unpaged(&delete, ("g", 1)).await.unwrap();
    let select = prepare(&session, SELECT_GROUP).await;
    let gone = session.execute_unpaged(&select, ("g", 1)).await.unwrap().into_rows_result().unwrap();
    assert_eq!(gone.rows_num(), 0);
    let kept = session.execute_unpaged(&select, ("g", 2)).await.unwrap().into_rows_result().unwrap();
    assert_eq!(kept.rows_num(), 1, "other partitions stay");
    let track = prepare(&session, INSERT_TRACK).await;
    session.execute_unpaged(&track, ("t1", "g", "a", 1)).await.unwrap();
    session.query_unpaged("DELETE FROM ks.tracks WHERE track_id = 't1'", ()).await.unwrap();
    let rows = session.query_unpaged(SCAN_TRACKS, ()).await.unwrap().into_rows_result().unwrap();
    assert_eq!(rows.rows_num(), 0);
}

#[tokio::test]
async fn a_delete_of_a_column_makes_it_null() {
    let (_server, session) = squall_schema().await;
    let insert = prepare(&session, PROFILE_INSERT).await;
    session.execute_unpaged(&insert, full_profile("u1", 1)).await.unwrap();
    session
        .query_unpaged("DELETE max_ms_5d, top_artists FROM ks.attributes_t_v1 WHERE user_id = 'u1'", ())
        .await
        .unwrap();
    let (_, _, max_ms, _, genre, _, _, top) = profile(&session, "u1").await.unwrap();
    assert_eq!((max_ms, genre.as_deref(), top), (None, Some("jazz"), None));
}

#[tokio::test]
async fn full_scans_page_through_every_row_exactly_once() {
    const TRACKS: usize = 103;
    const ADS: usize = 20;
    let (_server, session) = squall_schema().await;
    let insert_track = prepare(&session, INSERT_TRACK).await;
    let insert_ad = prepare(&session, INSERT_AD).await;
    for i in 0..TRACKS {
        let artist = if i.is_multiple_of(5) { None } else { Some(format!("a{i}")) };
        session.execute_unpaged(&insert_track, (format!("t{i}"), "g", artist, i as i32)).await.unwrap();
    }
    for i in 0..ADS {
        session.execute_unpaged(&insert_ad, (format!("ad{i}"), "adv", "music")).await.unwrap();
    }
    // As the catalogue scans: prepared, a small page size, every page through the pager.
    let mut scan = prepare(&session, SCAN_TRACKS).await;
    scan.set_page_size(7);
    let (first, state) = session.execute_single_page(&scan, (), PagingState::start()).await.unwrap();
    assert_eq!(first.into_rows_result().unwrap().rows_num(), 7, "one page of the requested size");
    assert!(matches!(state, PagingStateResponse::HasMorePages { .. }), "and the paging state to go on");
    type Track = (String, Option<String>, Option<String>, Option<i32>);
    let rows: Vec<Track> =
        session.execute_iter(scan, ()).await.unwrap().rows_stream::<Track>().unwrap().try_collect().await.unwrap();
    assert_eq!(rows.len(), TRACKS);
    let mut ids: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), TRACKS, "no row twice");
    for (id, _, artist, duration) in &rows {
        let i: usize = id[1..].parse().unwrap();
        assert_eq!((artist.is_none(), *duration), (i.is_multiple_of(5), Some(i as i32)), "{id}");
    }
    let mut scan_ads = prepare(&session, SCAN_ADS).await;
    scan_ads.set_page_size(ADS as i32); // a page that ends exactly at the last row
    type Ad = (String, String, String);
    let ads: Vec<Ad> =
        session.execute_iter(scan_ads, ()).await.unwrap().rows_stream::<Ad>().unwrap().try_collect().await.unwrap();
    assert_eq!(ads.len(), ADS);
    // Unpaged: every row in one answer.
    let all = session.query_unpaged(SCAN_TRACKS, ()).await.unwrap().into_rows_result().unwrap();
    assert_eq!(all.rows_num(), TRACKS);
}

#[tokio::test]
async fn create_if_not_exists_keeps_an_existing_table_and_its_rows() {
    let (_server, session) = squall_schema().await;
    let save = prepare(&session, PROGRESS_SAVE).await;
    session.execute_unpaged(&save, ("g", "profile", 7_i64, 1_i64)).await.unwrap();
    // Again, as every squall process does at start (and with another schema: still a no-op).
    session.query_unpaged(CATALOGUE_KEYSPACE, ()).await.unwrap();
    session.query_unpaged(PROGRESS_DDL, ()).await.unwrap();
    session
        .query_unpaged("CREATE TABLE IF NOT EXISTS ks.feed_progress (group_id text PRIMARY KEY, other int)", ())
        .await
        .unwrap();
    let read = session.query_unpaged(PROGRESS_READ, ("g", "profile")).await.unwrap().into_rows_result().unwrap();
    assert_eq!(read.maybe_first_row::<(Option<i64>,)>().unwrap(), Some((Some(7),)));
    // Without IF NOT EXISTS an existing table is an error.
    let again = session.query_unpaged(PROGRESS_DDL.replace(" IF NOT EXISTS", ""), ()).await;
    assert!(
        matches!(db_error(&again.unwrap_err()), Some(DbError::AlreadyExists { .. })),
        "CREATE TABLE of an existing table is AlreadyExists"
    );
    let tables = session.query_unpaged(TABLES_IN_KEYSPACE, ("ks",)).await.unwrap().into_rows_result().unwrap();
    let mut names: Vec<String> = tables.rows::<(String,)>().unwrap().map(|r| r.unwrap().0).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "ads",
            "attributes_t_v1",
            "checkpoint_groups",
            "checkpoint_ids",
            "checkpoint_marks",
            "feed_progress",
            "promoted_versions",
            "tracks"
        ]
    );
    let none = session.query_unpaged(TABLES_IN_KEYSPACE, ("nope",)).await.unwrap().into_rows_result().unwrap();
    assert_eq!(none.rows_num(), 0);
}

#[tokio::test]
async fn progress_and_promotions_read_back_the_last_write() {
    let (_server, session) = squall_schema().await;
    // feeds/src/progress.rs and profile.rs send these through query_unpaged with values.
    let missing = session.query_unpaged(PROGRESS_READ, ("g", "profile")).await.unwrap().into_rows_result().unwrap();
    assert_eq!(missing.rows_num(), 0);
    let save = prepare(&session, PROGRESS_SAVE).await;
    session.execute_unpaged(&save, ("g", "profile", 7_i64, 1_i64)).await.unwrap();
    session.execute_unpaged(&save, ("g", "profile", 9_i64, 2_i64)).await.unwrap();
    session.execute_unpaged(&save, ("g", "changelog@0/2", 3_i64, 2_i64)).await.unwrap();
    let read = session.query_unpaged(PROGRESS_READ, ("g", "profile")).await.unwrap().into_rows_result().unwrap();
    assert_eq!(read.single_row::<(Option<i64>,)>().unwrap(), (Some(9),));

    for version in [1, 2] {
        let values = ("personalization", format!("g-v{version}"), version, format!("attributes_p_v{version}"), 5_i64);
        session.query_unpaged(PROMOTED_INSERT, values).await.unwrap();
    }
    let promoted = session
        .query_unpaged(
            "SELECT group_id, version, table_name FROM ks.promoted_versions WHERE topology = ?",
            ("personalization",),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    assert_eq!(promoted.single_row::<(String, i32, String)>().unwrap(), ("g-v2".into(), 2, "attributes_p_v2".into()));
}

#[tokio::test]
async fn lightweight_transactions_are_refused_not_ignored() {
    let (_server, session) = squall_schema().await;
    for statement in [
        "INSERT INTO ks.tracks (track_id, genre) VALUES ('t1', 'g') IF NOT EXISTS",
        "UPDATE ks.tracks SET genre = 'x' WHERE track_id = 't1' IF genre = 'g'",
        "UPDATE ks.tracks SET genre = 'x' WHERE track_id = 't1' IF EXISTS",
        "DELETE FROM ks.tracks WHERE track_id = 't1' IF EXISTS",
    ] {
        let error = session.query_unpaged(statement, ()).await.unwrap_err();
        assert_eq!(db_error(&error), Some(&DbError::Invalid), "{statement}: {error}");
        assert!(error.to_string().contains("lightweight transactions"), "{error}");
        assert!(session.prepare(statement).await.is_err(), "{statement} must not prepare either");
    }
    let rows = session.query_unpaged(SCAN_TRACKS, ()).await.unwrap().into_rows_result().unwrap();
    assert_eq!(rows.rows_num(), 0, "nothing was written");
}

#[tokio::test]
async fn using_ttl_and_timestamp_are_refused_not_ignored() {
    let (_server, session) = squall_schema().await;
    for statement in [
        "INSERT INTO ks.tracks (track_id, genre) VALUES ('t1', 'g') USING TTL 10",
        "INSERT INTO ks.tracks (track_id, genre) VALUES (?, ?) USING TIMESTAMP 10",
        "UPDATE ks.tracks USING TTL 10 SET genre = 'x' WHERE track_id = 't1'",
        "DELETE FROM ks.tracks USING TIMESTAMP 10 WHERE track_id = 't1'",
    ] {
        let error = session.query_unpaged(statement, ()).await.unwrap_err();
        assert_eq!(db_error(&error), Some(&DbError::Invalid), "{statement}: {error}");
        assert!(error.to_string().contains("USING TTL/TIMESTAMP"), "{error}");
    }
    // A client-side timestamp (the protocol's default timestamp) is refused the same way.
    let insert = prepare(&session, INSERT_TRACK).await;
    let mut stamped = insert.clone();
    stamped.set_timestamp(Some(1));
    let error = session.execute_unpaged(&stamped, ("t1", "g", "a", 1)).await.unwrap_err();
    assert_eq!(db_error(&error), Some(&DbError::Invalid), "{error}");
    let mut stamped = Statement::new("INSERT INTO ks.tracks (track_id) VALUES ('t2')");
    stamped.set_timestamp(Some(1));
    assert!(session.query_unpaged(stamped, ()).await.is_err());
    let mut batch = Batch::default();
    batch.append_statement(insert.clone());
    batch.set_timestamp(Some(1));
    let message = refused("a batch with a timestamp", session.batch(&batch, (("t3", "g", "a", 1),)).await);
    assert!(message.contains("timestamps"), "{message}");
    let rows = session.query_unpaged(SCAN_TRACKS, ()).await.unwrap().into_rows_result().unwrap();
    assert_eq!(rows.rows_num(), 0, "nothing was written");
}

#[tokio::test]
async fn counters_frozen_collections_and_collection_arithmetic_are_refused() {
    let (_server, session) = squall_schema().await;
    for ddl in [
        "CREATE TABLE ks.plays (id text PRIMARY KEY, n counter)",
        "CREATE TABLE ks.frozen_maps (id text PRIMARY KEY, m frozen<map<text, bigint>>)",
    ] {
        let error = session.query_unpaged(ddl, ()).await.unwrap_err();
        assert_eq!(db_error(&error), Some(&DbError::Invalid), "{ddl}: {error}");
    }
    let tables = session.query_unpaged(TABLES_IN_KEYSPACE, ("ks",)).await.unwrap().into_rows_result().unwrap();
    assert_eq!(tables.rows_num(), 8, "no half-created table");
    for statement in [
        "UPDATE ks.attributes_t_v1 SET events = events + 1 WHERE user_id = 'u1'",
        "UPDATE ks.attributes_t_v1 SET top_artists = top_artists + ['x'] WHERE user_id = 'u1'",
        "UPDATE ks.attributes_t_v1 SET plays_by_genre['x'] = 1 WHERE user_id = 'u1'",
        "DELETE plays_by_genre['x'] FROM ks.attributes_t_v1 WHERE user_id = 'u1'",
    ] {
        refused(statement, session.query_unpaged(statement, ()).await);
    }
    assert_eq!(profile(&session, "u1").await, None, "nothing was written");
}

#[tokio::test]
async fn bound_values_of_types_kassandra_cannot_read_are_refused() {
    let (_server, session) = squall_schema().await;
    session.query_unpaged("CREATE TABLE ks.small (id text PRIMARY KEY, s smallint, t tinyint)", ()).await.unwrap();
    let insert = prepare(&session, "INSERT INTO ks.small (id, s, t) VALUES (?, ?, ?)").await;
    refused("a bound smallint", session.execute_unpaged(&insert, ("a", 1_i16, None::<i8>)).await);
    refused("a bound tinyint", session.execute_unpaged(&insert, ("b", None::<i16>, 1_i8)).await);
    let rows = session.query_unpaged("SELECT id FROM ks.small", ()).await.unwrap().into_rows_result().unwrap();
    assert_eq!(rows.rows_num(), 0, "nothing was written");
}

#[tokio::test]
async fn reads_the_dev_server_would_answer_wrongly_are_refused() {
    let (_server, session) = squall_schema().await;
    for statement in [
        "SELECT * FROM ks.tracks WHERE track_id IN ('a', 'b')",
        "SELECT * FROM ks.checkpoint_marks WHERE group_id = 'g' AND cut > 1",
        "SELECT * FROM ks.checkpoint_marks WHERE group_id = 'g' ORDER BY cut DESC",
        "SELECT * FROM ks.tracks WHERE token(track_id) > 0",
        "SELECT * FROM ks.tracks WHERE track_id = 't1' LIMIT ?",
        "SELECT * FROM ks.checkpoint_marks WHERE (group_id, cut) = ('g', 1)",
        "SELECT * FROM ks.tracks WHERE \"track_id\" = 't1'",
        "SELECT * FROM ks.tracks WHERE track_id = 'it''s'",
        "SELECT * FROM ks.checkpoint_marks WHERE group_id = 'g' AND offsets = 0xcafe",
        "DELETE FROM ks.tracks WHERE track_id IN ('t1', 't2')",
        "SELECT count(*) FROM ks.tracks",
        "SELECT writetime(genre) FROM ks.tracks WHERE track_id = 't1'",
        "SELECT ttl(genre) FROM ks.tracks WHERE track_id = 't1'",
        "TRUNCATE ks.tracks",
        "DROP TABLE ks.tracks",
        "ALTER TABLE ks.tracks ADD x int",
    ] {
        refused(statement, session.query_unpaged(statement, ()).await);
    }
    // A delete naming part of the clustering key: Cassandra deletes the rows under that prefix,
    // kassandra would delete the whole partition.
    let insert_group = prepare(&session, INSERT_GROUP).await;
    session.execute_unpaged(&insert_group, ("g", 1, 1_i64, 0, vec![1u8])).await.unwrap();
    session.execute_unpaged(&insert_group, ("g", 1, 2_i64, 0, vec![2u8])).await.unwrap();
    let prefix =
        prepare(&session, "DELETE FROM ks.checkpoint_groups WHERE group_id = ? AND key_group = ? AND cut = ?").await;
    let error = session.execute_unpaged(&prefix, ("g", 1, 1_i64)).await.unwrap_err();
    assert_eq!(db_error(&error), Some(&DbError::Invalid), "{error}");
    let select = prepare(&session, SELECT_GROUP).await;
    let rows = session.execute_unpaged(&select, ("g", 1)).await.unwrap().into_rows_result().unwrap();
    assert_eq!(rows.rows_num(), 2, "nothing was deleted");
}
