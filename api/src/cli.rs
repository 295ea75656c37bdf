//! The `gigafactory` command line.

use crate::app::{App, AppState, Settings};
use crate::auth::{generate_token, hash_token};
use crate::db;
use crate::embedded::EmbeddedPostgres;
use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "gigafactory",
    version,
    about = "Event-sourced job coordinator for fleets of AI-agent workers (factories)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API, the lease sweeper, the preemption coordinator and the projector on
    /// one port. Migrations run at start-up. Without DATABASE_URL a private PostgreSQL
    /// is started (see --data-dir). FLEET_PREEMPTION and FLEET_BUDGETS (off | shadow |
    /// on) seed the flags while the log has no value for them.
    Serve(ServeArgs),
    /// Apply the database migrations and exit.
    Migrate(DbArgs),
    /// Verify the log: every stream's hash chain, gap-free sequences and positions,
    /// the append-only trigger; prints the log digest. Exits non-zero when not ok.
    Verify(VerifyArgs),
    /// Rebuild every read model from the log alone into a fresh schema and compare it
    /// row for row with the live ones (exit 0 only when equal).
    Replay(ReplayArgs),
    /// Run N simulated factories against a running server: enroll, claim, work,
    /// report (the demo of a living fleet, and a load generator). Prints a summary.
    Simulate(SimulateArgs),
    /// The event log as JSON lines.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
}

#[derive(Args)]
struct VerifyArgs {
    #[command(flatten)]
    db: DbArgs,
    /// A noted `<position>:<digest>` the log must still reproduce.
    #[arg(long)]
    expect: Option<String>,
    /// Verify an exported copy (JSON lines) instead, with no database.
    #[arg(long)]
    from_file: Option<PathBuf>,
}

#[derive(Args)]
struct SimulateArgs {
    /// The server.
    #[arg(long, env = "GIGAFACTORY_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The admin token (an operator token is issued for the run) or an operator token.
    #[arg(long, env = "GIGAFACTORY_ADMIN_TOKEN", hide_env_values = true)]
    token: String,
    /// Simulated factories.
    #[arg(long, default_value_t = 8)]
    factories: usize,
    /// Concurrent leases per factory.
    #[arg(long, default_value_t = 1)]
    capacity: u32,
    /// Jobs to submit.
    #[arg(long, default_value_t = 200)]
    jobs: usize,
    /// Products (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "demo")]
    products: Vec<String>,
    /// Capabilities the factories offer; each job requires a random subset.
    #[arg(long, value_delimiter = ',', default_value = "rust,gpu,browser")]
    capabilities: Vec<String>,
    /// Shares of critical,high,normal,low jobs.
    #[arg(long, value_delimiter = ',', default_value = "0.05,0.2,0.5,0.25")]
    priorities: Vec<f64>,
    /// Chance that a run fails.
    #[arg(long, default_value_t = 0.05)]
    failure_rate: f64,
    /// Milliseconds of simulated work per job.
    #[arg(long, default_value_t = 0)]
    work_ms: u64,
    /// Upload a small artifact with each successful run.
    #[arg(long)]
    artifacts: bool,
    /// Jobs per claim call (1–100). Above 1, factories use the batch endpoints
    /// (docs/batch.md) and report each batch in one call; a factory takes at most its
    /// --capacity at once.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Report each run and claim the next job in one call
    /// (docs/report-and-claim.md); with --batch 1 only.
    #[arg(long, conflicts_with = "batch")]
    chain: bool,
    /// Also write the summary as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct ReplayArgs {
    #[command(flatten)]
    db: DbArgs,
    /// Replace the live read models with the rebuilt ones.
    #[arg(long)]
    swap: bool,
}

