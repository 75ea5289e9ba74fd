//! Retention benchmark (PostgreSQL): how long the retention call takes when it drops one day's
//! partition holding many events (10 million by default).
//!
//! Run: `cargo bench -p hais-control-plane --bench retention` (or add `--profile dev` to skip
//! the release build: the time measured is the database's). Knobs:
//! * `HAIS_BENCH_RETENTION_EVENTS` (default 10000000): rows generated in the day dropped.
//! * `HAIS_TEST_DATABASE_URL`: PostgreSQL server (default the local one); a schema of its own is
//!   created and dropped.
//!
//! The rows are generated inside PostgreSQL (`INSERT … SELECT … FROM generate_series`) into the
//! `events` partition of a day ten days ago, with UUIDv7-shaped ids spread over that day and
//! realistic column widths; the partition is then analysed and checkpointed, as autovacuum and
//! the checkpointer do with a day's partition in production. A few events through the store's ingest make today's partition (kept) and the
//! old day's (dropped). Then it times `Store::retain` with the cutoff at the end of that old day:
//! the whole call, i.e. listing partitions, detaching the old one, deleting the older rows of the
//! partition straddling the cutoff, and the roll-up retention. The detached partition's files are
//! deleted by a background task afterwards (holding no lock on `events`); the store's close waits
//! for it, and the benchmark reports that too.

use std::time::Instant;

use hais_control_plane::store::{self, StoreOptions};
use hais_shared::event::{Fingerprint, FingerprintEvent};
use hais_shared::fingerprint::Method;
use sqlx::Connection;

const DAY_MS: i64 = 86_400_000;

mod common;

/// One event at `ts` through the store's ingest (the rows measured are generated in SQL).
fn event(ts: time::OffsetDateTime) -> FingerprintEvent {
    let mut e = common::event(0, 50_000, ts);
    e.fingerprints.push(Fingerprint {
        method: Method::Ja4,
        value: "t13d1516h2_8daaf6152771_b0da82dd1658".into(),
    });
    e
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: i64 = std::env::var("HAIS_BENCH_RETENTION_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let url = std::env::var("HAIS_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!(
        "hais_bench_retention_{}",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    );
    let s = store::open_with(
        &url,
        Some(&schema),
        4,
        StoreOptions {
            rollup_interval: None,
            ..StoreOptions::default()
        },
    )
    .await
    .expect("opening the store");

    let now = time::OffsetDateTime::now_utc();
    let day = (store::to_us(now) / 1000).div_euclid(DAY_MS) - 10;
    let day_start = time::OffsetDateTime::from_unix_timestamp(day * DAY_MS / 1000).unwrap();
    // Through the store: creates the old day's partition and today's.
    s.ingest(&[event(day_start + time::Duration::hours(1)), event(now)])
        .await
        .unwrap();

    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("SET search_path TO {schema}")))
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("SET synchronous_commit = off")
        .execute(&mut conn)
        .await
        .unwrap();
    let t = Instant::now();
    // id: 12 hex digits of milliseconds spread over the day, the version nibble, then the row
    // number (unique).
    let insert = format!(
        "INSERT INTO events (id, ts_us, agent_id, host, src_ip, src_port, dst_ip, dst_port, \
         transport, server_name, fingerprints, workload, received_us) \
         SELECT (lpad(to_hex(ms), 12, '0') || '7' || lpad(to_hex(g), 19, '0'))::uuid, \
                ms * 1000, 'agent-' || (g % 200), 'host-' || (g % 1000), '10.1.' || (g % 250) \
                || '.' || (g % 251), (g % 60000)::int, '192.0.2.' || (g % 250), 443, 'tcp', \
                'svc-' || (g % 5000) || '.example', \
                '[{{\"method\":\"ja4\",\"value\":\"t13d1516h2_8daaf6152771_' || \
                lpad(to_hex(g % 20000), 12, '0') || '\"}}]', NULL, ms * 1000 \
         FROM (SELECT g, {start} + g * {span} / {n} AS ms \
               FROM generate_series(1::int8, {n}::int8) AS g) AS x",
        start = day * DAY_MS,
        span = DAY_MS - 1,
    );
    sqlx::query(sqlx::AssertSqlSafe(insert))
        .execute(&mut conn)
        .await
        .expect("generating rows");
    let generated = t.elapsed();
    let partition = format!(
        "events_p{}",
        day_start
            .date()
            .to_string()
            .replace('-', "")
            .trim_start_matches('+')
    );
    // A day's partition in production was written over a day: analysed by autovacuum, its pages
    // long written out by checkpoints. Without the checkpoint the drop's commit would wait for
    // the flush of the gigabytes just generated, and time the disk instead.
    for sql in [format!("ANALYZE {partition}"), "CHECKPOINT".into()] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let bytes: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT pg_total_relation_size('{partition}')"
    )))
    .fetch_one(&mut conn)
    .await
    .unwrap();
    println!(
        "generated {n} rows in {partition} in {:.1} s ({:.2} GiB with its index)",
        generated.as_secs_f64(),
        bytes as f64 / f64::from(1u32 << 30)
    );

    let cutoff_us = (day + 1) * DAY_MS * 1000;
    let t = Instant::now();
    let out = s.retain(cutoff_us).await.expect("retention");
    let took = t.elapsed();
    println!(
        "retention: {:.3} s; {} partition(s) dropped, {} events deleted{}",
        took.as_secs_f64(),
        out.partitions_dropped,
        out.events_deleted,
        if out.events_deleted_estimated {
            " (planner's estimate for the dropped partition)"
        } else {
            ""
        }
    );
    assert_eq!(s.count_events().await.unwrap(), 1, "today's event is kept");

    // The detached partition's files are deleted by a background task; close waits for it.
    let t = Instant::now();
    s.close().await.unwrap();
    println!(
        "background drop of the detached partition: close waited {:.3} s for it",
        t.elapsed().as_secs_f64()
    );
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&mut conn)
        .await
        .unwrap();
}
