//! The preemption coordinator (behind `FLEET_PREEMPTION`). Each round, in every
//! `serve` process: a queued critical job that no capable factory has room for may
//! evict the lowest-priority, latest-started running job on a capable factory.
//!
//! - `off`: nothing is read or written (exactly the behaviour without preemption).
//! - `shadow`: the decision is recorded on the critical job (`PreemptionShadowed`,
//!   once per victim); nothing else changes.
//! - `on`: one transaction ends the victim's lease (`LeasePreempted`: checkpoint kept,
//!   no attempt used, queued again, its holder's next heartbeat says stop) and reserves
//!   the freed slot for the critical job (`JobNominated`, until it expires).

use crate::app::AppState;
use crate::commands::{decide_in, lock_streams, stream_lock_key, ExecError};
use crate::scheduling::weights_for;
use gigafactory_domain::flags::{Flag, FlagMode};
use gigafactory_domain::job::{Job, JobCommand};
use gigafactory_domain::scheduler::{
    select_with_preemption, FleetFactory, JobCandidate, RunningJob, SchedulingContext, Weights,
};
use gigafactory_domain::{FactoryId, JobId, ProductId};
use gigafactory_projections::{factories, jobs};
use std::collections::BTreeMap;

/// Most preemptions one round performs.
const MAX_PER_ROUND: usize = 16;

/// Runs rounds until no decision is left (or the per-round bound). Returns how many
/// preemptions were executed (on) or recorded (shadow).
pub async fn preemption_round(state: &AppState) -> Result<usize, anyhow::Error> {
    let mut conn = state.pool.acquire().await?;
    let mode = crate::flags::mode(state, &mut conn, Flag::Preemption).await?;
    if mode == FlagMode::Off {
        return Ok(0);
    }
    let mut done = 0;
    let mut shadowed: Vec<(JobId, JobId)> = Vec::new();
    while done < MAX_PER_ROUND {
        let now = state.clock.now(&mut conn).await?;
        let waiting = jobs::critical_waiting(&mut conn, now, 50).await?;
        if waiting.is_empty() {
            break;
        }
        let candidates: Vec<JobCandidate> = waiting
            .into_iter()
            .map(crate::scheduling::candidate)
            .collect();
        let fleet: Vec<FleetFactory> =
            factories::fleet_load(&mut conn, now, state.settings.offline_after_secs)
                .await?
                .into_iter()
                .map(|f| FleetFactory {
                    factory_id: FactoryId(f.factory_id),
                    product_ids: f.product_ids.into_iter().map(ProductId).collect(),
                    capabilities: f.capabilities,
                    capacity: f.capacity.max(0) as u32,
                    load: f.load.max(0) as u32,
                })
                .collect();
        let running: Vec<RunningJob> = jobs::running(&mut conn, now)
            .await?
            .into_iter()
            .map(|r| RunningJob {
                job_id: JobId(r.job_id),
                product_id: ProductId(r.product_id),
                priority: r.priority.parse().unwrap_or_default(),
                factory_id: FactoryId(r.factory_id),
                started_at: r.started_at,
            })
            .collect();
        let products: Vec<String> = candidates.iter().map(|c| c.product_id.0.clone()).collect();
        let weights = weights_for(&mut conn, &products, None).await?;
        let defaults = Weights::defaults();
        let ctx = SchedulingContext {
            now,
            running_by_product: BTreeMap::new(),
        };
        // In shadow mode nothing changes, so the same decisions come back. Replay what
        // `on` would do next: the critical jobs already decided this round are placed
        // (left out) and their victims evicted (left out); the freed slot stays taken
        // by the nomination, so the factories' loads stay as read. The decisions are
        // deterministic, so later rounds repeat them and the aggregate records each
        // (critical job, victim) pair once.
        let candidates: Vec<JobCandidate> = candidates
            .into_iter()
            .filter(|c| !shadowed.iter().any(|(j, _)| *j == c.job_id))
            .collect();
        let running: Vec<RunningJob> = running
            .into_iter()
            .filter(|r| !shadowed.iter().any(|(_, v)| *v == r.job_id))
            .collect();
        let Some(decision) = select_with_preemption(&candidates, &running, &fleet, &ctx, |p| {
            weights.get(p).unwrap_or(&defaults)
        }) else {
            break;
        };
        let critical = candidates
            .iter()
            .find(|c| c.job_id == decision.for_job)
            .expect("decided for a candidate");
        let victim = running
            .iter()
            .find(|r| r.job_id == decision.evict)
            .expect("victim is running");
        let critical_stream = critical.job_id.stream_id(&critical.product_id);
        let victim_stream = victim.job_id.stream_id(&victim.product_id);
        let mut tx = state.pool.begin().await?;
        let outcome = async {
            // Both streams' locks at once, in the global order: a batch report holding
            // one of them while waiting for the other cannot deadlock with us.
            let streams: &[&str] = match mode {
                FlagMode::Shadow => &[&critical_stream],
                _ => &[&victim_stream, &critical_stream],
            };
            let keys: Vec<String> = streams.iter().map(|s| stream_lock_key::<Job>(s)).collect();
            lock_streams(&mut tx, &keys).await?;
            match mode {
                FlagMode::Shadow => {
                    let recorded = decide_in::<Job>(
                        &mut tx,
                        &critical_stream,
                        JobCommand::RecordShadowPreemption {
                            victim: decision.evict,
                            factory_id: decision.factory_id,
                            reason: decision.reason.clone(),
                            now,
                        },
                    )
                    .await?;
                    Ok(!recorded.events.is_empty())
                }
                _ => {
                    decide_in::<Job>(
                        &mut tx,
                        &victim_stream,
                        JobCommand::PreemptLease {
                            for_job: decision.for_job,
                            for_priority: critical.priority,
                            holder: decision.factory_id,
                            reason: decision.reason.clone(),
                            now,
                        },
                    )
                    .await?;
                    let until = now + chrono::Duration::seconds(state.settings.nomination_secs);
                    decide_in::<Job>(
                        &mut tx,
                        &critical_stream,
                        JobCommand::Nominate {
                            factory_id: decision.factory_id,
                            victim: decision.evict,
                            until,
                            now,
                        },
                    )
                    .await?;
                    Ok(true)
                }
            }
        }
        .await;
        let outcome: Result<bool, ExecError<gigafactory_domain::job::JobError>> = outcome;
        match outcome {
            Ok(appended) => {
                tx.commit().await?;
                if appended {
                    state.work_committed();
                }
                if mode == FlagMode::Shadow {
                    shadowed.push((decision.for_job, decision.evict));
                    if !appended {
                        continue;
                    }
                    done += 1;
                    metrics::counter!("gigafactory_preemptions_total", "mode" => "shadow")
                        .increment(1);
                    tracing::info!(job_id = %decision.for_job, victim = %decision.evict, factory_id = %decision.factory_id, "would have preempted (shadow)");
                } else {
                    done += 1;
                    metrics::counter!("gigafactory_preemptions_total", "mode" => "on").increment(1);
                    tracing::info!(job_id = %decision.for_job, victim = %decision.evict, factory_id = %decision.factory_id, "preempted");
                }
            }
            // The fleet moved between reading and deciding (the victim ended, the
            // critical job was claimed): try again next round.
            Err(ExecError::Domain(_)) | Err(ExecError::Conflict(_)) => {
                tx.rollback().await?;
                break;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(done)
}
