//! Proves the CQL harness is a real database: a keyspace and a table from a
//! CQL file, a prepared round trip, and a clustering-order range query.

use chrono::{DateTime, TimeZone, Utc};
use herald_tests::{cql_node, unique_name};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;

#[tokio::test]
async fn prepared_round_trip_and_clustering_range() {
    let Some(node) = cql_node("smoke_cql") else {
        return;
    };
    let session: Session = SessionBuilder::new()
        .known_node(&node)
        .build()
        .await
        .expect("connect");
    let ks = unique_name("smoke_cql");
    session
        .query_unpaged(
            format!(
                "CREATE KEYSPACE {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
            ),
            &[],
        )
        .await
        .expect("create keyspace");
    session
        .use_keyspace(&ks, false)
        .await
        .expect("use keyspace");
    let ddl = include_str!("../fixtures/smoke.cql");
    let statements = ddl
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    for stmt in statements
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        session
            .query_unpaged(stmt, &[])
            .await
            .expect("apply smoke.cql");
    }

    let insert = session
        .prepare("INSERT INTO readings (account_id, at, seq, amount_minor) VALUES (?, ?, ?, ?)")
        .await
        .expect("prepare insert");
    let t = |s: i64| -> DateTime<Utc> { Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap() };
    for i in 0..20i32 {
        session
            .execute_unpaged(&insert, ("acc-1", t(i as i64), i, 1_000i64 * i as i64))
            .await
            .expect("insert");
    }
    // A row in another partition that the range query must not see.
    session
        .execute_unpaged(&insert, ("acc-2", t(10), 99, 5i64))
        .await
        .expect("insert");

    let one = session
        .prepare("SELECT amount_minor FROM readings WHERE account_id = ? AND at = ? AND seq = ?")
        .await
        .expect("prepare select");
    let (amount,): (i64,) = session
        .execute_unpaged(&one, ("acc-1", t(7), 7))
        .await
        .expect("select")
        .into_rows_result()
        .expect("rows")
        .single_row()
        .expect("one row");
    assert_eq!(amount, 7_000);

    // [t(5), t(12)) in clustering order: exactly seq 11..=5, newest first.
    let range = session
        .prepare("SELECT seq FROM readings WHERE account_id = ? AND at >= ? AND at < ?")
        .await
        .expect("prepare range");
    let rows = session
        .execute_unpaged(&range, ("acc-1", t(5), t(12)))
        .await
        .expect("range")
        .into_rows_result()
        .expect("rows");
    let seqs: Vec<i32> = rows
        .rows::<(i32,)>()
        .expect("typed rows")
        .map(|r| r.expect("row").0)
        .collect();
    assert_eq!(seqs, (5..12).rev().collect::<Vec<_>>());

    session
        .query_unpaged(format!("DROP KEYSPACE {ks}"), &[])
        .await
        .expect("drop keyspace");
}
