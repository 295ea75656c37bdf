//! Replay and verify throughput on a large log (default 1,000,000 events).
//!
//! `cargo bench -p gigafactory-api --bench replay` — uses a fresh database on the
//! server at `TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`),
//! dropped at the end. `GF_BENCH_EVENTS` changes the size. Prints figures; asserts
//! nothing (speed is measured, not tested).

use gigafactory_projections::{audit, log, replay};
use sqlx::postgres::PgPoolOptions;
use std::time::Instant;

fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map(|(b, q)| (b, Some(q)))
        .unwrap_or((url, None));
    let cut = base.rfind('/').expect("database URL has a path");
    format!(
        "{}/{}{}",
        &base[..cut],
        db,
        query.map(|q| format!("?{q}")).unwrap_or_default()
    )
}

fn main() -> anyhow::Result<()> {
    let events: i64 = std::env::var("GF_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let jobs = events / 3;
    let server = std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let admin = PgPoolOptions::new().max_connections(1).connect(&server).await?;
        let name = format!("gf_bench_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await?;
        let result = async {
            let pool = gigafactory_api::db::connect(&with_database(&server, &name), 4).await?;
            gigafactory_api::db::migrate(&pool).await?;

            let t = Instant::now();
            // Three events per job (submitted, granted, succeeded), generated in SQL;
            // the database stamps and hash-chains each one as usual.
            sqlx::query(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, product_id, visible_to)
                 SELECT 'job', 'bench/' || id, s.seq,
                        (ARRAY['JobSubmitted','LeaseGranted','RunSucceeded'])[s.seq], '1',
                        CASE s.seq
                          WHEN 1 THEN json_build_object('JobSubmitted', json_build_object('jobId', id, 'productId', 'bench',
                                 'title', 'job ' || i, 'payload', '{}'::json, 'requiredCapabilities', '[]'::json,
                                 'priority', 'normal', 'budgetUsd', 0.0, 'maxAttempts', 3, 'timeoutSecs', null,
                                 'at', '2026-01-01T00:00:00Z'))
                          WHEN 2 THEN json_build_object('LeaseGranted', json_build_object('epoch', 2, 'runId', run,
                                 'factoryId', '00000000-0000-0000-0000-0000000000f1', 'ttlSecs', 60,
                                 'expiresAt', '2026-01-01T00:01:00Z', 'at', '2026-01-01T00:00:00Z'))
                          ELSE json_build_object('RunSucceeded', json_build_object('epoch', 2, 'runId', run,
                                 'costUsd', 0.1, 'checkpoint', null, 'at', '2026-01-01T00:00:30Z'))
                        END,
                        '{}'::json, 'bench', ARRAY['bench']
                 FROM (SELECT i, md5(i::text)::uuid AS id, md5('run' || i)::uuid AS run FROM generate_series(1, $1) i) j
                 CROSS JOIN generate_series(1, 3) AS s(seq)
                 ORDER BY i, s.seq",
            )
            .bind(jobs)
            .execute(&pool)
            .await?;
            let n = jobs * 3;
            let appended = t.elapsed().as_secs_f64();
            let t = Instant::now();
            while log::assign_positions(&pool, 100_000).await? > 0 {}
            let sequenced = t.elapsed().as_secs_f64();

            let t = Instant::now();
            let mut conn = pool.acquire().await?;
            let report = audit::verify_log(&mut conn, None).await?;
            drop(conn);
            let verified = t.elapsed().as_secs_f64();
            assert!(report.ok, "the generated log verifies");

            let t = Instant::now();
            let replayed = replay::rebuild_into(&pool, "gf_bench_replay", 5_000, |_, _| {}).await?;
            let replay_secs = t.elapsed().as_secs_f64();

            println!("events                 {n}");
            println!("append (SQL, chained)  {:>10.0} events/s", n as f64 / appended);
            println!("sequence               {:>10.0} events/s", n as f64 / sequenced);
            println!("verify                 {:>10.0} events/s", report.events as f64 / verified);
            println!("replay                 {:>10.0} events/s ({replayed} events in {replay_secs:.1} s)", replayed as f64 / replay_secs);
            pool.close().await;
            Ok::<_, anyhow::Error>(())
        }
        .await;
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&admin).await?;
        result
    })
}
