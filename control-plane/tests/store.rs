//! The PostgreSQL store's own behaviour: daily `events` partitions next to monthly ones left by
//! an older release, retention by partition, and roll-up reads on a real streaming replica.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Backend, Isolation, event};
use hais_control_plane::store::identity::IdentityStore;
use hais_control_plane::store::postgres::PgStore;
use hais_control_plane::store::{self, FingerprintQuery, Store, StoreOptions};
use hais_shared::fingerprint::Method;
use sqlx::Connection;
use time::{Date, OffsetDateTime};

const JA4: &str = "t13d1516h2_8daaf6152771_b0da82dd1658";

/// Partitions of `events` in `schema`.
async fn partitions(conn: &mut sqlx::PgConnection, schema: &str) -> BTreeSet<String> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace n ON n.oid = p.relnamespace \
         WHERE p.relname = 'events' AND n.nspname = $1",
    )
    .bind(schema)
    .fetch_all(conn)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

fn day_name(t: OffsetDateTime) -> String {
    let d = t.date();
    format!(
        "events_p{:04}{:02}{:02}",
        d.year(),
        u8::from(d.month()),
        d.day()
    )
}

fn ms(d: Date) -> i64 {
    (d.midnight().assume_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// An upgraded database: a monthly partition made by an older release keeps taking that month's
/// events, new days get daily partitions, and retention drops both kinds whole and trims the
/// one straddling the cutoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_partitions_beside_monthly_ones() {
    let iso = Isolation::new(Backend::Postgres, "parts").await;
    let schema = iso.schema.clone().unwrap();
    let s = store::open_with(
        &iso.config().database_url(),
        Some(&schema),
        4,
        StoreOptions {
            rollup_interval: None,
            ..StoreOptions::default()
        },
    )
    .await
    .unwrap();
    // The month of 75 days ago, partitioned the old way before anything was ingested.
    let now = OffsetDateTime::now_utc();
    let old = (now - time::Duration::days(75)).date();
    let first = old.replace_day(1).unwrap();
    let next = (first + time::Duration::days(32)).replace_day(1).unwrap();
    let monthly = format!("events_p{:04}{:02}", first.year(), u8::from(first.month()));
    let mut conn = sqlx::PgConnection::connect(&common::pg_url())
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {schema}.{monthly} PARTITION OF {schema}.events \
         FOR VALUES FROM ('{}') TO ('{}')",
        store::uuid_floor_ms(ms(first)),
        store::uuid_floor_ms(ms(next)),
    )))
    .execute(&mut conn)
    .await
    .unwrap();

    let secs_ago = |t: OffsetDateTime| (t - now).whole_seconds();
    let at = |d: Date, hour: u8| d.with_hms(hour, 0, 0).unwrap().assume_utc();
    let in_month = [at(first, 1), at(first + time::Duration::days(14), 12)];
    let forty = now - time::Duration::days(40);
    let yesterday = now - time::Duration::days(1);
    let times = [in_month[0], in_month[1], forty, yesterday, now];
    let events: Vec<_> = times
        .iter()
        .map(|&t| event("a", "h", None, &[(Method::Ja4, JA4)], secs_ago(t)))
        .collect();
    assert_eq!(s.ingest(&events).await.unwrap().stored.len(), 5);

    let got = partitions(&mut conn, &schema).await;
    let want: BTreeSet<String> = [monthly.clone(), day_name(forty), day_name(yesterday)]
        .into_iter()
        .chain([day_name(now)])
        .collect();
    assert_eq!(got, want, "no daily partition inside the monthly one");
    // Stored where PostgreSQL routed them: two rows in the monthly partition.
    let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {schema}.{monthly}"
    )))
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(n, 2);

    // Thirty days: the monthly and the forty-day-old daily partitions go whole.
    let out = s
        .retain(store::to_us(now - time::Duration::days(30)))
        .await
        .unwrap();
    assert_eq!(
        (out.partitions_dropped, out.events_deleted),
        (2, 3),
        "{out:?}"
    );
    assert!(!out.events_deleted_estimated);
    assert_eq!(s.count_events().await.unwrap(), 2);
    let got = partitions(&mut conn, &schema).await;
    assert_eq!(
        got,
        [day_name(yesterday), day_name(now)].into_iter().collect()
    );
    // A cutoff inside yesterday: its partition stays, the older row in it goes.
    let out = s
        .retain(store::to_us(events[3].timestamp) + 1000)
        .await
        .unwrap();
    assert_eq!(
        (out.partitions_dropped, out.events_deleted),
        (0, 1),
        "{out:?}"
    );
    assert_eq!(s.count_events().await.unwrap(), 1);
    // A day dropped by retention is made again when an event for it comes.
    let again = event("a", "h", None, &[(Method::Ja4, JA4)], secs_ago(forty));
    assert_eq!(s.ingest(&[again]).await.unwrap().stored.len(), 1);
    assert!(
        partitions(&mut conn, &schema)
            .await
            .contains(&day_name(forty))
    );
    let d = s.detail(Method::Ja4, JA4).await.unwrap().unwrap();
    assert_eq!(d.summary.count, 6, "roll-ups count every event once");
    s.close().await.unwrap();
    // The detached partitions were dropped in the background, done by the close.
    let retired: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relname LIKE 'events%' AND c.relname <> 'events' \
         AND NOT c.relispartition AND c.relkind = 'r'",
    )
    .bind(&schema)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(retired, 0, "no partition left detached");
    iso.cleanup().await;
}

