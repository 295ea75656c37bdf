//! The figures of one run and the table they print as (Markdown, pasted into
//! docs/performance.md).

use crate::db::Databases;
use crate::logbench::LogFigures;
use crate::stats::Percentiles;
use serde::Serialize;
use std::fmt::Write;

/// Where the run happened.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Machine {
    pub cores: usize,
    pub postgres: String,
    pub fsync: String,
    pub synchronous_commit: String,
    pub autovacuum: String,
}

impl Machine {
    pub async fn read(dbs: &Databases) -> Self {
        let show =
            |what: &'static str| async move { dbs.show(what).await.unwrap_or_else(|_| "?".into()) };
        Self {
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            postgres: show("server_version").await,
            fsync: show("fsync").await,
            synchronous_commit: show("synchronous_commit").await,
            autovacuum: show("autovacuum").await,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Figures {
    pub machine: Machine,
    pub factories: usize,
    pub drain_jobs: usize,
    pub drain_jobs_per_second: f64,
    pub claim_ms: Percentiles,
    pub projection_lag_ms: Percentiles,
    /// Claims served per claim transaction in the one-job drain, on average.
    pub claims_per_transaction: Option<f64>,
    /// Reports served per report statement in the one-job drain, on average.
    pub reports_per_statement: Option<f64>,
    /// The one-job drain with each report and the next claim in one call.
    pub chained_drain_jobs_per_second: f64,
    /// That drain's report-and-claim calls that leased a job (ms).
    pub chained_call_ms: Percentiles,
    /// Claims (each with its report) per claim transaction in that drain.
    pub chained_claims_per_transaction: Option<f64>,
    pub lifecycle_jobs: usize,
    pub lifecycle_jobs_per_second: f64,
    pub idle_enqueue_to_claim_ms: Percentiles,
    pub graphile_version: String,
    pub graphile_jobs_per_second: f64,
    pub graphile_batched_jobs_per_second: f64,
    /// Most jobs per batch claim / report in the batched drain.
    pub batch: usize,
    pub batched_drain_jobs_per_second: f64,
    pub queued: usize,
    pub rss_mb: f64,
    pub log: LogFigures,
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "missed"
    }
}

fn thousands(x: f64) -> String {
    let n = x.round() as i64;
    let digits = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// The Markdown table: figure, Gigafactory, graphile-worker, ratio, target.
pub fn table(f: &Figures) -> String {
    let g = &f.graphile_version;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Machine: {} cores, PostgreSQL {} (fsync {}, synchronous_commit {}, autovacuum {}).\n",
        f.machine.cores,
        f.machine.postgres,
        f.machine.fsync,
        f.machine.synchronous_commit,
        f.machine.autovacuum
    );
    let _ = writeln!(
        s,
        "| figure | Gigafactory | graphile-worker {g} | ratio | target |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---|");
    let ratio = f.drain_jobs_per_second / f.graphile_jobs_per_second;
    let _ = writeln!(
        s,
        "| drain {} jobs, {} workers, one job per claim (jobs/s) | {} | {} | {:.2}× | ≥ 1.0× ({}) |",
        thousands(f.drain_jobs as f64),
        f.factories,
        thousands(f.drain_jobs_per_second),
        thousands(f.graphile_jobs_per_second),
        ratio,
        met(ratio >= 1.0)
    );
    let chained = f.chained_drain_jobs_per_second / f.graphile_jobs_per_second;
    let _ = writeln!(
        s,
        "| the same drain, each report and the next claim in one call (`report-and-claim`, jobs/s) | {} | {} | {:.2}× | ≥ 1.0× ({}) |",
        thousands(f.chained_drain_jobs_per_second),
        thousands(f.graphile_jobs_per_second),
        chained,
        met(chained >= 1.0)
    );
    let _ = writeln!(
        s,
        "| drain, batch claim/report of ≤ {} vs graphile-worker's batched mode (jobs/s) | {} | {} | {:.2}× | |",
        f.batch,
        thousands(f.batched_drain_jobs_per_second),
        thousands(f.graphile_batched_jobs_per_second),
        f.batched_drain_jobs_per_second / f.graphile_batched_jobs_per_second,
    );
    let _ = writeln!(
        s,
        "| lifecycle submit → claim → succeed, {} workers (jobs/s) | {} | | | |",
        f.factories,
        thousands(f.lifecycle_jobs_per_second)
    );
    let _ = writeln!(
        s,
        "| claim latency at {} factories, p50 / p99 (ms) | {:.1} / {:.1} | | | p99 ≤ 15 ({}) |",
        f.factories,
        f.claim_ms.p50,
        f.claim_ms.p99,
        met(f.claim_ms.p99 <= 15.0)
    );
    let _ = writeln!(
        s,
        "| idle enqueue → claim, p50 / p99 (ms) | {:.1} / {:.1} | | | p50 ≤ 5 ({}) |",
        f.idle_enqueue_to_claim_ms.p50,
        f.idle_enqueue_to_claim_ms.p99,
        met(f.idle_enqueue_to_claim_ms.p50 <= 5.0)
    );
    let _ = writeln!(
        s,
        "| report-and-claim call latency in that drain, p50 / p99 (ms) | {:.1} / {:.1} | | | |",
        f.chained_call_ms.p50, f.chained_call_ms.p99
    );
    if let (Some(claims), Some(reports)) = (f.claims_per_transaction, f.reports_per_statement) {
        let _ = writeln!(
            s,
            "| the drain's claims per claim transaction / reports per report statement (served together) | {claims:.1} / {reports:.1} | | | |"
        );
    }
    let _ = writeln!(
        s,
        "| projection lag under the drain: append → on the stream in log order, p50 / p99 (ms, {} probes) | {:.1} / {:.1} | | | p99 ≤ 50 ({}) |",
        f.projection_lag_ms.samples,
        f.projection_lag_ms.p50,
        f.projection_lag_ms.p99,
        met(f.projection_lag_ms.p99 <= 50.0)
    );
    let _ = writeln!(
        s,
        "| replay, {} events (events/s) | {} | | | ≥ 100,000 ({}) |",
        thousands(f.log.events as f64),
        thousands(f.log.replay_per_second),
        met(f.log.replay_per_second >= 100_000.0)
    );
    let _ = writeln!(
        s,
        "| verify, {} events (events/s) | {} | | | |",
        thousands(f.log.events as f64),
        thousands(f.log.verify_per_second)
    );
    let _ = writeln!(
        s,
        "| server RSS with {} queued jobs (MB) | {:.0} | | | ≤ 150 ({}) |",
        thousands(f.queued as f64),
        f.rss_mb,
        met(f.rss_mb <= 150.0)
    );
    s
}

#[cfg(test)]
mod tests {
    use super::thousands;

    #[test]
    fn groups_thousands() {
        assert_eq!(thousands(0.4), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
        assert_eq!(thousands(-1234.0), "-1,234");
    }
}
