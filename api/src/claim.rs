//! The claim: lease the best job this factory may run, never two leases on one job.
//!
//! One transaction: lock the factory's row (its claims take turns, so it never
//! exceeds its capacity), lock a bounded set of claimable rows with `FOR UPDATE SKIP
//! LOCKED` (concurrent claimers spread over different jobs instead of racing for the
//! top one), rank them with the pure scoring scheduler, and grant the lease on the best
//! one whose stream lock is free — appending `LeaseGranted` and updating the queue row
//! in the same transaction. The aggregate has the last word (optimistic concurrency
//! on the stream's sequence), so even a stale queue row cannot cause a second lease.

use crate::app::AppState;
use crate::commands::{conflict_pause, decide_in, ExecError, Executed, StreamLock};
use crate::error::ApiError;
use crate::scheduling::{rank_for_factory, CANDIDATES_PER_SET};
use chrono::{DateTime, Utc};
use gigafactory_domain::job::{Job, JobCommand};
use gigafactory_domain::scheduler::{Breakdown, WeightOverrides};
use gigafactory_domain::{FactoryId, RunId};
use gigafactory_projections::{factories, jobs};
use uuid::Uuid;

const MAX_CLAIM_RETRIES: usize = 20;

/// A granted lease, with the score that picked the job.
pub struct Claimed {
    pub job: Job,
    pub breakdown: Breakdown,
    pub now: DateTime<Utc>,
}

/// One attempt to claim, without waiting. `Ok(None)`: nothing claimable now.
pub async fn claim_next_job(
    state: &AppState,
    factory_id: FactoryId,
    requested_products: Option<&[String]>,
    weights: Option<&WeightOverrides>,
    ttl_secs: u32,
) -> Result<Option<Claimed>, ApiError> {
    for attempt in 0..MAX_CLAIM_RETRIES {
        let mut tx = state.pool.begin().await?;
        let now = state.clock.now(&mut tx).await?;
        let factory = factories::get(&mut tx, factory_id.0, true)
            .await?
            .filter(|f| f.status == "active")
            .ok_or(ApiError::Unauthorized)?;
        let products: Vec<String> = factory
            .product_ids
            .iter()
            .filter(|p| requested_products.is_none_or(|r| r.contains(p)))
            .cloned()
            .collect();
        if products.is_empty() {
            return Ok(None);
        }
        if jobs::lease_count(&mut tx, factory_id.0, now).await? >= i64::from(factory.capacity) {
            return Ok(None);
        }
        let nominated = jobs::nominated_for(&mut tx, factory_id.0, now).await?;
        let mut ranked = rank_for_factory(
            &mut tx,
            factory_id,
            &factory.capabilities,
            &products,
            weights,
            now,
            CANDIDATES_PER_SET,
            true,
        )
        .await?;
        if let Some(job) = nominated {
            // A slot freed by a preemption is for the critical job only.
            ranked.retain(|r| r.job.job_id.0 == job);
        }
        let mut retry = false;
        for pick in ranked {
            let command = JobCommand::GrantLease {
                run_id: RunId(Uuid::now_v7()),
                factory_id,
                factory_capabilities: factory.capabilities.clone(),
                ttl_secs,
                now,
            };
            let stream = pick.job.job_id.stream_id(&pick.job.product_id);
            match decide_in::<Job>(&mut tx, &stream, command, StreamLock::Try).await {
                Ok(Executed { aggregate, events }) if !events.is_empty() => {
                    tx.commit().await?;
                    state.events_committed();
                    tracing::info!(job_id = %pick.job.job_id, factory_id = %factory_id, score = pick.breakdown.total, "lease granted");
                    return Ok(Some(Claimed {
                        job: aggregate,
                        breakdown: pick.breakdown,
                        now,
                    }));
                }
                Ok(_) | Err(ExecError::Busy) | Err(ExecError::Domain(_)) => continue,
                Err(ExecError::Conflict(_)) => {
                    retry = true;
                    break;
                }
                Err(e) => return Err(crate::commands::into_api::<Job>(e)),
            }
        }
        tx.rollback().await?;
        if !retry {
            return Ok(None);
        }
        conflict_pause(attempt).await;
    }
    Ok(None)
}
