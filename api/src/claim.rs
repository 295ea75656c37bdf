//! The claim: lease the best job this factory may run, never two leases on one job.
//!
//! Concurrent claims are served together ([`crate::coalesced`]): one transaction,
//! begun holding every claiming factory's claims lock (each factory's claims take
//! turns, so none exceeds its capacity), reads their rows, then — per profile
//! (products, capabilities, request weights) — one bounded candidate set without
//! row locks, ranked by the pure scoring scheduler for each factory as it would be
//! alone. One statement then takes the stream locks of the best-ranked jobs no
//! other claimer holds (`pg_try_advisory_xact_lock` in rank order), the jobs are
//! dealt out (each factory its affinity jobs first, then in turn its best-ranked),
//! and one statement appends every `LeaseGranted` with its queue row; one commit.
//! Concurrent claimers therefore spread over the ranked jobs instead of queueing
//! behind the top one, and no claimer holds row locks that a report would wait for.
//! The aggregate has the last word (a job claimed since the read refuses; optimistic
//! concurrency on the stream's sequence), so even a stale queue row cannot cause a
//! second lease. A lone claim is the same with one factory.

use crate::app::AppState;
use crate::commands::{
    conflict_pause, decide_loaded, preview, stream_lock_key, ExecError, Executed,
};
use crate::error::ApiError;
use crate::scheduling::{rank_for_factories, Pick, CANDIDATES_PER_SET};
use chrono::{DateTime, Utc};
use gigafactory_domain::job::{Job, JobCommand};
use gigafactory_domain::scheduler::{Breakdown, JobCandidate, WeightOverrides};
use gigafactory_domain::{FactoryId, RunId};
use gigafactory_projections::turns::{self, Turn};
use gigafactory_projections::EventRecord;
use gigafactory_projections::{factories, jobs};
use sqlx::Row;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use uuid::Uuid;

const MAX_CLAIM_RETRIES: usize = 20;

/// Most jobs one batch claim may take.
pub const MAX_BATCH: usize = 100;

/// A granted lease, with the score that picked the job.
pub struct Claimed {
    pub job: Job,
    pub breakdown: Breakdown,
}

/// One factory's claim: up to `max` jobs (never more than its free capacity) of
/// `products` (all it serves when `None`), ranked with `weights` over the stored;
/// first, if `finish` is given, a report on a job the factory holds.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    pub factory_id: FactoryId,
    pub products: Option<Vec<String>>,
    pub weights: Option<WeightOverrides>,
    pub ttl_secs: u32,
    pub max: usize,
    pub finish: Option<Finish>,
}

/// A report a claim makes first, in the claim's own transaction
/// (`POST /fleet/jobs/:id/report-and-claim`): decided on the job read model as a
/// lone report is, appended by the statement that appends the grants, durable with
/// them in one commit. A report that ends the run frees the slot the claim fills.
#[derive(Clone)]
pub struct Finish {
    /// The reported job's stream.
    pub stream: String,
    /// The report at the transaction's clock.
    pub command: Arc<dyn Fn(DateTime<Utc>) -> JobCommand + Send + Sync>,
}

impl std::fmt::Debug for Finish {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Finish")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

/// What a claim came to: the report it carried, if any (committed), and the leases.
#[derive(Debug, Default)]
pub struct Granted {
    pub finished: Option<Executed<Job>>,
    pub claimed: Vec<Claimed>,
}

impl std::fmt::Debug for Claimed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claimed")
            .field("job_id", &self.job.spec.as_ref().map(|s| s.job_id))
            .field("score", &self.breakdown.total)
            .finish()
    }
}

/// One attempt to claim up to `max` jobs (never more than the factory's free
/// capacity), without waiting; empty: nothing claimable now. All the leases are
/// granted in one transaction — one `LeaseGranted` per job, one commit — from one
/// ranking: the best-ranked jobs no other claimer holds. Served together with the
/// concurrent claims of this process ([`serve_claims`]). An error: nothing of this
/// request was appended (its report refused, or the transaction failed).
pub async fn claim_jobs(state: &AppState, request: ClaimRequest) -> Result<Granted, ApiError> {
    state.coalesced.claim(state, request).await
}

/// [`serve_claims`], answering the leases only (the requests carry no reports).
pub async fn claim_together(
    state: &AppState,
    requests: &[ClaimRequest],
) -> Vec<Result<Vec<Claimed>, ApiError>> {
    serve_claims(state, requests)
        .await
        .into_iter()
        .map(|g| g.map(|g| g.claimed))
        .collect()
}

