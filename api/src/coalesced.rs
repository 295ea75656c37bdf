//! The calls this process serves in batches ([`crate::coalesce`]): the token lookup
//! of every authenticated request, the claim ([`serve_claims`]: one transaction
//! for the concurrent claims of many factories) and the one-job report. Each is exactly what a
//! lone request would do, set-based: a batch of lookups is one indexed statement; a
//! batch of reports is one optimistic decision on the job read model and one
//! autocommit statement ([`execute_many_optimistic`]), each report still its own
//! event on its own stream, durable before any of them is answered.

use crate::app::AppState;
use crate::claim::{serve_claims, ClaimRequest, Granted};
use crate::coalesce::{CoalesceError, Coalescer};
use crate::commands::{execute_many_optimistic, into_api, Executed};
use crate::error::ApiError;
use chrono::{DateTime, Utc};
use gigafactory_domain::job::{Job, JobCommand};
use gigafactory_projections::credentials::{self, Credential};
use sqlx::PgPool;
use std::collections::HashSet;
use std::sync::OnceLock;

// How many batches of each kind run at once. Fewer means larger batches: on the
// 2-core machine of docs/performance.md, 2 of each drained fastest (1 or 3–8
// claim runners, 1 or 4–8 report runners: 3–20 % slower); 2 keeps a batch forming
// while one waits for its commit.

/// Batches of token lookups served at once.
const TOKEN_RUNNERS: usize = 2;
/// Claim transactions at once: each holds its factories' claims locks; the next
/// claims gather meanwhile.
const CLAIM_RUNNERS: usize = 2;
/// Batches of reports served at once (each one statement).
const REPORT_RUNNERS: usize = 2;
/// Most requests in one batch.
const MAX_BATCH: usize = 100;

type Lookup = (PgPool, String);
type Looked = Result<Option<Credential>, ApiError>;

/// A report to make on a job stream: the command at the clock's `now`.
pub struct ReportCall {
    pub state: AppState,
    pub stream: String,
    pub command: Box<dyn Fn(DateTime<Utc>) -> JobCommand + Send + Sync>,
}
type Reported = Result<Executed<Job>, ApiError>;

type ClaimCall = (AppState, ClaimRequest);
type ClaimAnswer = Result<Granted, ApiError>;

/// This process's coalescers, started on first use (they need the runtime).
#[derive(Default)]
pub struct Coalesced {
    tokens: OnceLock<Coalescer<Lookup, Looked>>,
    reports: OnceLock<Coalescer<ReportCall, Reported>>,
    claims: OnceLock<Coalescer<ClaimCall, ClaimAnswer>>,
}

impl Coalesced {
    /// The credential that authenticates `token_hash` now, looked up together with
    /// the concurrent requests' lookups.
    pub async fn credential(&self, pool: &PgPool, token_hash: String) -> Looked {
        let tokens = self
            .tokens
            .get_or_init(|| Coalescer::start("tokens", TOKEN_RUNNERS, MAX_BATCH, look_up));
        tokens
            .call((pool.clone(), token_hash))
            .await
            .map_err(internal)?
    }

    /// Serves one claim (see [`serve_claims`]) together with the concurrent ones.
    pub async fn claim(&self, state: &AppState, request: ClaimRequest) -> ClaimAnswer {
        let claims = self
            .claims
            .get_or_init(|| Coalescer::start("claims", CLAIM_RUNNERS, MAX_BATCH, claim));
        claims
            .call((state.clone(), request))
            .await
            .map_err(internal)?
    }

    /// How many claim batches this process has served (each one transaction, more
    /// only when some of its claims had to be tried again).
    pub fn claim_batches(&self) -> u64 {
        self.claims.get().map_or(0, Coalescer::batches)
    }

    /// Runs one report (see [`execute_many_optimistic`]) together with the
    /// concurrent ones.
    pub async fn report(&self, call: ReportCall) -> Reported {
        let reports = self
            .reports
            .get_or_init(|| Coalescer::start("reports", REPORT_RUNNERS, MAX_BATCH, report));
        reports.call(call).await.map_err(internal)?
    }
}

fn internal(e: CoalesceError) -> ApiError {
    ApiError::Internal(e.to_string())
}

async fn look_up(batch: Vec<Lookup>) -> Vec<Looked> {
    let pool = batch[0].0.clone();
    let hashes: Vec<String> = batch.iter().map(|(_, h)| h.clone()).collect();
    let found = async {
        let mut conn = pool.acquire().await?;
        credentials::find_valid_many(&mut conn, &hashes).await
    }
    .await;
    match found {
        Ok(found) => hashes.iter().map(|h| Ok(found.get(h).cloned())).collect(),
        Err(e) => {
            // Each member of a failed batch fails as a lone lookup would.
            let e = ApiError::from(e);
            hashes.iter().map(|_| Err(e.clone())).collect()
        }
    }
}

async fn claim(batch: Vec<ClaimCall>) -> Vec<ClaimAnswer> {
    let state = batch[0].0.clone();
    let requests: Vec<ClaimRequest> = batch.into_iter().map(|(_, r)| r).collect();
    serve_claims(&state, &requests).await
}

async fn report(batch: Vec<ReportCall>) -> Vec<Reported> {
    let state = batch[0].state.clone();
    let mut out: Vec<Option<Reported>> = batch.iter().map(|_| None).collect();
    // One stream once per statement: a repeated report on a job waits for the next
    // round of this batch.
    let mut left: Vec<usize> = (0..batch.len()).collect();
    while !left.is_empty() {
        let mut streams = HashSet::new();
        let (round, rest): (Vec<usize>, Vec<usize>) = left
            .into_iter()
            .partition(|&i| streams.insert(batch[i].stream.as_str()));
        let ids: Vec<String> = round.iter().map(|&i| batch[i].stream.clone()).collect();
        let outcomes =
            execute_many_optimistic(&state, &ids, |k, now| (batch[round[k]].command)(now)).await;
        match outcomes {
            Ok(outcomes) => {
                for (&i, outcome) in round.iter().zip(outcomes) {
                    out[i] = Some(outcome.map_err(ApiError::from));
                }
            }
            Err(e) => {
                let e = into_api::<Job>(e);
                for &i in &round {
                    out[i] = Some(Err(e.clone()));
                }
            }
        }
        left = rest;
    }
    out.into_iter()
        .map(|o| o.expect("every report ran in a round"))
        .collect()
}
