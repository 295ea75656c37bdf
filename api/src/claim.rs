//! The claim: lease the best job this factory may run, never two leases on one job.
//!
//! One transaction, begun holding the factory's claims lock (its claims take turns,
//! so it never exceeds its capacity): read a bounded candidate set without row
//! locks, rank it with the pure scoring scheduler, then take — in one statement —
//! the stream lock of the best-ranked job no other claimer holds
//! (`pg_try_advisory_xact_lock` in rank order), and grant the lease there: appending
//! `LeaseGranted` and updating the queue row in the same transaction. Concurrent claimers therefore spread over the ranked
//! jobs instead of queueing behind the top one, and no claimer holds row locks that
//! a report would wait for. The aggregate has the last word (a job claimed since the
//! read refuses; optimistic concurrency on the stream's sequence), so even a stale
//! queue row cannot cause a second lease.

use crate::app::AppState;
use crate::commands::{conflict_pause, decide_loaded, stream_lock_key, ExecError, Executed};
use crate::error::ApiError;
use crate::scheduling::{rank_for_factory, Pick, CANDIDATES_PER_SET};
use chrono::{DateTime, Utc};
use gigafactory_domain::job::{Job, JobCommand};
use gigafactory_domain::scheduler::{Breakdown, JobCandidate, WeightOverrides};
use gigafactory_domain::{FactoryId, RunId};
use gigafactory_projections::factories;
use gigafactory_projections::turns::{self, Turn};
use gigafactory_projections::EventRecord;
use sqlx::Row;
use std::collections::HashMap;
use uuid::Uuid;

const MAX_CLAIM_RETRIES: usize = 20;

/// Most jobs one batch claim may take.
pub const MAX_BATCH: usize = 100;

/// A granted lease, with the score that picked the job.
pub struct Claimed {
    pub job: Job,
    pub breakdown: Breakdown,
}

/// One attempt to claim up to `max` jobs (never more than the factory's free
/// capacity), without waiting; empty: nothing claimable now. All the leases are
/// granted in one transaction — one `LeaseGranted` per job, one commit — from one
/// ranking: the best-ranked jobs no other claimer holds.
pub async fn claim_jobs(
    state: &AppState,
    factory_id: FactoryId,
    requested_products: Option<&[String]>,
    weights: Option<&WeightOverrides>,
    ttl_secs: u32,
    max: usize,
) -> Result<Vec<Claimed>, ApiError> {
    for attempt in 0..MAX_CLAIM_RETRIES {
        // BEGIN and the factory's claims lock in one round trip.
        let turn = Turn::of(factories::claims_lock_key(factory_id.0));
        let mut tx = turns::begin(&state.pool, &turn).await?;
        let factories::ClaimingFactory {
            factory,
            now,
            live_leases,
            nominated,
        } = factories::for_claim(&mut tx, factory_id.0, state.clock.offset_ms())
            .await?
            .filter(|c| c.factory.status == "active")
            .ok_or(ApiError::Unauthorized)?;
        let products: Vec<String> = factory
            .product_ids
            .iter()
            .filter(|p| requested_products.is_none_or(|r| r.contains(p)))
            .cloned()
            .collect();
        let free = (i64::from(factory.capacity) - live_leases).max(0) as usize;
        let want = free.min(max);
        if products.is_empty() || want == 0 {
            return Ok(vec![]);
        }
        let mut ranked = rank_for_factory(
            &mut tx,
            factory_id,
            &factory.capabilities,
            &products,
            weights,
            now,
            candidates_per_set(want),
        )
        .await?;
        if let Some(job) = nominated {
            // A slot freed by a preemption is for the critical job only.
            ranked.retain(|r| r.job.job_id.0 == job);
        }
        let grant = Grant {
            factory_id,
            capabilities: &factory.capabilities,
            ttl_secs,
            now,
        };
        match grant.best_free(&mut tx, &ranked, want).await? {
            Granted::Leases(claimed, events) => {
                tx.commit().await?;
                state.events_committed(&events);
                for c in &claimed {
                    if let Some(spec) = &c.job.spec {
                        // The holder's reports and renewals need it next.
                        state
                            .job_products
                            .remember(spec.job_id.0, spec.product_id.as_str());
                    }
                    let job_id = c.job.spec.as_ref().map(|s| s.job_id);
                    tracing::info!(job_id = ?job_id, factory_id = %factory_id, score = c.breakdown.total, "lease granted");
                }
                return Ok(claimed);
            }
            Granted::Nothing => {
                tx.rollback().await?;
                return Ok(vec![]);
            }
            // Other claimers hold every one of them, or a stream moved under us: look
            // again once they are done.
            Granted::Contended => {
                tx.rollback().await?;
                conflict_pause(attempt).await;
            }
        }
    }
    Ok(vec![])
}