/// Serves concurrent claims (see the module): one outcome per request, in order.
/// Requests of one factory take turns (one per transaction); a request whose picks
/// other claimers took meanwhile is tried again (without its report once that is
/// committed).
pub async fn serve_claims(
    state: &AppState,
    requests: &[ClaimRequest],
) -> Vec<Result<Granted, ApiError>> {
    let mut out: Vec<Option<Result<Vec<Claimed>, ApiError>>> =
        requests.iter().map(|_| None).collect();
    let mut finished: Vec<Option<Executed<Job>>> = requests.iter().map(|_| None).collect();
    // Whose report is still to make.
    let mut reporting: Vec<bool> = requests.iter().map(|r| r.finish.is_some()).collect();
    let mut attempts = vec![0usize; requests.len()];
    let mut pending: Vec<usize> = (0..requests.len()).collect();
    while !pending.is_empty() {
        let mut factories = HashSet::new();
        let (round, later): (Vec<usize>, Vec<usize>) = pending
            .into_iter()
            .partition(|&i| factories.insert(requests[i].factory_id));
        let mut again = Vec::new();
        match claim_round(state, requests, &round, &reporting).await {
            Ok(outcomes) => {
                for (&i, (outcome, report)) in round.iter().zip(outcomes) {
                    if let Some(done) = report {
                        finished[i] = Some(done);
                        reporting[i] = false;
                    }
                    match outcome {
                        Round::Done(claimed) => out[i] = Some(Ok(claimed)),
                        Round::Refused(e) => out[i] = Some(Err(e)),
                        Round::Contended if attempts[i] + 1 < MAX_CLAIM_RETRIES => again.push(i),
                        Round::Contended if reporting[i] => {
                            out[i] = Some(Err(ApiError::Conflict(
                                "the job changed while the report was made; nothing was appended, send it again".into(),
                            )))
                        }
                        Round::Contended => out[i] = Some(Ok(vec![])),
                    }
                }
            }
            Err(e) => {
                for &i in &round {
                    out[i] = Some(Err(e.clone()));
                }
            }
        }
        if !again.is_empty() {
            // Other claimers hold every pick, or a stream moved under us: look again
            // once they are done.
            let attempt = again.iter().map(|&i| attempts[i]).max().unwrap_or(0);
            conflict_pause(attempt).await;
            for &i in &again {
                attempts[i] += 1;
            }
        }
        pending = later.into_iter().chain(again).collect();
    }
    out.into_iter()
        .zip(finished)
        .map(
            |(o, finished)| match (o.expect("every claim ran"), finished) {
                (Ok(claimed), finished) => Ok(Granted { finished, claimed }),
                // The report is committed: the claim after it failed; answer the report.
                (Err(e), Some(finished)) => {
                    tracing::warn!(error = %e, "a claim after its committed report failed");
                    Ok(Granted {
                        finished: Some(finished),
                        claimed: vec![],
                    })
                }
                (Err(e), None) => Err(e),
            },
        )
        .collect()
}

/// A request's outcome in one transaction.
enum Round {
    Done(Vec<Claimed>),
    Refused(ApiError),
    /// Nothing granted, but other claimers held or took picks since the read, or an
    /// append conflicted: read again.
    Contended,
}

/// A request that may be granted jobs in this round.
struct Seeker<'a> {
    /// Its index in the round.
    at: usize,
    request: &'a ClaimRequest,
    capabilities: Vec<String>,
    products: Vec<String>,
    want: usize,
    nominated: Option<Uuid>,
}

/// A report a request of the round makes first, accepted on the job as read.
struct Reporting {
    /// Its index in the round.
    at: usize,
    stream: String,
    command: JobCommand,
    job: Job,
}

/// What factories share a candidate read by: products, capabilities (sorted), the
/// request's weights (as JSON).
type Profile = (Vec<String>, Vec<String>, String);

