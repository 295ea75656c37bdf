//! `gigafactory-bench`: Gigafactory and graphile-worker side by side, each on a fresh
//! database of one PostgreSQL server, in one run; prints one table of figures, ratios
//! and targets (docs/performance.md). Speed is measured here, never asserted in tests.

mod client;
mod db;
mod fleet;
mod graphile;
mod logbench;
mod report;
mod server;
mod stats;

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;

/// Runs the side-by-side benchmark and prints the table.
#[derive(Debug, Clone, Parser)]
#[command(name = "gigafactory-bench", version)]
pub struct Args {
    /// PostgreSQL server to create the fresh databases on (any database name; the
    /// run creates and drops its own). Default: TEST_DATABASE_URL, DATABASE_URL, else
    /// postgres://postgres@127.0.0.1:5432/postgres.
    #[arg(long)]
    database_url: Option<String>,
    /// The `gigafactory` binary to benchmark (default: next to this one).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// The folder with drain.mjs and graphile-worker installed (`npm ci` there).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/graphile"))]
    graphile_dir: PathBuf,
    /// Jobs in each drain.
    #[arg(long, default_value_t = 20_000)]
    jobs: usize,
    /// Factories (Gigafactory) and worker concurrency (graphile-worker).
    #[arg(long, default_value_t = 32)]
    factories: usize,
    /// Most jobs per batch claim (and per batch report) in the batched drain; each
    /// factory's capacity there.
    #[arg(long, default_value_t = 50)]
    batch: usize,
    /// Jobs in the lifecycle scenario.
    #[arg(long, default_value_t = 5_000)]
    lifecycle_jobs: usize,
    /// Samples of the idle enqueue → claim latency.
    #[arg(long, default_value_t = 200)]
    idle_samples: usize,
    /// Queued jobs when the server's memory is read.
    #[arg(long, default_value_t = 100_000)]
    queued: usize,
    /// Events in the replay/verify log.
    #[arg(long, default_value_t = 1_000_000)]
    replay_events: i64,
    /// Events the replay reads and applies per batch.
    #[arg(long, default_value_t = gigafactory_projections::replay::REPLAY_BATCH)]
    replay_batch: i64,
    /// Tiny sizes, to check that the benchmark still runs (CI).
    #[arg(long)]
    smoke: bool,
    /// Also write every figure as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Run only the replay/verify scenario and print its figures as JSON (for
    /// profiling the log's throughput without the drains).
    #[arg(long)]
    log_only: bool,
    /// Run only the one-job drain (with its claim latency and projection lag) and
    /// graphile-worker's default drain, and print those figures as JSON (for A/B runs
    /// while profiling).
    #[arg(long)]
    drain_only: bool,
    /// Run only the idle enqueue → claim scenario (a fresh server, the factories in
    /// their long polls) and print its figures as JSON.
    #[arg(long)]
    idle_only: bool,
}

impl Args {
    fn sized(mut self) -> Self {
        if self.smoke {
            self.jobs = 300;
            self.lifecycle_jobs = 100;
            self.idle_samples = 20;
            self.queued = 500;
            self.replay_events = 3_000;
        }
        self
    }

    fn server_url(&self) -> String {
        self.database_url
            .clone()
            .or_else(|| std::env::var("TEST_DATABASE_URL").ok())
            .or_else(|| std::env::var("DATABASE_URL").ok())
            .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into())
    }

    fn server_bin(&self) -> anyhow::Result<PathBuf> {
        match &self.server_bin {
            Some(p) => Ok(p.clone()),
            None => Ok(std::env::current_exe()?
                .parent()
                .context("this binary's folder")?
                .join("gigafactory")),
        }
    }
}

fn main() -> std::process::ExitCode {
    tracing_subscriber_init();
    let args = Args::parse().sized();
    let rt = tokio::runtime::Runtime::new().expect("a tokio runtime");
    match rt.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gigafactory-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn tracing_subscriber_init() {
    // Diagnostics go to stderr; stdout is the table only.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
}

async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=100).contains(&args.batch),
        "--batch must be between 1 and 100 (the batch endpoints' limit)"
    );
    let bin = args.server_bin()?;
    anyhow::ensure!(
        bin.exists(),
        "no server binary at {} (build it: cargo build --release --bin gigafactory)",
        bin.display()
    );
    let dbs = db::Databases::connect(&args.server_url()).await?;
    if args.log_only {
        step(&format!(
            "replay and verify on {} events",
            args.replay_events
        ));
        let result = async {
            let url = dbs.fresh("replay").await?;
            logbench::measure(&url, args.replay_events, args.replay_batch).await
        }
        .await;
        dbs.drop_all().await;
        println!("{}", serde_json::to_string_pretty(&result?)?);
        return Ok(());
    }
    if args.drain_only {
        let result = drains_only(&args, &bin, &dbs).await;
        dbs.drop_all().await;
        println!("{}", serde_json::to_string_pretty(&result?)?);
        return Ok(());
    }
    if args.idle_only {
        let result = idle_only(&args, &bin, &dbs).await;
        dbs.drop_all().await;
        println!("{}", serde_json::to_string_pretty(&result?)?);
        return Ok(());
    }
    let result = scenarios(&args, &bin, &dbs).await;
    dbs.drop_all().await;
    let figures = result?;
    print!("{}", report::table(&figures));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&figures)?)?;
    }
    Ok(())
}