/// Roll-up reads on a real streaming replica: they are answered there, and still reflect every
/// acknowledged ingest (the read folds on the primary, then waits for the replica to replay it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollup_reads_use_an_up_to_date_replica() {
    let Some(cluster) = common::cluster::Cluster::start() else {
        return;
    };
    let s = PgStore::open(
        &cluster.primary_url(),
        Some(&cluster.standby_url()),
        Some("hais"),
        4,
        StoreOptions {
            rollup_interval: Some(Duration::from_millis(5)),
            // Generous: under a loaded test machine replay can be slow, and a read that gives up
            // waiting would (correctly) go to the primary and fail this test's point.
            replica_wait: Duration::from_secs(120),
        },
    )
    .await
    .unwrap();
    let replica = s.replica_pool().expect("a replica is configured");
    let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(replica)
        .await
        .unwrap();
    assert!(in_recovery, "the read pool is the standby");
    let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(s.pool())
        .await
        .unwrap();
    assert!(!in_recovery, "the write pool is the primary");

    let mut stored = 0;
    for round in 0..5i64 {
        let mut batch: Vec<_> = (0..20)
            .map(|i| {
                event(
                    "agent-r",
                    &format!("host-{i}"),
                    Some("svc.example"),
                    &[(Method::Ja4, JA4)],
                    -(round * 100 + i) - 1,
                )
            })
            .collect();
        for e in &mut batch[..5] {
            e.workload.spiffe_id = Some("spiffe://t.example/w".into());
        }
        stored += s.ingest(&batch).await.unwrap().stored.len() as i64;
        // Read-your-writes through the replica: the acknowledged events are all counted.
        let d = s.detail(Method::Ja4, JA4).await.unwrap().expect("visible");
        assert_eq!(d.summary.count, stored);
        let page = s
            .search(&FingerprintQuery {
                limit: 10,
                ..FingerprintQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(page.items[0].count, stored);
        let top = s.top(0, None, 10).await.unwrap();
        assert_eq!(top[0].count, stored);
        let ids = s.list_identities(None, 10).await.unwrap();
        assert_eq!(ids[0].count, (round + 1) * 5);
    }
    let reads = Store::replica_reads(&s).expect("a replica is configured");
    assert_eq!(reads.primary, 0, "every read was answered by the replica");
    assert!(reads.replica >= 20, "{reads:?}");
    // The standby itself holds the roll-ups it answered with.
    let on_standby: i64 = sqlx::query_scalar("SELECT count FROM hais.fingerprints")
        .fetch_one(replica)
        .await
        .unwrap();
    assert_eq!(on_standby, stored);
    s.close().await.unwrap();
    drop(cluster);
}