/// Rows per candidate set for a claim of `want` jobs. Concurrent claimers rank the
/// same jobs the same way and each takes the best ones no other holds: a batch
/// reads a window a few batches deep, so that several batch claims at once each
/// find a full batch instead of splitting the best `want` between them.
fn candidates_per_set(want: usize) -> i64 {
    if want <= 1 {
        CANDIDATES_PER_SET
    } else {
        (want as i64 * 4).clamp(CANDIDATES_PER_SET, 400)
    }
}

/// The lease a claim grants, for each job it picks.
struct Grant<'a> {
    factory_id: FactoryId,
    capabilities: &'a [String],
    ttl_secs: u32,
    now: DateTime<Utc>,
}

enum Granted {
    /// At least one lease (the transaction must commit), with the events appended.
    Leases(Vec<Claimed>, Vec<EventRecord>),
    /// No job can be granted (all refused, or none ranked).
    Nothing,
    /// None granted, but other claimers held or took some since the read, or an
    /// append conflicted (the transaction is aborted): read again.
    Contended,
}

impl Grant<'_> {
    /// Grants up to `want` of `ranked` (best first): takes the stream locks of the
    /// best ones no other transaction holds, lets each job's aggregate decide, and
    /// goes on down the ranking for those refused (claimed since the read).
    async fn best_free(
        &self,
        tx: &mut sqlx::PgConnection,
        ranked: &[Pick],
        want: usize,
    ) -> Result<Granted, ApiError> {
        let mut claimed = Vec::new();
        let mut events = Vec::new();
        // Whether others held picks we passed, or took picks since our read (we
        // locked them, the aggregate refused): a fresh read may find more.
        let mut raced = false;
        // Refused picks keep their locks until the commit: bound how many one claim
        // holds (they live in the server's shared lock table).
        let mut locks_left = 2 * want + 16;
        let mut rest = ranked;
        while claimed.len() < want && !rest.is_empty() && locks_left > 0 {
            let limit = (want - claimed.len()).min(locks_left);
            let Locked {
                indexes: locked,
                jobs,
            } = lock_free(tx, rest.iter().map(|p| &p.job), limit).await?;
            let Some(&last) = locked.last() else {
                raced = true;
                break;
            };
            locks_left -= locked.len();
            let picks: Vec<&Pick> = locked.iter().map(|&i| &rest[i]).collect();
            let commands = picks
                .iter()
                .map(|p| {
                    let command = JobCommand::GrantLease {
                        run_id: RunId(Uuid::now_v7()),
                        factory_id: self.factory_id,
                        factory_capabilities: self.capabilities.to_vec(),
                        ttl_secs: self.ttl_secs,
                        now: self.now,
                    };
                    (p.job.job_id.stream_id(&p.job.product_id), command)
                })
                .collect();
            let outcomes = match decide_loaded::<Job>(tx, commands, jobs).await {
                Ok(outcomes) => outcomes,
                Err(ExecError::Conflict(_)) => return Ok(Granted::Contended),
                Err(e) => return Err(crate::commands::into_api::<Job>(e)),
            };
            for (pick, outcome) in picks.into_iter().zip(outcomes) {
                // A refusal or a no-op: claimed or changed since the read.
                if let Ok(Executed {
                    aggregate,
                    events: appended,
                }) = outcome
                {
                    if !appended.is_empty() {
                        events.extend(appended);
                        claimed.push(Claimed {
                            job: aggregate,
                            breakdown: pick.breakdown,
                        });
                        continue;
                    }
                }
                raced = true;
            }
            // Those skipped before the last one locked were held by others; fewer
            // locks than asked for: the scan passed all the rest, held by others.
            raced |= locked.len() < last + 1;
            if locked.len() < limit {
                raced |= last + 1 < rest.len();
                break;
            }
            rest = &rest[last + 1..];
        }
        Ok(if !claimed.is_empty() {
            Granted::Leases(claimed, events)
        } else if raced {
            Granted::Contended
        } else {
            Granted::Nothing
        })
    }
}

