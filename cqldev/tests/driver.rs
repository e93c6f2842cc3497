//! The unmodified scylla 1.9 driver against the real `squall-cql-dev` binary: the CQL shapes
//! squall uses, failure isolation, and state-file persistence.

mod support;

use futures::{StreamExt, TryStreamExt, stream};
use scylla::{errors::DbError, statement::Statement, value::CqlValue};
use support::{DevServer, create_app_schema, db_error, unique_path};

type TrackRow = (String, Option<String>, Option<String>, Option<i32>);

const SELECT_TRACK: &str = "SELECT track_id, genre, artist_id, duration_ms FROM tracks WHERE track_id = ?";
const INSERT_TRACK: &str = "INSERT INTO tracks (track_id, genre, artist_id, duration_ms) VALUES (?, ?, ?, ?)";

#[tokio::test]
async fn driver_connects_on_a_random_port_and_keeps_using_it() {
    let server = DevServer::start();
    assert_ne!(server.addr.port(), 9042, "the test must exercise a non-default port");
    let session = server.session().await;

    let nodes = session.get_cluster_state().get_nodes_info().to_vec();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].address.ip(), server.addr.ip());
    assert_eq!(nodes[0].address.port(), server.addr.port());

    // The driver's own metadata statements, prepared with a literal WHERE value, and the
    // local row it builds its node list from.
    let prepared = session
        .prepare("SELECT cluster_name, partitioner, rpc_address FROM system.local WHERE key='local'")
        .await
        .expect("prepare with a literal WHERE value");
    assert_eq!(prepared.get_variable_col_specs().len(), 0);
    let (cluster, partitioner, rpc_address) = session
        .execute_unpaged(&prepared, ())
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .single_row::<(String, String, std::net::IpAddr)>()
        .unwrap();
    assert_eq!(cluster, "squall-cql-dev");
    assert_eq!(partitioner, "org.apache.cassandra.dht.Murmur3Partitioner");
    assert_eq!(rpc_address, server.addr.ip());
}

#[tokio::test]
async fn ddl_changes_schema_version_and_reaches_agreement() {
    let server = DevServer::start();
    let session = server.session().await;
    let schema_version = || async {
        session
            .query_unpaged("SELECT schema_version FROM system.local WHERE key='local'", ())
            .await
            .unwrap()
            .into_rows_result()
            .unwrap()
            .single_row::<(CqlValue,)>()
            .unwrap()
            .0
    };
    let before = schema_version().await;
    create_app_schema(&session, "agreement").await;
    let after = schema_version().await;
    assert_ne!(before, after, "DDL must change system.local schema_version");
    session.await_schema_agreement().await.expect("schema agreement");
}