#[derive(Subcommand)]
enum EventsCommand {
    /// Export events (position order) as JSON lines, with their hashes and the exact
    /// bytes that were hashed.
    Export {
        #[command(flatten)]
        db: DbArgs,
        /// Only events after this position.
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// Only events this product's callers may see (its jobs, its factories).
        #[arg(long)]
        product: Option<String>,
        /// Write to this file instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// The pool size measured best on a 2-core database (the figures are in
/// docs/performance.md's profile rows, not repeated here): fewer backends contend
/// for the database's CPUs, and the rest of the requests queue in the pool.
const DEFAULT_MAX_CONNECTIONS: u32 = 8;

#[derive(Args)]
struct DbArgs {
    /// PostgreSQL URL. Without it, the embedded PostgreSQL in --data-dir is used
    /// (started if needed).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Where the embedded PostgreSQL keeps its data and socket. Default: as root
    /// /var/lib/gigafactory, else $XDG_DATA_HOME/gigafactory (~/.local/share/gigafactory).
    #[arg(long, env = "GIGAFACTORY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Largest number of database connections this process opens (one of them is
    /// held by the LISTEN for other processes' commits). Requests beyond it wait
    /// in the pool; claims and reports are served in shared batches, so a few
    /// connections keep a small database server busy. Raise it for a database
    /// with more cores than this 2-core default was measured on.
    #[arg(long, env = "GIGAFACTORY_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    max_connections: u32,
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "GIGAFACTORY_LISTEN", default_value = "127.0.0.1:8080")]
    listen: String,
    #[command(flatten)]
    db: DbArgs,
    /// A factory is `stale` after this many seconds without a heartbeat.
    #[arg(long, env = "GIGAFACTORY_STALE_AFTER_SECS", default_value_t = 30.0)]
    stale_after_secs: f64,
    /// A factory is `offline` after this many seconds without a heartbeat.
    #[arg(long, env = "GIGAFACTORY_OFFLINE_AFTER_SECS", default_value_t = 120.0)]
    offline_after_secs: f64,
    /// Milliseconds between lease-expiry sweeps.
    #[arg(long, env = "GIGAFACTORY_SWEEP_INTERVAL_MS", default_value_t = 1000)]
    sweep_interval_ms: u64,
    /// Largest accepted request body, in bytes (larger: 413).
    #[arg(long, env = "GIGAFACTORY_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    max_body_bytes: usize,
    /// Directory for artifact bytes (default: `artifacts` under --data-dir's default).
    #[arg(long, env = "GIGAFACTORY_ARTIFACT_DIR")]
    artifact_dir: Option<PathBuf>,
    /// An object_store URL for artifacts instead (`s3://bucket/prefix`, credentials
    /// from AWS_* variables). Several hosts need a shared store.
    #[arg(long, env = "GIGAFACTORY_ARTIFACT_STORE")]
    artifact_store: Option<String>,
    /// Largest artifact in bytes (larger: 413).
    #[arg(long, env = "GIGAFACTORY_ARTIFACT_MAX_BYTES", default_value_t = 100 * 1024 * 1024)]
    artifact_max_bytes: u64,
    /// Seconds a blob no artifact points to may stay before the sweeper removes it.
    #[arg(
        long,
        env = "GIGAFACTORY_ARTIFACT_ORPHAN_GRACE_SECS",
        default_value_t = 3600
    )]
    artifact_orphan_grace_secs: u64,
    /// Seconds a slot freed by a preemption stays reserved for the critical job.
    #[arg(long, env = "GIGAFACTORY_NOMINATION_SECS", default_value_t = 30)]
    nomination_secs: i64,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await.map(|_| true),
            Command::Migrate(args) => migrate(args).await.map(|_| true),
            Command::Verify(args) => verify(args).await,
            Command::Simulate(args) => simulate(args).await,
            Command::Replay(args) => {
                with_db(&args.db, |pool| async move {
                    crate::audit_cli::replay(&pool, args.swap).await
                })
                .await
            }
            Command::Events {
                command:
                    EventsCommand::Export {
                        db,
                        after,
                        product,
                        out,
                    },
            } => {
                with_db(&db, |pool| async move {
                    let n = match out {
                        Some(path) => {
                            let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
                            crate::audit_cli::export(&pool, after, product.as_deref(), &mut f)
                                .await?
                        }
                        None => {
                            let stdout = std::io::stdout();
                            let mut lock = stdout.lock();
                            crate::audit_cli::export(&pool, after, product.as_deref(), &mut lock)
                                .await?
                        }
                    };
                    eprintln!("exported {n} events");
                    Ok(true)
                })
                .await
            }
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("gigafactory: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,tower_http=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The database to use: DATABASE_URL, or the embedded one (started if needed).
async fn database(args: &DbArgs) -> anyhow::Result<(String, Option<EmbeddedPostgres>)> {
    if let Some(url) = &args.database_url {
        return Ok((url.clone(), None));
    }
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(EmbeddedPostgres::default_dir);
    let pg = EmbeddedPostgres::start(&dir)
        .await
        .context("starting the embedded PostgreSQL")?;
    println!(
        "embedded PostgreSQL: data {}, socket {}",
        pg.data_dir().display(),
        pg.socket_dir().display()
    );
    Ok((pg.url(), Some(pg)))
}

/// Runs `f` with a migrated pool on the configured database.
async fn with_db<F, Fut>(args: &DbArgs, f: F) -> anyhow::Result<bool>
where
    F: FnOnce(sqlx::PgPool) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let (url, embedded) = database(args).await?;
    let pool = db::connect(&url, 4)
        .await
        .context("connecting to PostgreSQL")?;
    db::migrate(&pool).await.context("applying migrations")?;
    let result = f(pool.clone()).await;
    pool.close().await;
    if let Some(pg) = embedded {
        pg.stop_if_unused().await;
    }
    result
}