/// One transaction serving `round` (indexes into `requests`, distinct factories),
/// making the reports of those whose `reporting` is set: per request its outcome
/// and its report, if one was committed.
async fn claim_round(
    state: &AppState,
    requests: &[ClaimRequest],
    round: &[usize],
    reporting: &[bool],
) -> Result<Vec<(Round, Option<Executed<Job>>)>, ApiError> {
    let ids: Vec<Uuid> = round.iter().map(|&i| requests[i].factory_id.0).collect();
    let keys: Vec<String> = ids
        .iter()
        .map(|&id| factories::claims_lock_key(id))
        .collect();
    // BEGIN and every factory's claims lock (in one global order) in one round trip.
    let mut tx = turns::begin(&state.pool, &Turn::of_all(&keys)).await?;
    let mut claiming = factories::for_claim_many(&mut tx, &ids, state.clock.offset_ms()).await?;
    let finishing = |i: usize| requests[i].finish.as_ref().filter(|_| reporting[i]);
    // The reported jobs as the read model has them (a lone report decides on the same;
    // the events' key refuses the append if a stream moved since).
    let report_ids: Vec<Uuid> = round
        .iter()
        .filter_map(|&i| finishing(i))
        .map(|f| jobs::job_id_of(&f.stream))
        .collect();
    let report_jobs = if report_ids.is_empty() {
        HashMap::new()
    } else {
        jobs::states_at_clock(&mut tx, &report_ids, state.clock.offset_ms())
            .await?
            .1
    };
    let mut outcomes: Vec<Option<Round>> = round.iter().map(|_| None).collect();
    let mut now: Option<DateTime<Utc>> = None;
    let mut seekers = Vec::new();
    let mut reports: Vec<Reporting> = Vec::new();
    for (at, &i) in round.iter().enumerate() {
        let request = &requests[i];
        let Some(c) = claiming
            .remove(&request.factory_id.0)
            .filter(|c| c.factory.status == "active")
        else {
            outcomes[at] = Some(Round::Refused(ApiError::Unauthorized));
            continue;
        };
        now = Some(c.now);
        let mut freed = 0;
        if let Some(finish) = finishing(i) {
            // Cloned, not taken: another factory of the round reporting the same job
            // is refused on it (fenced), not told it does not exist.
            let Some(job) = report_jobs.get(&jobs::job_id_of(&finish.stream)).cloned() else {
                outcomes[at] = Some(Round::Refused(ApiError::NotFound("job")));
                continue;
            };
            let command = (finish.command)(c.now);
            match preview(&job, command.clone()).await {
                Err(refused) => {
                    outcomes[at] = Some(Round::Refused(ApiError::from(refused)));
                    continue;
                }
                Ok(after) => {
                    // Accepted, so the lease it ends was this factory's and live.
                    if job.lease.is_some() && after.lease.is_none() {
                        freed = 1;
                    }
                    reports.push(Reporting {
                        at,
                        stream: finish.stream.clone(),
                        command,
                        job,
                    });
                }
            }
        }
        let products: Vec<String> = c
            .factory
            .product_ids
            .iter()
            .filter(|p| request.products.as_ref().is_none_or(|r| r.contains(p)))
            .cloned()
            .collect();
        let free = (i64::from(c.factory.capacity) - c.live_leases + freed).max(0) as usize;
        let want = free.min(request.max);
        if products.is_empty() || want == 0 {
            outcomes[at] = Some(Round::Done(vec![]));
            continue;
        }
        seekers.push(Seeker {
            at,
            request,
            capabilities: c.factory.capabilities,
            products,
            want,
            nominated: c.nominated,
        });
    }
    // A reported job is not dealt in its own round, even if it is queued again by
    // now (released or preempted since the read): its stream takes the report.
    let mut dealt = Dealt {
        taken: reports.iter().map(|r| jobs::job_id_of(&r.stream)).collect(),
        ..Dealt::default()
    };
    if let Some(now) = now.filter(|_| !seekers.is_empty()) {
        // Factories of one profile share a candidate read.
        let mut profiles: BTreeMap<Profile, Vec<&Seeker>> = BTreeMap::new();
        for s in &seekers {
            let mut capabilities = s.capabilities.clone();
            capabilities.sort();
            let weights = serde_json::to_string(&s.request.weights).unwrap_or_default();
            profiles
                .entry((s.products.clone(), capabilities, weights))
                .or_default()
                .push(s);
        }
        for group in profiles.values() {
            let first = group[0];
            let factory_ids: Vec<FactoryId> = group.iter().map(|s| s.request.factory_id).collect();
            let total: usize = group.iter().map(|s| s.want).sum();
            let mut rankings = rank_for_factories(
                &mut tx,
                &factory_ids,
                &first.capabilities,
                &first.products,
                first.request.weights.as_ref(),
                now,
                candidates_per_set(total),
            )
            .await?;
            for (s, ranked) in group.iter().zip(rankings.iter_mut()) {
                if let Some(job) = s.nominated {
                    // A slot freed by a preemption is for the critical job only.
                    ranked.retain(|r| r.job.job_id.0 == job);
                }
            }
            dealt.deal(&mut tx, group, rankings).await?;
        }
    }
    let decided_of = |outcomes: Vec<Option<Round>>| -> Vec<(Round, Option<Executed<Job>>)> {
        outcomes
            .into_iter()
            .map(|o| (o.expect("decided"), None))
            .collect()
    };
    let Some(now) = now.filter(|_| !(dealt.grants.is_empty() && reports.is_empty())) else {
        tx.rollback().await?;
        for s in &seekers {
            outcomes[s.at] = Some(if dealt.raced.contains(&s.at) {
                Round::Contended
            } else {
                Round::Done(vec![])
            });
        }
        return Ok(decided_of(outcomes));
    };
    // The reports first, then the grants: one statement appends them all.
    let mut loaded = std::mem::take(&mut dealt.jobs);
    let reported: Vec<usize> = reports.iter().map(|r| r.at).collect();
    let mut commands: Vec<(String, JobCommand)> = Vec::new();
    for r in reports {
        loaded.insert(r.stream.clone(), r.job);
        commands.push((r.stream, r.command));
    }
    for g in &dealt.grants {
        let s = seekers.iter().find(|s| s.at == g.at).expect("a seeker");
        let command = JobCommand::GrantLease {
            run_id: RunId(Uuid::now_v7()),
            factory_id: s.request.factory_id,
            factory_capabilities: s.capabilities.clone(),
            ttl_secs: s.request.ttl_secs,
            now,
        };
        commands.push((g.pick.job.job_id.stream_id(&g.pick.job.product_id), command));
    }
    let mut decided = match decide_loaded::<Job>(&mut tx, commands, loaded).await {
        Ok(decided) => decided.into_iter(),
        Err(ExecError::Conflict(_)) => {
            // Nothing was appended, the reports neither: every one tries again.
            tx.rollback().await?;
            for &at in seekers.iter().map(|s| &s.at).chain(&reported) {
                outcomes[at] = Some(Round::Contended);
            }
            return Ok(decided_of(outcomes));
        }
        Err(e) => return Err(crate::commands::into_api::<Job>(e)),
    };
    let mut events: Vec<EventRecord> = Vec::new();
    let mut finished: HashMap<usize, Executed<Job>> = HashMap::new();
    for (&at, outcome) in reported.iter().zip(decided.by_ref()) {
        match outcome {
            Ok(done) => {
                events.extend(done.events.iter().cloned());
                finished.insert(at, done);
            }
            // The same command on the same job as the preview: not reached. Were it,
            // committing the round would grant a lease the refused caller is never
            // told of: nothing is committed, and the next round's preview refuses it.
            Err(_) => {
                tx.rollback().await?;
                for &at in seekers.iter().map(|s| &s.at).chain(&reported) {
                    outcomes[at] = Some(Round::Contended);
                }
                return Ok(decided_of(outcomes));
            }
        }
    }
    let mut claimed: HashMap<usize, Vec<Claimed>> = HashMap::new();
    let mut raced = dealt.raced;
    for (grant, outcome) in dealt.grants.into_iter().zip(decided) {
        match outcome {
            Ok(Executed {
                aggregate,
                events: appended,
            }) if !appended.is_empty() => {
                events.extend(appended);
                claimed.entry(grant.at).or_default().push(Claimed {
                    job: aggregate,
                    breakdown: grant.pick.breakdown,
                });
            }
            // A refusal or a no-op: claimed or changed since the read.
            _ => {
                raced.insert(grant.at);
            }
        }
    }
    if events.is_empty() {
        tx.rollback().await?;
    } else {
        tx.commit().await?;
        state.events_committed(&events);
    }
    for s in &seekers {
        let got = claimed.remove(&s.at).unwrap_or_default();
        for c in &got {
            if let Some(spec) = &c.job.spec {
                // The holder's reports and renewals need it next.
                state
                    .job_products
                    .remember(spec.job_id.0, spec.product_id.as_str());
            }
            let job_id = c.job.spec.as_ref().map(|s| s.job_id);
            tracing::info!(job_id = ?job_id, factory_id = %s.request.factory_id, score = c.breakdown.total, "lease granted");
        }
        outcomes[s.at] = Some(if got.is_empty() && raced.contains(&s.at) {
            Round::Contended
        } else {
            Round::Done(got)
        });
    }
    Ok(outcomes
        .into_iter()
        .enumerate()
        .map(|(at, o)| (o.expect("decided"), finished.remove(&at)))
        .collect())
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

/// A job dealt to a seeker (by its index in the round).
struct Grant {
    at: usize,
    pick: Pick,
}

/// The jobs a round's lock steps took and whom each goes to.
#[derive(Default)]
struct Dealt {
    grants: Vec<Grant>,
    /// Each locked job's aggregate, by stream id.
    jobs: HashMap<String, Job>,
    /// Locked in this transaction (advisory locks are re-entrant within it: another
    /// profile's lock step must not take one again).
    taken: HashSet<Uuid>,
    /// Seekers for whom others held picks they passed: a fresh read may find more.
    raced: HashSet<usize>,
}

impl Dealt {
    /// Takes, in one statement, the stream locks of the best-ranked jobs of `group`
    /// (one profile; `rankings` per seeker) that no other transaction holds — as
    /// many as the group wants — and deals them out: each seeker first the jobs whose
    /// checkpoint it holds, then in turn its best-ranked of the rest.
    async fn deal(
        &mut self,
        tx: &mut sqlx::PgConnection,
        group: &[&Seeker<'_>],
        rankings: Vec<Vec<Pick>>,
    ) -> Result<(), ApiError> {
        let rankings: Vec<Vec<Pick>> = rankings
            .into_iter()
            .map(|r| {
                r.into_iter()
                    .filter(|p| !self.taken.contains(&p.job.job_id.0))
                    .collect()
            })
            .collect();
        // The lock order: the seekers' rankings interleaved (their best first).
        let mut order: Vec<&JobCandidate> = Vec::new();
        let mut seen = HashSet::new();
        let deepest = rankings.iter().map(Vec::len).max().unwrap_or(0);
        for depth in 0..deepest {
            for r in &rankings {
                if let Some(p) = r.get(depth) {
                    if seen.insert(p.job.job_id.0) {
                        order.push(&p.job);
                    }
                }
            }
        }
        let want: usize = group.iter().map(|s| s.want).sum();
        if order.is_empty() {
            return Ok(());
        }
        let Locked { indexes, jobs } = lock_free(tx, order.iter().copied(), want).await?;
        // Passed over before the last one locked: held by others, or no longer queued.
        let skipped = match indexes.last() {
            None => true,
            Some(&last) => {
                indexes.len() < last + 1 || (indexes.len() < want && last + 1 < order.len())
            }
        };
        let locked: Vec<Uuid> = indexes.iter().map(|&i| order[i].job_id.0).collect();
        self.taken.extend(locked.iter().copied());
        self.jobs.extend(jobs);
        let mut free: HashSet<Uuid> = locked.iter().copied().collect();
        let mut got = vec![0usize; group.len()];
        let give = |this: &mut Self, k: usize, job: Uuid, got: &mut Vec<usize>| {
            let pick = rankings[k]
                .iter()
                .find(|p| p.job.job_id.0 == job)
                .expect("in the ranking")
                .clone();
            this.grants.push(Grant {
                at: group[k].at,
                pick,
            });
            got[k] += 1;
        };
        // Affinity first: a job whose checkpoint a seeker holds goes to it.
        for (k, s) in group.iter().enumerate() {
            let own: Vec<Uuid> = rankings[k]
                .iter()
                .filter(|p| {
                    free.contains(&p.job.job_id.0)
                        && p.job.checkpoint_factory == Some(s.request.factory_id)
                })
                .map(|p| p.job.job_id.0)
                .take(s.want)
                .collect();
            for job in own {
                free.remove(&job);
                give(self, k, job, &mut got);
            }
        }
        // Then in turn, each its best-ranked job still free.
        loop {
            let mut gave = false;
            for k in 0..group.len() {
                if got[k] >= group[k].want {
                    continue;
                }
                if let Some(job) = rankings[k]
                    .iter()
                    .map(|p| p.job.job_id.0)
                    .find(|j| free.contains(j))
                {
                    free.remove(&job);
                    give(self, k, job, &mut got);
                    gave = true;
                }
            }
            if !gave {
                break;
            }
        }
        if skipped {
            for (k, s) in group.iter().enumerate() {
                if got[k] < s.want {
                    self.raced.insert(s.at);
                }
            }
        }
        Ok(())
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
             SELECT s.sequence, s.event_type, s.payload::text AS payload FROM events s
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
