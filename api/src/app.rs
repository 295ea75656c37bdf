//! The server's shared state, the router and the serve loop.

use crate::background;
use crate::routes;
use axum::Router;
use gigafactory_projections::EventRecord;
use sqlx::PgPool;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Tunables of one `serve` process.
#[derive(Debug, Clone)]
pub struct Settings {
    /// A factory is `stale` after this long without a heartbeat.
    pub stale_after_secs: f64,
    /// A factory is `offline` after this long without a heartbeat.
    pub offline_after_secs: f64,
    /// How often the lease sweeper runs.
    pub sweep_interval: Duration,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// How long a slot freed by a preemption stays reserved for the critical job.
    pub nomination_secs: i64,
    /// Flag values from the environment, used while the log has none.
    pub flag_seeds: crate::flags::FlagSeeds,
    /// Largest artifact accepted (larger: 413, nothing stored).
    pub artifact_max_bytes: u64,
    /// Blobs no artifact points to are removed once this old.
    pub artifact_orphan_grace: Duration,
    /// Messages buffered per event-stream subscriber before it counts as too slow
    /// (it then gets `resync` and is closed).
    pub sse_buffer: usize,
    /// Run the preemption coordinator. Off only to compare with a server that lacks
    /// the feature (tests); the flag is how operators turn preemption off.
    pub preemption_coordinator: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            stale_after_secs: 30.0,
            offline_after_secs: 120.0,
            sweep_interval: Duration::from_secs(1),
            max_body_bytes: 1024 * 1024,
            nomination_secs: 30,
            flag_seeds: crate::flags::FlagSeeds::default(),
            sse_buffer: 1024,
            artifact_max_bytes: 100 * 1024 * 1024,
            artifact_orphan_grace: Duration::from_secs(3600),
            preemption_coordinator: true,
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    /// SHA-256 (hex) of the admin token, if one is configured.
    pub admin_token_hash: Option<String>,
    /// Claim long polls wait on it: a commit that may free work wakes one waiting
    /// claim, which looks alone, then wakes the rest through [`Self::wake_the_rest`]
    /// (see `routes::leases::claim`).
    pub wake: Arc<Notify>,
    /// Wakes every waiting claim at once; claims woken together are served together
    /// (one transaction for many factories), so an idle fleet does not stampede the
    /// database.
    pub wake_the_rest: Arc<Notify>,
    /// Wakes the log worker (sequencer + projector).
    pub log_wake: Arc<Notify>,
    /// Woken after each log-worker round: new positions may be readable (streams).
    pub positioned: Arc<Notify>,
    /// Asks the notifier to tell the other processes that events were committed.
    pub notify_others: Arc<Notify>,
    /// Whether a commit since the last NOTIFY may have made work claimable.
    pub claimable_pending: Arc<AtomicBool>,
    /// This process's id in NOTIFY payloads (its own notifications are ignored).
    pub instance: Arc<str>,
    /// Cancelled on SIGTERM: long polls answer 204, workers stop.
    pub shutdown: CancellationToken,
    pub settings: Arc<Settings>,
    /// The clock commands read (the database's; shifted in simulations).
    pub clock: crate::commands::Clock,
    /// Where artifact bytes live (in memory until [`AppState::with_artifacts`]).
    pub artifacts: Arc<dyn object_store::ObjectStore>,
    /// Jobs' products, remembered (a factory write's scope check and stream id).
    pub job_products: Arc<crate::job_products::JobProducts>,
    /// Token lookups and reports of concurrent requests, served in batches.
    pub coalesced: Arc<crate::coalesced::Coalesced>,
}

/// How many jobs' products a process remembers (about 100 bytes each): more than
/// a large fleet holds leases on at once.
const JOB_PRODUCTS_REMEMBERED: usize = 50_000;

