//! What can be asked of a job. Time (`now`), ids and randomness are injected by the
//! caller: the database clock, fresh UUIDs, a jitter draw.

use crate::{FactoryId, JobId, Priority, ProductId, RunId, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const LEASE_TTL_DEFAULT_SECS: u32 = 60;
pub const LEASE_TTL_MIN_SECS: u32 = 10;
pub const LEASE_TTL_MAX_SECS: u32 = 3_600;

/// A job as submitted by an operator, already parsed (the API checks JSON shapes,
/// the aggregate checks values).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewJob {
    pub job_id: JobId,
    pub product_id: ProductId,
    pub title: String,
    pub payload: Value,
    pub required_capabilities: Vec<String>,
    pub priority: Priority,
    pub budget_usd: f64,
    pub max_attempts: u32,
    pub timeout_secs: Option<u32>,
}

/// The status a factory reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportStatus {
    Running,
    Succeeded,
    Failed,
}

/// A factory's report on its run.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Report {
    pub progress: Option<f64>,
    pub checkpoint: Option<Value>,
    pub cost_usd: Option<f64>,
    pub error: Option<String>,
}

/// An artifact's metadata (its bytes are already in the blob store).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactMeta {
    pub artifact_id: uuid::Uuid,
    pub name: String,
    pub sha256: String,
    pub size: u64,
    pub content_type: String,
    /// Where the bytes are in the blob store.
    pub blob_key: String,
}

/// Who uploads an artifact: the lease holder with its epoch, or an operator.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Uploader {
    Factory { factory_id: FactoryId, epoch: u64 },
    Operator,
}

/// Checks an artifact name: 1–200 characters, no path separators, no `..`, no
/// control characters (names never become paths, but they are shown and downloaded).
pub fn check_artifact_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.chars().count() > 200 {
        return Err("name must be 1 to 200 characters".into());
    }
    if name.contains('/')
        || name.contains('\\')
        || name.contains("..")
        || name.chars().any(char::is_control)
    {
        return Err("name may not contain '/', '\\', '..' or control characters".into());
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq)]
pub enum JobCommand {
    /// Create the job (queued at once: DAG blocking comes with the DAG issue).
    Submit { job: NewJob, now: Timestamp },
    /// Grant a lease to a factory (the claim path picked this job for it).
    GrantLease {
        run_id: RunId,
        factory_id: FactoryId,
        factory_capabilities: Vec<String>,
        ttl_secs: u32,
        now: Timestamp,
    },
    /// The holder extends its lease; the epoch does not change.
    /// `ttl_secs`: `None` keeps the TTL the lease was granted with.
    RenewLease {
        factory_id: FactoryId,
        epoch: u64,
        ttl_secs: Option<u32>,
        now: Timestamp,
    },
    /// The holder gives the job back (no attempt used), optionally with a checkpoint.
    ReleaseLease {
        factory_id: FactoryId,
        epoch: u64,
        checkpoint: Option<Value>,
        now: Timestamp,
    },
    /// The holder reports on its run. `jitter` ∈ [0,1) spreads retry backoff.
    Report {
        factory_id: FactoryId,
        epoch: u64,
        status: ReportStatus,
        report: Report,
        jitter: f64,
        now: Timestamp,
    },
    /// The coordinator ends a lease that was not renewed in time.
    ExpireLease { jitter: f64, now: Timestamp },
    /// The holder's factory was revoked: its lease ends, no attempt used.
    RevokeLease {
        factory_id: FactoryId,
        now: Timestamp,
    },
    /// The coordinator evicts this job's lease for a critical job (no attempt used;
    /// the checkpoint is kept; the job is queued again at once).
    /// Refused unless the lease is still held by `holder` and this job's priority is
    /// strictly lower than `for_priority` (the decision may be stale by now).
    PreemptLease {
        for_job: JobId,
        for_priority: Priority,
        holder: FactoryId,
        reason: String,
        now: Timestamp,
    },
    /// Reserve a freed slot of `factory_id` for this (critical, queued) job until
    /// `until`: other factories cannot take it and that factory takes nothing else.
    /// Refused while an earlier reservation is live (one eviction per critical job).
    Nominate {
        factory_id: FactoryId,
        victim: JobId,
        until: Timestamp,
        now: Timestamp,
    },
    /// `FLEET_PREEMPTION=shadow`: record that `victim` would have been evicted for this
    /// job (once per victim), changing nothing else.
    RecordShadowPreemption {
        victim: JobId,
        factory_id: FactoryId,
        reason: String,
        now: Timestamp,
    },
    /// Attach an uploaded artifact (the holder's epoch must be current).
    AddArtifact {
        uploader: Uploader,
        artifact: ArtifactMeta,
        now: Timestamp,
    },
    /// An operator removes an artifact.
    DeleteArtifact {
        artifact_id: uuid::Uuid,
        now: Timestamp,
    },
    /// An operator approves a job in `review`.
    Ship { now: Timestamp },
    /// An operator cancels a job that has not ended.
    Cancel {
        reason: Option<String>,
        now: Timestamp,
    },
    /// An operator changes the priority of a job that has not ended.
    Reprioritise { priority: Priority, now: Timestamp },
}