#[tokio::test]
async fn prepared_insert_and_select_by_primary_key() {
    let server = DevServer::start();
    let session = server.session().await;
    create_app_schema(&session, "app").await;

    let insert = session.prepare(INSERT_TRACK).await.unwrap();
    let select = session.prepare(SELECT_TRACK).await.unwrap();
    session.execute_unpaged(&insert, ("t1", "jazz", "a1", 215_000)).await.unwrap();
    // A null value stays null.
    session.execute_unpaged(&insert, ("t2", "rock", None::<String>, 1)).await.unwrap();

    let hit = session.execute_unpaged(&select, ("t1",)).await.unwrap().into_rows_result().unwrap();
    assert_eq!(
        hit.single_row::<TrackRow>().unwrap(),
        ("t1".into(), Some("jazz".into()), Some("a1".into()), Some(215_000))
    );
    let null = session.execute_unpaged(&select, ("t2",)).await.unwrap().into_rows_result().unwrap();
    assert_eq!(null.single_row::<TrackRow>().unwrap(), ("t2".into(), Some("rock".into()), None, Some(1)));
    let miss = session.execute_unpaged(&select, ("nope",)).await.unwrap().into_rows_result().unwrap();
    assert_eq!(miss.rows_num(), 0);

    // Upsert semantics: a second insert overwrites.
    session.execute_unpaged(&insert, ("t1", "blues", "a1", 215_000)).await.unwrap();
    let updated = session.execute_unpaged(&select, ("t1",)).await.unwrap().into_rows_result().unwrap();
    assert_eq!(updated.single_row::<TrackRow>().unwrap().1.as_deref(), Some("blues"));

    let insert_ad = session.prepare("INSERT INTO ads (ad_id, advertiser_id, category) VALUES (?, ?, ?)").await.unwrap();
    let select_ad = session.prepare("SELECT advertiser_id, category FROM ads WHERE ad_id = ?").await.unwrap();
    session.execute_unpaged(&insert_ad, ("ad1", "adv9", "music")).await.unwrap();
    let ad = session.execute_unpaged(&select_ad, ("ad1",)).await.unwrap().into_rows_result().unwrap();
    assert_eq!(ad.single_row::<(String, String)>().unwrap(), ("adv9".into(), "music".into()));
    let no_ad = session.execute_unpaged(&select_ad, ("ad2",)).await.unwrap().into_rows_result().unwrap();
    assert_eq!(no_ad.rows_num(), 0);

    // A logged batch of prepared inserts.
    let mut batch = scylla::statement::batch::Batch::default();
    batch.append_statement(insert.clone());
    batch.append_statement(insert.clone());
    session.batch(&batch, (("b1", "funk", "a2", 10), ("b2", "soul", "a3", 20))).await.unwrap();
    for (id, genre) in [("b1", "funk"), ("b2", "soul")] {
        let rows = session.execute_unpaged(&select, (id,)).await.unwrap().into_rows_result().unwrap();
        assert_eq!(rows.single_row::<TrackRow>().unwrap().1.as_deref(), Some(genre));
    }

    // USE of a keyspace that does not exist is refused, as by Cassandra.
    assert!(session.use_keyspace("no_such_keyspace", false).await.is_err());

    // Unprepared statements with a literal key work as well.
    let literal = session
        .query_unpaged("SELECT genre FROM tracks WHERE track_id = 't1'", ())
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    assert_eq!(literal.single_row::<(String,)>().unwrap().0, "blues");
}

#[tokio::test]
async fn blob_values_round_trip_under_a_composite_partition_key() {
    let server = DevServer::start();
    let session = server.session().await;
    create_app_schema(&session, "blobs").await;

    let put = session.prepare("INSERT INTO kv (ns, k, v) VALUES (?, ?, ?)").await.unwrap();
    let get = session.prepare("SELECT v FROM kv WHERE ns = ? AND k = ?").await.unwrap();
    // Both partition-key components are routing-key parts: (marker index, position in the key).
    let pk = |statement: &scylla::statement::prepared::PreparedStatement| -> Vec<(u16, u16)> {
        statement.get_variable_pk_indexes().iter().map(|p| (p.index, p.sequence)).collect()
    };
    assert_eq!(pk(&get), [(0, 0), (1, 1)]);
    let reversed = session.prepare("SELECT v FROM kv WHERE k = ? AND ns = ?").await.unwrap();
    assert_eq!(pk(&reversed), [(0, 1), (1, 0)]);

    let every_byte: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    session.execute_unpaged(&put, ("users", "u1", every_byte.clone())).await.unwrap();
    session.execute_unpaged(&put, ("users", "u2", Vec::<u8>::new())).await.unwrap();
    session.execute_unpaged(&put, ("sessions", "u1", vec![7u8])).await.unwrap();

    let read = |ns: &'static str, k: &'static str| {
        let session = &session;
        let get = &get;
        async move {
            let rows = session.execute_unpaged(get, (ns, k)).await.unwrap().into_rows_result().unwrap();
            rows.maybe_first_row::<(Vec<u8>,)>().unwrap().map(|(v,)| v)
        }
    };
    assert_eq!(read("users", "u1").await, Some(every_byte));
    assert_eq!(read("users", "u2").await, Some(vec![]));
    assert_eq!(read("sessions", "u1").await, Some(vec![7]));
    assert_eq!(read("sessions", "u2").await, None);
    assert_eq!(read("other", "u1").await, None);
}

