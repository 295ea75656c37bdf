//! Replay and verify throughput on a large log, generated in SQL on a fresh database
//! (the database stamps and hash-chains each event as usual).

use gigafactory_projections::{audit, log, replay};
use serde::Serialize;
use std::time::Instant;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LogFigures {
    pub events: i64,
    pub append_per_second: f64,
    pub sequence_per_second: f64,
    pub verify_per_second: f64,
    pub replay_per_second: f64,
}

/// Appends `events` (three per job: submitted, granted, succeeded), gives them
/// positions, verifies the chain and rebuilds every read model from the log.
pub async fn measure(database_url: &str, events: i64, batch: i64) -> anyhow::Result<LogFigures> {
    let jobs = (events / 3).max(1);
    let pool = gigafactory_api::db::connect(database_url, 4).await?;
    gigafactory_api::db::migrate(&pool).await?;

    // Ids shaped as the server makes them (UUIDv7: a millisecond timestamp, then
    // random bits), so the read models' keys arrive in the order they do in a real
    // log; random ids would make every index insert land on a random page.
    sqlx::query(
        "CREATE FUNCTION gf_bench_v7(ms bigint, seed text) RETURNS uuid LANGUAGE sql IMMUTABLE AS $$
             SELECT (lpad(to_hex(1767225600000 + ms), 12, '0') || '7' || substr(md5(seed), 1, 3)
                     || '8' || substr(md5(seed), 4, 15))::uuid
         $$",
    )
    .execute(&pool)
    .await?;

    let t = Instant::now();
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
         FROM (SELECT i, gf_bench_v7(i, i::text) AS id, gf_bench_v7(i, 'run' || i) AS run
               FROM generate_series(1, $1) i) j
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
    anyhow::ensure!(
        report.ok,
        "the generated log does not verify: {:?}",
        report.problems
    );

    let t = Instant::now();
    let replayed = replay::rebuild_into(&pool, "gf_bench_replay", batch, |_, _| {}).await?;
    let replay_secs = t.elapsed().as_secs_f64();
    pool.close().await;
    Ok(LogFigures {
        events: n,
        append_per_second: n as f64 / appended,
        sequence_per_second: n as f64 / sequenced,
        verify_per_second: report.events as f64 / verified,
        replay_per_second: replayed as f64 / replay_secs,
    })
}
