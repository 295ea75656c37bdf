//! The claim: lease the best job this factory may run, never two leases on one job.
//!
//! One transaction: lock the factory's row (its claims take turns, so it never
//! exceeds its capacity), read a bounded candidate set without row locks, rank it
//! with the pure scoring scheduler, then take — in one statement — the stream lock of
//! the best-ranked job no other claimer holds (`pg_try_advisory_xact_lock` in rank
//! order), and grant the lease there: appending `LeaseGranted` and updating the queue
//! row in the same transaction. Concurrent claimers therefore spread over the ranked
//! jobs instead of queueing behind the top one, and no claimer holds row locks that
//! a report would wait for. The aggregate has the last word (a job claimed since the
//! read refuses; optimistic concurrency on the stream's sequence), so even a stale
//! queue row cannot cause a second lease.

use crate::app::AppState;
use crate::commands::{
    conflict_pause, decide_in, stream_lock_key, ExecError, Executed, StreamLock,
};
use crate::error::ApiError;
use crate::scheduling::{rank_for_factory, Pick, CANDIDATES_PER_SET};
use chrono::{DateTime, Utc};
use gigafactory_domain::job::{Job, JobCommand};
use gigafactory_domain::scheduler::{Breakdown, WeightOverrides};
use gigafactory_domain::{FactoryId, RunId};
use gigafactory_projections::factories;
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
        let factories::ClaimingFactory {
            factory,
            live_leases,
            nominated,
        } = factories::for_claim(&mut tx, factory_id.0, now)
            .await?
            .filter(|c| c.factory.status == "active")
            .ok_or(ApiError::Unauthorized)?;
        let products: Vec<String> = factory
            .product_ids
            .iter()
            .filter(|p| requested_products.is_none_or(|r| r.contains(p)))
            .cloned()
            .collect();
        if products.is_empty() || live_leases >= i64::from(factory.capacity) {
            return Ok(None);
        }
        let mut ranked = rank_for_factory(
            &mut tx,
            factory_id,
            &factory.capabilities,
            &products,
            weights,
            now,
            CANDIDATES_PER_SET,
        )
        .await?;
        if let Some(job) = nominated {
            // A slot freed by a preemption is for the critical job only.
            ranked.retain(|r| r.job.job_id.0 == job);
        }
        let mut retry = false;
        let mut rest = &ranked[..];
        while !rest.is_empty() {
            let Some(index) = lock_first_free(&mut tx, rest).await? else {
                // Other claimers hold every one of them: look again once they are done.
                retry = true;
                break;
            };
            let pick = &rest[index];
            rest = &rest[index + 1..];
            let command = JobCommand::GrantLease {
                run_id: RunId(Uuid::now_v7()),
                factory_id,
                factory_capabilities: factory.capabilities.clone(),
                ttl_secs,
                now,
            };
            let stream = pick.job.job_id.stream_id(&pick.job.product_id);
            match decide_in::<Job>(&mut tx, &stream, command, StreamLock::Held).await {
                Ok(Executed { aggregate, events }) if !events.is_empty() => {
                    tx.commit().await?;
                    state.events_committed(&events);
                    tracing::info!(job_id = %pick.job.job_id, factory_id = %factory_id, score = pick.breakdown.total, "lease granted");
                    return Ok(Some(Claimed {
                        job: aggregate,
                        breakdown: pick.breakdown,
                        now,
                    }));
                }
                // Claimed or changed since the read: the next one.
                Ok(_) | Err(ExecError::Domain(_)) => continue,
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

/// Takes the stream lock of the first of `picks` (best first) that no other
/// transaction holds, in one round trip; returns its index. Only the one lock is
/// taken: the scan stops at the first success.
async fn lock_first_free(
    tx: &mut sqlx::PgConnection,
    picks: &[Pick],
) -> Result<Option<usize>, sqlx::Error> {
    let keys: Vec<String> = picks
        .iter()
        .map(|p| stream_lock_key::<Job>(&p.job.job_id.stream_id(&p.job.product_id)))
        .collect();
    let ordinal: Option<i64> = sqlx::query_scalar(
        "SELECT ord FROM unnest($1::text[]) WITH ORDINALITY AS c(key, ord)
         WHERE pg_try_advisory_xact_lock(hashtextextended(key, 0)) LIMIT 1",
    )
    .bind(&keys)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(ordinal.map(|o| o as usize - 1))
}