#[tokio::test]
async fn thousand_prepared_inserts_read_back_by_200_concurrent_selects() {
    const ROWS: i32 = 1000;
    let server = DevServer::start();
    let session = server.session().await;
    create_app_schema(&session, "bulk").await;
    let insert = session.prepare(INSERT_TRACK).await.unwrap();
    let select = session.prepare(SELECT_TRACK).await.unwrap();

    stream::iter(0..ROWS)
        .map(|i| {
            let (session, insert) = (&session, &insert);
            async move {
                session.execute_unpaged(insert, (format!("track-{i}"), format!("genre-{}", i % 7), "artist", i)).await
            }
        })
        .buffer_unordered(200)
        .try_collect::<Vec<_>>()
        .await
        .expect("inserts");

    let found: Vec<TrackRow> = stream::iter(0..ROWS)
        .map(|i| {
            let (session, select) = (&session, &select);
            async move {
                let rows = session.execute_unpaged(select, (format!("track-{i}"),)).await?.into_rows_result().unwrap();
                let row = rows.single_row::<TrackRow>().unwrap();
                assert_eq!(
                    row,
                    (format!("track-{i}"), Some(format!("genre-{}", i % 7)), Some("artist".into()), Some(i))
                );
                Ok::<_, scylla::errors::ExecutionError>(row)
            }
        })
        .buffer_unordered(200)
        .try_collect()
        .await
        .expect("selects");
    assert_eq!(found.len(), ROWS as usize);

    // An unpaged scan returns every row (kassandra alone would stop at its default page size) ...
    let all = session.query_unpaged("SELECT track_id FROM tracks", ()).await.unwrap().into_rows_result().unwrap();
    assert_eq!(all.rows_num(), ROWS as usize);
    // ... and a paged scan walks all pages exactly once.
    let mut paged = Statement::new("SELECT track_id FROM tracks");
    paged.set_page_size(97);
    let mut ids: Vec<String> = session
        .query_iter(paged, ())
        .await
        .unwrap()
        .rows_stream::<(String,)>()
        .unwrap()
        .map_ok(|(id,)| id)
        .try_collect()
        .await
        .unwrap();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), ROWS as usize);
}

#[tokio::test]
async fn statement_that_panics_in_kassandra_is_an_error_and_the_server_keeps_serving() {
    let server = DevServer::start();
    let session = server.session().await;
    create_app_schema(&session, "panics").await;
    let insert = session.prepare(INSERT_TRACK).await.unwrap();
    let select = session.prepare(SELECT_TRACK).await.unwrap();

    // CREATE TYPE hits `todo!()` inside kassandra.
    let udt = session.query_unpaged("CREATE TYPE panics.point (x int, y int)", ()).await;
    assert_eq!(db_error(&udt.expect_err("UDTs are not supported")), Some(&DbError::ServerError));

    // The same session, and its prepared statements, keep working ...
    session.execute_unpaged(&insert, ("after", "pop", "a", 3)).await.unwrap();
    let rows = session.execute_unpaged(&select, ("after",)).await.unwrap().into_rows_result().unwrap();
    assert_eq!(rows.single_row::<TrackRow>().unwrap().3, Some(3));
    // ... and new connections are accepted.
    let second = server.session().await;
    let rows = second
        .query_unpaged("SELECT track_id FROM panics.tracks WHERE track_id = ?", ("after",))
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    assert_eq!(rows.rows_num(), 1);
}

