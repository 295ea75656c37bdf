//! The work every `serve` process does besides answering requests: listening for
//! appended events (one shared LISTEN connection), giving positions to new events
//! (the sequencer) and projecting them, and sweeping expired leases. Each is safe
//! with several processes on one database.

use crate::app::AppState;
use crate::commands::{execute, ExecError};
use gigafactory_domain::job::{Job, JobCommand, JobError};
use gigafactory_domain::{FactoryId, JobId, ProductId};
use gigafactory_projections::log::{assign_positions, EVENTS_CHANNEL};
use gigafactory_projections::{jobs, projector};
use rand::Rng;
use sqlx::postgres::PgListener;
use std::time::Duration;
use tokio::task::JoinHandle;

/// How often the log worker looks for work without a wake-up.
const LOG_TICK: Duration = Duration::from_millis(200);
/// How often the projection-lag gauges are refreshed (a query: not every round).
const LAG_GAUGE_EVERY: Duration = Duration::from_secs(1);

/// Starts the listener, the log worker (sequencer + projector), the sweeper, the
/// notifier and the table maintainer.
pub fn spawn(state: &AppState) -> Vec<JoinHandle<()>> {
    vec![
        tokio::spawn(listen(state.clone())),
        tokio::spawn(log_worker(state.clone())),
        tokio::spawn(sweeper(state.clone())),
        tokio::spawn(notifier(state.clone())),
        tokio::spawn(maintainer(state.clone())),
    ]
}

/// Analyses and vacuums the busy tables when autovacuum has not (its own task: a
/// vacuum must not delay the lease sweeper).
async fn maintainer(state: AppState) {
    loop {
        if let Err(e) = crate::maintenance::refresh(&state.pool).await {
            tracing::warn!(error = %e, "table maintenance failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(state.settings.sweep_interval) => {}
            _ = state.shutdown.cancelled() => return,
        }
    }
}

/// How long the notifier trusts what it last saw of the other processes.
const OTHERS_CHECKED_EVERY: Duration = Duration::from_secs(1);

/// Tells the other processes about commits, one NOTIFY for however many commits
/// happened while the previous one was being sent — and none while no other
/// Gigafactory process is connected to the database (looked up at most once per
/// [`OTHERS_CHECKED_EVERY`]): a NOTIFY is a transaction with its own commit (a WAL
/// flush), and a lone process's come back only to be ignored. A process that
/// connects meanwhile misses at most that long of wake-ups; its long polls and log
/// worker look on their own timers anyway, and it looks once when it starts
/// listening.
async fn notifier(state: AppState) {
    let own_name = crate::db::pool_name(&state.pool);
    let mut others: Option<(tokio::time::Instant, bool)> = None;
    loop {
        tokio::select! {
            _ = state.notify_others.notified() => {}
            _ = state.shutdown.cancelled() => return,
        }
        let payload = state.notify_payload();
        let stale = others.is_none_or(|(at, _)| at.elapsed() >= OTHERS_CHECKED_EVERY);
        if stale {
            let present = match gigafactory_projections::log::others_connected(
                &state.pool,
                &own_name,
            )
            .await
            {
                Ok(present) => present,
                // Unsure: tell them.
                Err(e) => {
                    tracing::debug!(error = %e, "could not look for other processes");
                    true
                }
            };
            others = Some((tokio::time::Instant::now(), present));
        }
        if others.is_some_and(|(_, present)| !present) {
            continue;
        }
        if let Err(e) = gigafactory_projections::log::notify_committed(&state.pool, &payload).await
        {
            tracing::warn!(error = %e, "could not notify the other processes; trying again");
            // Keep what the payload said (claims to wake) for the next attempt.
            if payload.ends_with(":claims") {
                state
                    .claimable_pending
                    .store(true, std::sync::atomic::Ordering::SeqCst);
            }
            state.notify_others.notify_one();
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = state.shutdown.cancelled() => return,
            }
        }
    }
}

