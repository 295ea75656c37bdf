//! The OpenAPI 3 document, generated from the code: every route is registered through
//! `utoipa_axum`'s `OpenApiRouter` together with its `#[utoipa::path]` description, so
//! the router and the document come from one list and no route can be left out. The
//! response shapes below are what the handlers' JSON looks like; the integration tests
//! validate real responses against this document, so a drift fails a test.

use serde_json::Value;
use std::collections::BTreeMap;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

#[derive(OpenApi)]
#[openapi(
    info(title = "Gigafactory", description = "Event-sourced job coordinator for fleets of AI-agent workers."),
    modifiers(&BearerAuth),
    tags(
        (name = "process", description = "Health, readiness, metrics, this document"),
        (name = "tokens", description = "Operator and auditor tokens (admin)"),
        (name = "factories", description = "Enrollment, heartbeats, tokens, the fleet map"),
        (name = "jobs", description = "Jobs, runs, timelines, time travel"),
        (name = "leases", description = "Claiming and leases (factories)"),
        (name = "artifacts", description = "Files attached to jobs"),
        (name = "scheduler", description = "Weights, explain, flags"),
        (name = "audit", description = "The event log, its stream and its verification"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("gf_… token"))
                    .build(),
            ),
        );
    }
}

/// Every 4xx/5xx answer.
#[derive(ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(ToSchema)]
pub struct ErrorDetail {
    /// snake_case: malformed_json, invalid, unauthorized, forbidden, not_found, fenced,
    /// invalid_stage, conflict, too_large, unavailable, internal.
    pub code: String,
    pub message: String,
    /// The input field at fault.
    pub field: Option<String>,
    /// With `fenced` and `invalid_stage`: the job's stage and current epoch.
    pub current: Option<CurrentView>,
}

#[derive(ToSchema)]
pub struct CurrentView {
    pub stage: String,
    pub epoch: Option<u64>,
}

#[derive(ToSchema)]
pub struct StatusView {
    pub status: String,
}

#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenIssued {
    pub token_id: String,
    /// Shown once.
    pub token: String,
}

#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Enrolled {
    pub factory_id: String,
    /// Shown once.
    pub token: String,
}

#[derive(ToSchema)]
pub struct Rotated {
    pub token: String,
}

#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Directive {
    #[serde(rename = "type")]
    pub kind: String,
    pub job_id: String,
    pub reason: String,
}

#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatAnswer {
    pub factory_id: String,
    pub directives: Vec<Directive>,
    pub flags: BTreeMap<String, String>,
}

#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FactoryLease {
    pub job_id: String,
    pub product_id: String,
    pub epoch: i64,
    pub expires_at: String,
}

#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FactoryView {
    pub factory_id: String,
    pub name: String,
    pub product_ids: Vec<String>,
    pub capabilities: Vec<String>,
    pub capacity: i64,
    /// healthy | stale | offline
    pub health: String,
    pub load: i64,
    pub last_heartbeat_at: Option<String>,
    pub leases: Vec<FactoryLease>,
}

#[derive(ToSchema)]
pub struct BudgetView {
    pub usd: f64,
}

#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobLease {
    pub factory_id: String,
    pub epoch: u64,
    pub expires_at: String,
    pub run_id: String,
}

#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    pub id: String,
    pub product_id: String,
    pub title: String,
    pub payload: Value,
    pub kind: String,
    pub stage: String,
    pub priority: String,
    pub required_capabilities: Vec<String>,
    pub attempts: u32,
    pub max_attempts: u32,
    pub timeout_secs: Option<u32>,
    pub parent_id: Option<String>,
    pub depends_on: Vec<String>,
    pub budget: BudgetView,
    pub lease: Option<JobLease>,
    pub checkpoint: Option<Value>,
    pub progress: Option<f64>,
    pub last_error: Option<String>,
    pub available_at: Option<String>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    pub version: u64,
}

#[derive(ToSchema)]
pub struct TermView {
    pub value: f64,
    pub weight: f64,
}