#[tokio::test]
async fn syntax_error_is_reported_and_the_session_stays_usable() {
    let server = DevServer::start();
    let session = server.session().await;
    create_app_schema(&session, "syntax").await;

    let error = session.query_unpaged("SELEC * FRM tracks", ()).await.expect_err("not CQL");
    assert_eq!(db_error(&error), Some(&DbError::SyntaxError), "{error}");
    let error = session.prepare("INSERT INTO tracks (track_id VALUES (?)").await.expect_err("not CQL");
    assert!(error.to_string().contains("syntax"), "{error}");

    // Shapes kassandra would silently misread are refused instead of answered wrongly.
    let error = session.query_unpaged("SELECT * FROM tracks WHERE track_id IN ('a', 'b')", ()).await.unwrap_err();
    assert_eq!(db_error(&error), Some(&DbError::Invalid), "{error}");

    // Same session, same connections: still fine.
    let insert = session.prepare(INSERT_TRACK).await.unwrap();
    session.execute_unpaged(&insert, ("ok", "g", "a", 1)).await.unwrap();
    // Lower-case keywords are accepted (kassandra alone would drop the `and` condition).
    let rows = session
        .query_unpaged("select v from kv where ns = ? and k = ?", ("n", "k"))
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    assert_eq!(rows.rows_num(), 0);
    let rows = session.execute_unpaged(&session.prepare(SELECT_TRACK).await.unwrap(), ("ok",)).await.unwrap();
    assert_eq!(rows.into_rows_result().unwrap().rows_num(), 1);
}

#[tokio::test]
async fn rows_survive_sigterm_and_restart_with_the_same_state_file() {
    let state_file = unique_path("state.ron");
    let server = DevServer::start_with(Some(&state_file));
    let insert_before_restart = {
        let session = server.session().await;
        create_app_schema(&session, "durable").await;
        let insert = session.prepare(INSERT_TRACK).await.unwrap();
        for i in 0..50 {
            session.execute_unpaged(&insert, (format!("t{i}"), "g", "a", i)).await.unwrap();
        }
        let put = session.prepare("INSERT INTO kv (ns, k, v) VALUES (?, ?, ?)").await.unwrap();
        session.execute_unpaged(&put, ("ns", "k", vec![0u8, 1, 2, 255])).await.unwrap();
        insert
    };
    let status = server.terminate();
    assert!(status.success(), "clean exit on SIGTERM, got {status}");
    assert!(state_file.exists(), "state file written on SIGTERM");

    let server = DevServer::start_with(Some(&state_file));
    let session = server.session().await;
    session.use_keyspace("durable", false).await.expect("keyspace restored");
    let select = session.prepare(SELECT_TRACK).await.unwrap();
    for i in 0..50 {
        let rows = session.execute_unpaged(&select, (format!("t{i}"),)).await.unwrap().into_rows_result().unwrap();
        assert_eq!(rows.single_row::<TrackRow>().unwrap().3, Some(i));
    }
    let blob = session
        .query_unpaged("SELECT v FROM kv WHERE ns = ? AND k = ?", ("ns", "k"))
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .single_row::<(Vec<u8>,)>()
        .unwrap();
    assert_eq!(blob.0, [0, 1, 2, 255]);
    // New writes after a restart work too (the schema, not just the rows, came back).
    session.execute_unpaged(&session.prepare(INSERT_TRACK).await.unwrap(), ("new", "g", "a", 1)).await.unwrap();
    // A statement prepared before the restart is answered Unprepared, prepared again by the
    // driver, and then writes its bound null like any other.
    session.execute_unpaged(&insert_before_restart, ("t1", None::<&str>, "a", 1)).await.unwrap();
    let rows = session.execute_unpaged(&select, ("t1",)).await.unwrap().into_rows_result().unwrap();
    assert_eq!(rows.single_row::<TrackRow>().unwrap(), ("t1".into(), None, Some("a".into()), Some(1)));

    drop(server);
    let _ = std::fs::remove_file(&state_file);
}