async fn simulate(args: SimulateArgs) -> anyhow::Result<bool> {
    let priorities: [f64; 4] =
        args.priorities.clone().try_into().map_err(|_| {
            anyhow::anyhow!("--priorities takes four shares: critical,high,normal,low")
        })?;
    let summary = crate::simulate::simulate(crate::simulate::SimulateOptions {
        url: args.url,
        token: args.token,
        factories: args.factories,
        capacity: args.capacity,
        jobs: args.jobs,
        products: args.products,
        capabilities: args.capabilities,
        priorities,
        failure_rate: args.failure_rate,
        work: Duration::from_millis(args.work_ms),
        artifacts: args.artifacts,
        batch: args.batch,
        chain: args.chain,
        progress: true,
    })
    .await?;
    println!(
        "{} factories, {} jobs: {} runs succeeded, {} failed in {:.1} s — {:.0} jobs/s; claim latency p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms",
        summary.factories,
        summary.jobs,
        summary.runs_succeeded,
        summary.runs_failed,
        summary.seconds,
        summary.jobs_per_second,
        summary.claim_latency_ms.p50,
        summary.claim_latency_ms.p95,
        summary.claim_latency_ms.p99
    );
    for (kind, n) in &summary.errors {
        println!("errors {kind}: {n}");
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&summary)?)?;
    }
    Ok(summary.errors.is_empty())
}

async fn verify(args: VerifyArgs) -> anyhow::Result<bool> {
    let expect = match &args.expect {
        Some(e) => Some(
            gigafactory_projections::audit::parse_expectation(e)
                .ok_or_else(|| anyhow::anyhow!("--expect takes <position>:<64 hex digits>"))?,
        ),
        None => None,
    };
    match &args.from_file {
        Some(path) => crate::audit_cli::verify_file(path, expect),
        None => {
            with_db(&args.db, |pool| async move {
                crate::audit_cli::verify_db(&pool, expect).await
            })
            .await
        }
    }
}

async fn migrate(args: DbArgs) -> anyhow::Result<()> {
    let (url, embedded) = database(&args).await?;
    let pool = db::connect(&url, 2)
        .await
        .context("connecting to PostgreSQL")?;
    db::migrate(&pool).await.context("applying migrations")?;
    println!("migrations applied");
    pool.close().await;
    if let Some(pg) = embedded {
        pg.stop_if_unused().await;
    }
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let (url, embedded) = database(&args.db).await?;
    let pool = db::connect(&url, args.db.max_connections)
        .await
        .context("connecting to PostgreSQL")?;
    db::migrate(&pool).await.context("applying migrations")?;
    let admin_token = match std::env::var("GIGAFACTORY_ADMIN_TOKEN") {
        Ok(t) if !t.trim().is_empty() => t,
        _ => {
            let t = generate_token();
            // Shown once, on the terminal only (never through the log).
            println!("no GIGAFACTORY_ADMIN_TOKEN set; this run's admin token (shown once): {t}");
            t
        }
    };
    let settings = Settings {
        stale_after_secs: args.stale_after_secs,
        offline_after_secs: args.offline_after_secs,
        sweep_interval: Duration::from_millis(args.sweep_interval_ms.max(10)),
        max_body_bytes: args.max_body_bytes,
        nomination_secs: args.nomination_secs.max(1),
        // FLEET_PREEMPTION / FLEET_BUDGETS: off | shadow | on, used while the log has
        // no event for the flag (PUT /fleet/flags changes them at run time).
        flag_seeds: crate::flags::FlagSeeds::from_env().map_err(anyhow::Error::msg)?,
        sse_buffer: 1024,
        artifact_max_bytes: args.artifact_max_bytes,
        artifact_orphan_grace: Duration::from_secs(args.artifact_orphan_grace_secs),
        preemption_coordinator: true,
    };
    let artifact_dir = args.artifact_dir.clone().unwrap_or_else(|| {
        args.db
            .data_dir
            .clone()
            .unwrap_or_else(EmbeddedPostgres::default_dir)
            .join("artifacts")
    });
    let store = crate::artifacts::open(args.artifact_store.as_deref(), &artifact_dir)
        .context("opening the artifact store")?;
    let state =
        AppState::new(pool.clone(), Some(hash_token(&admin_token)), settings).with_artifacts(store);
    let app = App::start(state);
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    println!("gigafactory listening on http://{addr}");
    tracing::info!(%addr, "serving");
    app.serve(listener, shutdown_signal()).await?;
    pool.close().await;
    if let Some(pg) = embedded {
        pg.stop_if_unused().await;
    }
    Ok(())
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