impl AppState {
    pub fn new(pool: PgPool, admin_token_hash: Option<String>, settings: Settings) -> Self {
        Self {
            pool,
            admin_token_hash,
            wake: Arc::new(Notify::new()),
            wake_the_rest: Arc::new(Notify::new()),
            log_wake: Arc::new(Notify::new()),
            positioned: Arc::new(Notify::new()),
            notify_others: Arc::new(Notify::new()),
            claimable_pending: Arc::new(AtomicBool::new(false)),
            instance: uuid::Uuid::new_v4().simple().to_string().into(),
            shutdown: CancellationToken::new(),
            settings: Arc::new(settings),
            clock: crate::commands::Clock::default(),
            artifacts: Arc::new(object_store::memory::InMemory::new()),
            job_products: Arc::new(crate::job_products::JobProducts::new(
                JOB_PRODUCTS_REMEMBERED,
            )),
            coalesced: Arc::default(),
        }
    }

    /// Uses this blob store for artifacts.
    pub fn with_artifacts(mut self, store: Arc<dyn object_store::ObjectStore>) -> Self {
        self.artifacts = store;
        self
    }

    /// Called after a transaction that appended `events` committed: wakes this
    /// process's log worker (and a waiting claim, when the events may have made
    /// work claimable) at once, and has the notifier tell the other processes.
    /// (A NOTIFY inside the appending transaction would serialise every commit on
    /// PostgreSQL's notification-queue lock, held across the commit's WAL flush.)
    pub fn events_committed(&self, events: &[EventRecord]) {
        if events.iter().any(|e| may_free_work(&e.event_type)) {
            self.work_committed();
        } else {
            self.log_wake.notify_one();
            self.notify_others.notify_one();
        }
    }

    /// Called after a commit that may have made work claimable.
    pub fn work_committed(&self) {
        self.claimable_pending.store(true, Ordering::SeqCst);
        self.wake_all();
        self.notify_others.notify_one();
    }

    /// A NOTIFY payload: this process's instance and whether claims should wake.
    pub fn notify_payload(&self) -> String {
        let claims = self.claimable_pending.swap(false, Ordering::SeqCst);
        format!(
            "{}:{}",
            self.instance,
            if claims { "claims" } else { "log" }
        )
    }

    /// Reacts to another process's NOTIFY (our own come back too: ignored).
    pub fn on_notification(&self, payload: &str) {
        match payload.split_once(':') {
            Some((instance, _)) if instance == &*self.instance => {}
            Some((_, "log")) => self.log_wake.notify_one(),
            _ => self.wake_all(),
        }
    }

    /// Something may have become claimable or projectable: wake a waiting claim
    /// (which then wakes the rest) and the log worker.
    pub fn wake_all(&self) {
        self.wake.notify_one();
        self.log_wake.notify_one();
    }
}

/// A running server: its state and background workers.
pub struct App {
    pub state: AppState,
    pub router: Router,
    pub workers: Vec<JoinHandle<()>>,
}

impl App {
    /// Builds the router and starts the background workers.
    pub fn start(state: AppState) -> Self {
        crate::metrics::handle();
        let workers = background::spawn(&state);
        let router = routes::router(state.clone());
        Self {
            state,
            router,
            workers,
        }
    }

    /// Serves until `stop` resolves, then: long polls end (204), in-flight requests
    /// finish, workers stop.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let shutdown = self.state.shutdown.clone();
        let signal = async move {
            stop.await;
            tracing::info!("shutting down: ending long polls, draining requests");
            shutdown.cancel();
        };
        let result = axum::serve(listener, self.router)
            .with_graceful_shutdown(signal)
            .await;
        self.state.shutdown.cancel();
        for w in self.workers {
            let _ = w.await;
        }
        result
    }
}

/// Whether an event of this type may make a job claimable for another factory (a
/// new or requeued job, a changed priority or flag...). Conservative: only the
/// types known not to are listed. A succeeded run frees only its own factory's
/// slot, and that factory is the one reporting (a claim of its own already waiting
/// at capacity looks again within the 500 ms recheck).
fn may_free_work(event_type: &str) -> bool {
    !matches!(
        event_type,
        "LeaseGranted"
            | "LeaseRenewed"
            | "RunSucceeded"
            | "JobShipped"
            | "RunProgressed"
            | "ArtifactAdded"
            | "ArtifactDeleted"
            | "PreemptionShadowed"
    )
}