/// A server on a fresh database, with an operator of product `bench` and
/// `args.factories` factories of `capacity` enrolled for it.
struct Fleet {
    server: server::Server,
    api: client::Api,
    operator: String,
    factories: Vec<String>,
}

async fn fleet_on(
    args: &Args,
    bin: &std::path::Path,
    dbs: &db::Databases,
    work: &std::path::Path,
    name: &str,
    capacity: usize,
) -> anyhow::Result<Fleet> {
    let url = dbs.fresh(name).await?;
    let server = server::Server::start(bin, &url, work).await?;
    let api = client::Api::new(&server.url, args.factories * 2 + 8)?;
    let operator = api.operator_token(&server.admin_token, &["bench"]).await?;
    let factories = api
        .enroll(&operator, "bench", args.factories, capacity)
        .await?;
    Ok(Fleet {
        server,
        api,
        operator,
        factories,
    })
}

/// This run's scratch folder (the servers' artifacts), created.
fn work_dir() -> anyhow::Result<PathBuf> {
    let work = std::env::temp_dir().join(format!("gigafactory-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    Ok(work)
}

/// The one-job drain on a fresh database and server (left running for the
/// scenarios that follow on it): its figures, the server, the client, the operator
/// token and the factories' tokens.
async fn one_job_drain(
    args: &Args,
    bin: &std::path::Path,
    dbs: &db::Databases,
    work: &std::path::Path,
    calls: fleet::Calls,
) -> anyhow::Result<(
    fleet::Drain,
    server::Server,
    client::Api,
    String,
    Vec<String>,
)> {
    let Fleet {
        server,
        api,
        operator,
        factories,
    } = fleet_on(args, bin, dbs, work, calls.name(), 1).await?;
    let probe = api.operator_token(&server.admin_token, &["probe"]).await?;
    step(&format!("submitting {} jobs (untimed)", args.jobs));
    api.submit_many(&operator, "bench", args.jobs, args.factories)
        .await?;
    dbs.checkpoint().await?;
    step(&format!("draining with Gigafactory ({})", calls.name()));
    let drain = fleet::drain(&api, &factories, args.jobs, &probe, "probe", calls).await?;
    Ok((drain, server, api, operator, factories))
}

/// graphile-worker's drain in `mode` (`default` or `batched`) on a fresh database.
async fn graphile_drain(
    args: &Args,
    dbs: &db::Databases,
    mode: &str,
) -> anyhow::Result<graphile::GraphileDrain> {
    step(&format!("draining with graphile-worker ({mode} mode)"));
    let url = dbs.fresh(&format!("graphile_{mode}")).await?;
    graphile::drain(&args.graphile_dir, &url, args.jobs, args.factories, mode).await
}

/// `--drain-only`: the one-job drains (claim then report; report and claim in one
/// call) against graphile-worker's default drain.
async fn drains_only(
    args: &Args,
    bin: &std::path::Path,
    dbs: &db::Databases,
) -> anyhow::Result<serde_json::Value> {
    let work = work_dir()?;
    let (drain, server, ..) =
        one_job_drain(args, bin, dbs, &work, fleet::Calls::ClaimThenReport).await?;
    server.stop().await;
    let (chained, server, ..) =
        one_job_drain(args, bin, dbs, &work, fleet::Calls::ReportAndClaim).await?;
    server.stop().await;
    let graphile = graphile_drain(args, dbs, "default").await?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(serde_json::json!({
        "drainJobsPerSecond": drain.jobs_per_second(),
        "graphileJobsPerSecond": graphile.jobs_per_second,
        "ratio": drain.jobs_per_second() / graphile.jobs_per_second,
        "claimMs": drain.claim_ms,
        "projectionLagMs": drain.projection_lag_ms,
        "claimsPerTransaction": drain.claims_per_batch,
        "reportsPerStatement": drain.reports_per_batch,
        "chainedDrainJobsPerSecond": chained.jobs_per_second(),
        "chainedRatio": chained.jobs_per_second() / graphile.jobs_per_second,
        "chainedCallMs": chained.claim_ms,
        "chainedProjectionLagMs": chained.projection_lag_ms,
        "chainedClaimsPerTransaction": chained.claims_per_batch,
    }))
}

/// `--idle-only`: the idle enqueue → claim latency on a fresh server.
async fn idle_only(
    args: &Args,
    bin: &std::path::Path,
    dbs: &db::Databases,
) -> anyhow::Result<serde_json::Value> {
    let work = work_dir()?;
    let Fleet {
        server,
        api,
        operator,
        factories,
    } = fleet_on(args, bin, dbs, &work, "idle", 1).await?;
    step("idle enqueue → claim");
    let idle =
        fleet::idle_enqueue_to_claim(&api, &operator, "bench", &factories, args.idle_samples).await;
    server.stop().await;
    let _ = std::fs::remove_dir_all(&work);
    Ok(serde_json::json!({ "idleEnqueueToClaimMs": idle? }))
}

fn step(what: &str) {
    tracing::info!("{what}");
}

async fn scenarios(
    args: &Args,
    bin: &std::path::Path,
    dbs: &db::Databases,
) -> anyhow::Result<report::Figures> {
    let work = work_dir()?;
    let machine = report::Machine::read(dbs).await;

    // Gigafactory: drain (+ projection lag), idle latency, lifecycle — one server.
    let (drain, server, api, operator, factories) =
        one_job_drain(args, bin, dbs, &work, fleet::Calls::ClaimThenReport).await?;
    // The one-job drain with the report and the next claim in one call, right after
    // (the first server idles meanwhile).
    let (chained, chained_server, ..) =
        one_job_drain(args, bin, dbs, &work, fleet::Calls::ReportAndClaim).await?;
    chained_server.stop().await;
    step("idle enqueue → claim");
    let idle =
        fleet::idle_enqueue_to_claim(&api, &operator, "bench", &factories, args.idle_samples)
            .await?;
    step("lifecycle");
    let lifecycle =
        fleet::lifecycle(&api, &operator, "bench", &factories, args.lifecycle_jobs).await?;
    server.stop().await;

    // Gigafactory's batch endpoints, on a fresh database and server.
    let Fleet {
        server,
        api,
        operator,
        factories,
    } = fleet_on(args, bin, dbs, &work, "drain_batched", args.batch).await?;
    step(&format!("submitting {} jobs (untimed)", args.jobs));
    api.submit_many(&operator, "bench", args.jobs, args.factories)
        .await?;
    dbs.checkpoint().await?;
    step(&format!(
        "draining with Gigafactory, batches of {}",
        args.batch
    ));
    let batched_seconds = fleet::drain_batched(&api, &factories, args.jobs, args.batch).await?;
    server.stop().await;

    // graphile-worker, default and batched, each on its own fresh database.
    let graphile = graphile_drain(args, dbs, "default").await?;
    let graphile_batched = graphile_drain(args, dbs, "batched").await?;

    // Memory with a deep queue.
    step(&format!(
        "queueing {} jobs for the memory reading",
        args.queued
    ));
    let url = dbs.fresh("queued").await?;
    let server = server::Server::start(bin, &url, &work).await?;
    let api = client::Api::new(&server.url, args.factories + 8)?;
    let operator = api.operator_token(&server.admin_token, &["bench"]).await?;
    api.submit_many(&operator, "bench", args.queued, args.factories)
        .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_bytes = server.rss_bytes()?;
    server.stop().await;

    step(&format!(
        "replay and verify on {} events",
        args.replay_events
    ));
    let url = dbs.fresh("replay").await?;
    let log = logbench::measure(&url, args.replay_events, args.replay_batch).await?;

    let _ = std::fs::remove_dir_all(&work);
    Ok(report::Figures {
        machine,
        factories: args.factories,
        drain_jobs: args.jobs,
        drain_jobs_per_second: drain.jobs_per_second(),
        batch: args.batch,
        batched_drain_jobs_per_second: args.jobs as f64 / batched_seconds,
        claim_ms: drain.claim_ms,
        projection_lag_ms: drain.projection_lag_ms,
        chained_drain_jobs_per_second: chained.jobs_per_second(),
        chained_call_ms: chained.claim_ms,
        chained_claims_per_transaction: chained.claims_per_batch,
        claims_per_transaction: drain.claims_per_batch,
        reports_per_statement: drain.reports_per_batch,
        lifecycle_jobs: args.lifecycle_jobs,
        lifecycle_jobs_per_second: lifecycle,
        idle_enqueue_to_claim_ms: idle,
        graphile_version: graphile.version.clone(),
        graphile_jobs_per_second: graphile.jobs_per_second,
        graphile_batched_jobs_per_second: graphile_batched.jobs_per_second,
        queued: args.queued,
        rss_mb: rss_bytes as f64 / (1024.0 * 1024.0),
        log,
    })
}