/// Wakes claim long polls and the log worker whenever any process commits events.
async fn listen(state: AppState) {
    loop {
        let result = async {
            let mut listener = PgListener::connect_with(&state.pool).await?;
            listener.listen(EVENTS_CHANNEL).await?;
            // Anything appended while we were not listening: look now.
            state.wake_all();
            loop {
                tokio::select! {
                    n = listener.recv() => state.on_notification(n?.payload()),
                    _ = state.shutdown.cancelled() => return Ok::<_, sqlx::Error>(()),
                }
            }
        }
        .await;
        match result {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "event listener lost its connection; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = state.shutdown.cancelled() => return,
                }
            }
        }
    }
}

/// Gives positions to committed events and projects them, whenever woken.
async fn log_worker(state: AppState) {
    let mut lag_measured = tokio::time::Instant::now() - LAG_GAUGE_EVERY;
    let mut projected_at = tokio::time::Instant::now() - PROJECT_AT_MOST_EVERY;
    loop {
        // The projector's pass is a transaction of its own, and on the command path
        // it finds nothing to apply (every command writes its read models): it runs
        // at most every `PROJECT_AT_MOST_EVERY`, the sequencer on every wake-up.
        let project = projected_at.elapsed() >= PROJECT_AT_MOST_EVERY;
        if project {
            projected_at = tokio::time::Instant::now();
        }
        if let Err(e) = catch_up_with(&state, project).await {
            tracing::warn!(error = %e, "log worker failed a round");
        }
        state.positioned.notify_waiters();
        if lag_measured.elapsed() >= LAG_GAUGE_EVERY {
            lag_measured = tokio::time::Instant::now();
            if let Err(e) = crate::metrics::record_projection_lag(&state).await {
                tracing::debug!(error = %e, "projection lag not measured");
            }
        }
        // A pass that left the projector out comes back for it when it is due.
        let tick = if project {
            LOG_TICK
        } else {
            PROJECT_AT_MOST_EVERY.saturating_sub(projected_at.elapsed())
        };
        tokio::select! {
            _ = state.log_wake.notified() => {}
            _ = tokio::time::sleep(tick) => {}
            _ = state.shutdown.cancelled() => return,
        }
        // The claims the same commit woke go first (see `LOG_PASS_AFTER_WAKE`).
        tokio::select! {
            _ = tokio::time::sleep(LOG_PASS_AFTER_WAKE) => {}
            _ = state.shutdown.cancelled() => return,
        }
    }
}

/// How long the log worker waits after a wake-up before its pass. A commit wakes
/// the log worker and the claims it made work for at the same moment, and on two
/// cores the pass (the sequencer call, the projector's transaction and their
/// commits) ran beside the claim, statement for statement: waiting this long let
/// an idle fleet's claim finish first (idle enqueue → claim p50 6.6 → 5.8–6.2 ms in
/// alternating runs, docs/performance.md), for as much more projection lag; under
/// load a pass takes in the commits of the wait too.
const LOG_PASS_AFTER_WAKE: Duration = Duration::from_millis(3);

/// How often, at most, the log worker runs the projector. Only events whose own
/// transaction did not write their read models (tools, tests: `log::append`) wait
/// for it; the checkpoints move on with it.
const PROJECT_AT_MOST_EVERY: Duration = Duration::from_millis(50);

/// Most events one sequencer call positions.
const SEQUENCER_BATCH: i32 = 1000;
/// Most events one projector transaction applies.
const PROJECTOR_BATCH: i64 = 500;

/// Gives positions to what has committed and projects every positioned event (if
/// another process holds the projector lock, waits for it to get there). One pass
/// when the log is quiet: a round that positioned less than a full batch and read
/// less than a full projector batch has nothing left behind — whatever commits
/// meanwhile wakes the log worker again. (Each statement of a round waits its turn
/// for a CPU under load, so a round's statements are its latency.)
pub async fn catch_up(state: &AppState) -> Result<(), anyhow::Error> {
    catch_up_with(state, true).await
}