#[derive(ToSchema)]
pub struct BreakdownView {
    pub total: f64,
    pub terms: BTreeMap<String, TermView>,
}

#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimLease {
    pub epoch: u64,
    pub expires_at: String,
}

#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Claimed {
    pub job: JobView,
    pub lease: ClaimLease,
    pub run_id: String,
    pub breakdown: BreakdownView,
}

/// The answer of a batch claim: one entry per lease granted.
#[derive(ToSchema)]
pub struct ClaimedBatch {
    pub claims: Vec<Claimed>,
}

/// One report's outcome in a batch report: `job` on 200, `error` otherwise.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReportResult {
    pub job_id: String,
    /// The HTTP status this report alone would have answered.
    pub status: u16,
    pub job: Option<JobView>,
    pub error: Option<ErrorDetail>,
}

/// The answer of a batch report: one result per report, in order.
#[derive(ToSchema)]
pub struct ReportedBatch {
    pub results: Vec<ReportResult>,
}

/// The answer of a report-and-claim: the reported job, and the next lease or null.
#[derive(ToSchema)]
pub struct ReportedAndClaimed {
    pub job: JobView,
    pub next: Option<Claimed>,
}

#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Renewed {
    pub expires_at: String,
    pub epoch: u64,
}

#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunView {
    pub run_id: String,
    pub factory_id: String,
    pub epoch: i64,
    /// running | succeeded | failed | expired | preempted | released | cancelled | revoked
    pub outcome: String,
    pub cost_usd: Option<f64>,
    pub started_at: String,
    pub ended_at: Option<String>,
}

#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TimelineEntry {
    pub sequence: i64,
    #[serde(rename = "type")]
    pub kind: String,
    pub payload: Value,
    pub recorded_at: String,
}

#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogEvent {
    pub position: i64,
    pub product_id: Option<String>,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    #[serde(rename = "type")]
    pub kind: String,
    pub payload: Value,
    pub recorded_at: String,
}

#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactView {
    pub artifact_id: String,
    pub name: String,
    pub sha256: String,
    pub size: i64,
    pub content_type: String,
    pub created_at: Option<String>,
}

#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WeightsView {
    pub product_id: String,
    pub weights: BTreeMap<String, f64>,
    /// default | product
    pub source: String,
    #[serde(rename = "override")]
    pub overrides: BTreeMap<String, f64>,
}

#[derive(ToSchema)]
pub struct FlagsView {
    /// off | shadow | on
    pub preemption: String,
    /// off | shadow | on
    pub budgets: String,
}

#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExplainCandidate {
    pub job_id: String,
    pub product_id: String,
    pub priority: String,
    pub breakdown: BreakdownView,
}

#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Explained {
    pub factory_id: String,
    pub candidates: Vec<ExplainCandidate>,
}

#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProblemView {
    pub position: Option<i64>,
    pub aggregate_id: Option<String>,
    pub kind: String,
    pub detail: String,
}

#[derive(ToSchema)]
pub struct Verified {
    pub ok: bool,
    pub events: u64,
    pub problems: Vec<ProblemView>,
    pub position: i64,
    pub digest: String,
}

macro_rules! page {
    ($name:ident, $item:ty) => {
        /// A list page.
        #[derive(ToSchema)]
        #[serde(rename_all = "camelCase")]
        pub struct $name {
            pub items: Vec<$item>,
            pub next_cursor: Option<String>,
        }
    };
}

page!(JobPage, JobView);
page!(RunPage, RunView);
page!(TimelinePage, TimelineEntry);
page!(LogPage, LogEvent);
page!(FactoryPage, FactoryView);
page!(ArtifactPage, ArtifactView);

/// `PUT /fleet/flags`: any subset of the flags.
#[derive(ToSchema)]
pub struct FlagsPatch {
    /// off | shadow | on
    pub preemption: Option<String>,
    /// off | shadow | on
    pub budgets: Option<String>,
}
