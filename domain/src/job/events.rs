//! Everything that can happen to a job. Payloads are camelCase JSON in the log.

use super::commands::{ArtifactMeta, NewJob};
use crate::{FactoryId, JobId, Priority, RunId, Timestamp};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How a run (one lease) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunOutcome {
    Running,
    Succeeded,
    Failed,
    Expired,
    Preempted,
    Released,
    Cancelled,
    Revoked,
}

impl RunOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Expired => "expired",
            Self::Preempted => "preempted",
            Self::Released => "released",
            Self::Cancelled => "cancelled",
            Self::Revoked => "revoked",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all_fields = "camelCase")]
pub enum JobEvent {
    /// The job was created; it is queued.
    JobSubmitted {
        #[serde(flatten)]
        job: NewJobPayload,
        at: Timestamp,
    },
    /// A factory got the lease. `epoch` is this event's sequence number.
    LeaseGranted {
        epoch: u64,
        run_id: RunId,
        factory_id: FactoryId,
        ttl_secs: u32,
        expires_at: Timestamp,
        at: Timestamp,
    },
    LeaseRenewed {
        epoch: u64,
        expires_at: Timestamp,
        at: Timestamp,
    },
    /// A `running` report: progress and/or checkpoint. Moves `leased` → `running`.
    RunProgressed {
        epoch: u64,
        progress: Option<f64>,
        checkpoint: Option<Value>,
        at: Timestamp,
    },
    /// The run succeeded: the job waits in `review`.
    RunSucceeded {
        epoch: u64,
        run_id: RunId,
        cost_usd: Option<f64>,
        checkpoint: Option<Value>,
        at: Timestamp,
    },
    /// The run failed; `retryAt` set → queued again then, unset → `failed`.
    RunFailed {
        epoch: u64,
        run_id: RunId,
        cost_usd: Option<f64>,
        error: Option<String>,
        checkpoint: Option<Value>,
        attempts: u32,
        retry_at: Option<Timestamp>,
        at: Timestamp,
    },
    /// The lease was not renewed in time; same follow-up as `RunFailed`.
    LeaseExpired {
        epoch: u64,
        run_id: RunId,
        attempts: u32,
        retry_at: Option<Timestamp>,
        at: Timestamp,
    },
    /// The holder gave the job back; it is queued again at once.
    LeaseReleased {
        epoch: u64,
        run_id: RunId,
        checkpoint: Option<Value>,
        at: Timestamp,
    },
    /// The holder's factory was revoked; the job is queued again at once.
    LeaseRevoked {
        epoch: u64,
        run_id: RunId,
        at: Timestamp,
    },
    /// The lease was evicted for a critical job; queued again at once, no attempt used.
    LeasePreempted {
        epoch: u64,
        run_id: RunId,
        for_job: JobId,
        reason: String,
        at: Timestamp,
    },
    /// A freed slot of `factoryId` is reserved for this job until `until`.
    JobNominated {
        factory_id: FactoryId,
        victim: JobId,
        until: Timestamp,
        at: Timestamp,
    },
    /// Shadow mode: `victim` would have been evicted for this job. Nothing else changed.
    PreemptionShadowed {
        victim: JobId,
        factory_id: FactoryId,
        reason: String,
        at: Timestamp,
    },
    /// An artifact was attached; its bytes are in the blob store at `blobKey`.
    ArtifactAdded {
        #[serde(flatten)]
        artifact: ArtifactMeta,
        /// The uploading factory (none: an operator).
        factory_id: Option<FactoryId>,
        at: Timestamp,
    },
    ArtifactDeleted {
        artifact_id: uuid::Uuid,
        at: Timestamp,
    },
    JobShipped {
        at: Timestamp,
    },
    /// Ends the lease too, when one is held.
    JobCancelled {
        reason: Option<String>,
        at: Timestamp,
    },
    PriorityChanged {
        from: Priority,
        to: Priority,
        at: Timestamp,
    },
}

/// The submitted job as stored in `JobSubmitted` (flattened into the event).
pub type NewJobPayload = NewJob;

impl DomainEvent for JobEvent {
    fn event_type(&self) -> String {
        match self {
            Self::JobSubmitted { .. } => "JobSubmitted",
            Self::LeaseGranted { .. } => "LeaseGranted",
            Self::LeaseRenewed { .. } => "LeaseRenewed",
            Self::RunProgressed { .. } => "RunProgressed",
            Self::RunSucceeded { .. } => "RunSucceeded",
            Self::RunFailed { .. } => "RunFailed",
            Self::LeaseExpired { .. } => "LeaseExpired",
            Self::LeaseReleased { .. } => "LeaseReleased",
            Self::LeaseRevoked { .. } => "LeaseRevoked",
            Self::LeasePreempted { .. } => "LeasePreempted",
            Self::JobNominated { .. } => "JobNominated",
            Self::PreemptionShadowed { .. } => "PreemptionShadowed",
            Self::ArtifactAdded { .. } => "ArtifactAdded",
            Self::ArtifactDeleted { .. } => "ArtifactDeleted",
            Self::JobShipped { .. } => "JobShipped",
            Self::JobCancelled { .. } => "JobCancelled",
            Self::PriorityChanged { .. } => "PriorityChanged",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1".to_string()
    }
}