/// The picks a lock step took, and their jobs as the log has them.
pub struct Locked {
    /// Indexes into the picks, ascending.
    pub indexes: Vec<usize>,
    /// Each locked job's aggregate, by stream id.
    pub jobs: HashMap<String, Job>,
}

/// Takes the stream locks of the first `limit` of `jobs` (best first) that are still
/// queued and that no other transaction holds, and loads their streams — one round
/// trip. Only those locks are taken: the scan stops at the `limit`-th success.
///
/// The streams are read with the statement's snapshot, taken before the locks: a
/// job another claim granted and committed in that instant is loaded without its
/// grant, and the append of ours then conflicts on the stream's sequence (the claim
/// reads again). The queue check shares that snapshot, so it is the same race as
/// before, now caught one statement later.
pub async fn lock_free<'a>(
    tx: &mut sqlx::PgConnection,
    jobs: impl IntoIterator<Item = &'a JobCandidate>,
    limit: usize,
) -> Result<Locked, ApiError> {
    let mut keys = Vec::new();
    let mut ids = Vec::new();
    let mut streams = Vec::new();
    for j in jobs {
        let stream = j.job_id.stream_id(&j.product_id);
        keys.push(stream_lock_key::<Job>(&stream));
        ids.push(j.job_id.0);
        streams.push(stream);
    }
    // No ORDER BY in `locked`: it would evaluate the filter — take the locks — of
    // every row. A pick another claimer was granted since our read (committed before
    // this statement began) is stepped over without taking its lock: holding it would
    // make that job's holder wait for our commit to report or renew. CASE evaluates
    // the queue check first: one probe of the job's primary key per pick (OFFSET 0
    // and no stage filter in the sub-select: a generic plan made on fresh statistics
    // hashed a whole queue index instead). LATERAL loads each locked stream by key.
    let rows = sqlx::query(
        "WITH locked AS MATERIALIZED (
             SELECT ord, stream FROM unnest($1::text[], $3::uuid[], $4::text[])
                 WITH ORDINALITY AS c(key, job_id, stream, ord)
             WHERE CASE WHEN (SELECT j.stage FROM job_view j WHERE j.job_id = c.job_id
                              OFFSET 0) = 'queued'
                        THEN pg_try_advisory_xact_lock(hashtextextended(key, 0))
                        ELSE false END
             LIMIT $2)
         SELECT l.ord, l.stream AS aggregate_id, e.sequence, e.event_type, e.payload
         FROM locked l
         LEFT JOIN LATERAL (
             SELECT s.sequence, s.event_type, s.payload::jsonb AS payload FROM events s
             WHERE s.aggregate_type = $5 AND s.aggregate_id = l.stream
         ) e ON true
         ORDER BY l.ord, e.sequence",
    )
    .bind(&keys)
    .bind(limit as i64)
    .bind(&ids)
    .bind(&streams)
    .bind(<Job as cqrs_es::Aggregate>::TYPE)
    .fetch_all(&mut *tx)
    .await?;
    let mut indexes: Vec<usize> = rows
        .iter()
        .map(|r| r.get::<i64, _>("ord") as usize - 1)
        .collect();
    indexes.dedup();
    let locked_streams: Vec<String> = indexes.iter().map(|&i| streams[i].clone()).collect();
    let jobs = gigafactory_projections::log::fold_streams::<Job>(&locked_streams, &rows)?;
    Ok(Locked { indexes, jobs })
}