/// [`catch_up`], with the projector only if `project`.
async fn catch_up_with(state: &AppState, project: bool) -> Result<(), anyhow::Error> {
    loop {
        let given = assign_positions(&state.pool, SEQUENCER_BATCH).await?;
        if given > 0 {
            // Streams read the log, not the read models (which every command wrote in
            // its own transaction): new positions are readable now.
            state.positioned.notify_waiters();
        }
        if !project {
            if given >= i64::from(SEQUENCER_BATCH) {
                continue;
            }
            return Ok(());
        }
        let mut projected = 0;
        let mut busy = false;
        loop {
            match projector::run_once(&state.pool, PROJECTOR_BATCH).await? {
                Some(n) => {
                    projected += n;
                    if (n as i64) < PROJECTOR_BATCH {
                        break;
                    }
                }
                None => {
                    busy = true;
                    break;
                }
            }
        }
        if projected > 0 {
            // Positions another process gave, projected here: readable too.
            state.positioned.notify_waiters();
        }
        let more_to_position = given >= i64::from(SEQUENCER_BATCH);
        if busy {
            if !more_to_position
                && projector::low_water_mark(&state.pool).await?
                    >= projector::log_head(&state.pool).await?
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        } else if !more_to_position {
            return Ok(());
        }
    }
}

/// Ends expired leases, releases the leases of revoked factories, and runs the
/// preemption coordinator.
async fn sweeper(state: AppState) {
    let mut last_orphan_sweep = std::time::Instant::now();
    loop {
        if last_orphan_sweep.elapsed() >= std::time::Duration::from_secs(60) {
            last_orphan_sweep = std::time::Instant::now();
            if let Err(e) = crate::artifacts::sweep_orphans(&state).await {
                tracing::warn!(error = %e, "artifact orphan sweep failed");
            }
        }
        if let Err(e) = sweep(&state).await {
            tracing::warn!(error = %e, "lease sweeper failed a round");
        }
        if state.settings.preemption_coordinator {
            if let Err(e) = crate::preemption::preemption_round(&state).await {
                tracing::warn!(error = %e, "preemption round failed");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(state.settings.sweep_interval) => {}
            _ = state.shutdown.cancelled() => return,
        }
    }
}

/// One sweep. Several sweepers may pick the same job: the job's stream lock makes
/// them take turns, and the loser finds nothing to expire.
pub async fn sweep(state: &AppState) -> Result<usize, anyhow::Error> {
    let mut conn = state.pool.acquire().await?;
    let now = state.clock.now(&mut conn).await?;
    let expired = jobs::expired_leases(&mut conn, now, 200).await?;
    let revoked = jobs::leased_by_revoked(&mut conn, 200).await?;
    drop(conn);
    let mut ended = 0;
    for (job_id, product_id) in expired {
        let stream = JobId(job_id).stream_id(&ProductId(product_id));
        let jitter: f64 = rand::thread_rng().gen();
        match execute::<Job, _>(state, &stream, |now| JobCommand::ExpireLease {
            jitter,
            now,
        })
        .await
        {
            Ok(done) if !done.events.is_empty() => {
                ended += 1;
                metrics::counter!("gigafactory_lease_expiries_total").increment(1);
                tracing::info!(job_id = %job_id, "lease expired");
            }
            Ok(_) | Err(ExecError::Domain(JobError::NotExpired)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    for (job_id, product_id, factory_id) in revoked {
        let stream = JobId(job_id).stream_id(&ProductId(product_id));
        let factory_id = FactoryId(factory_id);
        match execute::<Job, _>(state, &stream, |now| JobCommand::RevokeLease {
            factory_id,
            now,
        })
        .await
        {
            Ok(_) | Err(ExecError::Domain(JobError::Fenced { .. })) => ended += 1,
            Err(e) => return Err(e.into()),
        }
    }
    if ended > 0 {
        state.wake_all();
    }
    Ok(ended)
}
