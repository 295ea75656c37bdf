//! The job's state and its rules: which command may do what from which stage.

use super::commands::{JobCommand, NewJob, Report, ReportStatus};
use super::errors::{CurrentState, JobError};
use super::events::{JobEvent, RunOutcome};
use crate::backoff::retry_delay;
use crate::scheduler::is_capable;
use crate::{FactoryId, JobId, Priority, RunId, Stage, Timestamp};
use chrono::Duration;
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The lease a factory holds on the job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    pub epoch: u64,
    pub run_id: RunId,
    pub factory_id: FactoryId,
    pub ttl_secs: u32,
    pub granted_at: Timestamp,
    pub expires_at: Timestamp,
}

/// A factory slot reserved for this job after a preemption.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Nomination {
    pub factory_id: FactoryId,
    pub until: Timestamp,
}

/// A run that has ended, kept so a re-sent final report can be recognised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndedRun {
    pub epoch: u64,
    pub outcome: RunOutcome,
    /// The factory that held the lease (only it may re-send its final report).
    pub factory_id: Option<FactoryId>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct Job {
    /// Number of events applied: the stream's current sequence number.
    pub version: u64,
    pub spec: Option<NewJob>,
    pub stage: Stage,
    pub attempts: u32,
    pub checkpoint: Option<Value>,
    /// The factory that wrote `checkpoint` (the scheduler's affinity term).
    pub checkpoint_factory: Option<FactoryId>,
    pub progress: Option<f64>,
    pub lease: Option<Lease>,
    /// Not claimable before this instant (backoff after a failure or expiry).
    pub available_at: Option<Timestamp>,
    pub ended_runs: Vec<EndedRun>,
    pub last_error: Option<String>,
    /// A slot reserved for this job (it ends with the grant or at `until`).
    pub nomination: Option<Nomination>,
    /// Victims already recorded in shadow mode (recorded once each).
    pub shadowed_victims: Vec<JobId>,
    /// Artifacts attached and not deleted.
    pub artifacts: Vec<uuid::Uuid>,
    pub created_at: Option<Timestamp>,
    pub updated_at: Option<Timestamp>,
}

impl Job {
    pub fn current(&self) -> CurrentState {
        CurrentState {
            stage: self.stage,
            epoch: self.lease.as_ref().map(|l| l.epoch),
        }
    }

    pub fn priority(&self) -> Priority {
        self.spec.as_ref().map(|s| s.priority).unwrap_or_default()
    }

    fn fenced(&self) -> JobError {
        JobError::Fenced {
            current: self.current(),
        }
    }

    fn invalid_stage(&self, message: impl Into<String>) -> JobError {
        JobError::InvalidStage {
            current: self.current(),
            message: message.into(),
        }
    }

    /// The lease, if `factory` holds it with `epoch` and it has not expired by `now`.
    fn valid_lease(
        &self,
        factory: FactoryId,
        epoch: u64,
        now: Timestamp,
    ) -> Result<&Lease, JobError> {
        match &self.lease {
            Some(l) if l.epoch == epoch && l.factory_id == factory && l.expires_at > now => Ok(l),
            _ => Err(self.fenced()),
        }
    }

    fn existing(&self) -> Result<&NewJob, JobError> {
        self.spec.as_ref().ok_or(JobError::NotFound)
    }

    /// A lease's end: new expiry is bounded by the job's total timeout.
    fn expiry(&self, granted_at: Timestamp, ttl_secs: u32, now: Timestamp) -> Timestamp {
        let by_ttl = now + Duration::seconds(i64::from(ttl_secs));
        match self.spec.as_ref().and_then(|s| s.timeout_secs) {
            Some(t) => by_ttl.min(granted_at + Duration::seconds(i64::from(t))),
            None => by_ttl,
        }
    }

    /// After a failure or expiry: when to retry, or `None` when attempts are used up.
    fn retry_at(&self, attempts: u32, jitter: f64, now: Timestamp) -> Option<Timestamp> {
        let max = self.spec.as_ref().map(|s| s.max_attempts).unwrap_or(1);
        (attempts < max).then(|| now + retry_delay(attempts, jitter))
    }

    fn handle_command(&self, command: JobCommand) -> Result<Vec<JobEvent>, JobError> {
        use JobCommand::*;
        if !matches!(command, Submit { .. }) {
            self.existing()?;
        }
        match command {
            Submit { job, now } => self.submit(job, now),
            GrantLease {
                run_id,
                factory_id,
                factory_capabilities,
                ttl_secs,
                now,
            } => {
                if self.stage != Stage::Queued {
                    return Err(self.invalid_stage(format!("job is {}, not queued", self.stage)));
                }
                if self.available_at.is_some_and(|t| t > now) {
                    return Err(self.invalid_stage("job is backing off after a failure"));
                }
                if let Some(n) = &self.nomination {
                    if n.factory_id != factory_id && n.until > now {
                        return Err(self.invalid_stage("job is reserved for another factory"));
                    }
                }
                let spec = self.existing()?;
                if !is_capable(&spec.required_capabilities, &factory_capabilities) {
                    return Err(JobError::NotCapable);
                }
                check_ttl(ttl_secs)?;
                Ok(vec![JobEvent::LeaseGranted {
                    epoch: self.version + 1,
                    run_id,
                    factory_id,
                    ttl_secs,
                    expires_at: self.expiry(now, ttl_secs, now),
                    at: now,
                }])
            }
            RenewLease {
                factory_id,
                epoch,
                ttl_secs,
                now,
            } => {
                if let Some(ttl) = ttl_secs {
                    check_ttl(ttl)?;
                }
                let lease = self.valid_lease(factory_id, epoch, now)?;
                let ttl_secs = ttl_secs.unwrap_or(lease.ttl_secs);
                let expires_at = self
                    .expiry(lease.granted_at, ttl_secs, now)
                    .max(lease.expires_at);
                Ok(vec![JobEvent::LeaseRenewed {
                    epoch,
                    expires_at,
                    at: now,
                }])
            }
            ReleaseLease {
                factory_id,
                epoch,
                checkpoint,
                now,
            } => {
                let lease = self.valid_lease(factory_id, epoch, now)?;
                Ok(vec![JobEvent::LeaseReleased {
                    epoch,
                    run_id: lease.run_id,
                    checkpoint,
                    at: now,
                }])
            }
            Report {
                factory_id,
                epoch,
                status,
                report,
                jitter,
                now,
            } => self.report(factory_id, epoch, status, report, jitter, now),
            ExpireLease { jitter, now } => {
                let lease = self.lease.as_ref().ok_or(JobError::NotExpired)?;
                if lease.expires_at > now {
                    return Err(JobError::NotExpired);
                }
                let attempts = self.attempts + 1;
                Ok(vec![JobEvent::LeaseExpired {
                    epoch: lease.epoch,
                    run_id: lease.run_id,
                    attempts,
                    retry_at: self.retry_at(attempts, jitter, now),
                    at: now,
                }])
            }
            RevokeLease { factory_id, now } => match &self.lease {
                Some(l) if l.factory_id == factory_id => Ok(vec![JobEvent::LeaseRevoked {
                    epoch: l.epoch,
                    run_id: l.run_id,
                    at: now,
                }]),
                _ => Err(self.fenced()),
            },
            PreemptLease {
                for_job,
                for_priority,
                holder,
                reason,
                now,
            } => match &self.lease {
                Some(l)
                    if l.factory_id == holder && self.priority().rank() > for_priority.rank() =>
                {
                    Ok(vec![JobEvent::LeasePreempted {
                        epoch: l.epoch,
                        run_id: l.run_id,
                        for_job,
                        reason,
                        at: now,
                    }])
                }
                Some(_) => Err(self.invalid_stage(
                    "the lease or the priority changed since the preemption was decided",
                )),
                None => {
                    Err(self.invalid_stage(format!("job is {}: no lease to preempt", self.stage)))
                }
            },
            Nominate {
                factory_id,
                victim,
                until,
                now,
            } => {
                if self.stage != Stage::Queued {
                    return Err(self.invalid_stage(format!("job is {}, not queued", self.stage)));
                }
                if self.nomination.as_ref().is_some_and(|n| n.until > now) {
                    return Err(self.invalid_stage("a slot is already reserved for this job"));
                }
                Ok(vec![JobEvent::JobNominated {
                    factory_id,
                    victim,
                    until,
                    at: now,
                }])
            }
            RecordShadowPreemption {
                victim,
                factory_id,
                reason,
                now,
            } => {
                if self.shadowed_victims.contains(&victim) {
                    return Ok(vec![]);
                }
                Ok(vec![JobEvent::PreemptionShadowed {
                    victim,
                    factory_id,
                    reason,
                    at: now,
                }])
            }
            AddArtifact {
                uploader,
                artifact,
                now,
            } => {
                if let Err(message) = super::commands::check_artifact_name(&artifact.name) {
                    return Err(JobError::Invalid {
                        field: "name",
                        message,
                    });
                }
                let factory_id = match uploader {
                    super::commands::Uploader::Factory { factory_id, epoch } => {
                        self.valid_lease(factory_id, epoch, now)?;
                        Some(factory_id)
                    }
                    super::commands::Uploader::Operator => None,
                };
                Ok(vec![JobEvent::ArtifactAdded {
                    artifact,
                    factory_id,
                    at: now,
                }])
            }
            DeleteArtifact { artifact_id, now } => {
                if !self.artifacts.contains(&artifact_id) {
                    return Err(JobError::NotFound);
                }
                Ok(vec![JobEvent::ArtifactDeleted {
                    artifact_id,
                    at: now,
                }])
            }
            Ship { now } => {
                if self.stage != Stage::Review {
                    return Err(self.invalid_stage(format!(
                        "only a job in review can be shipped; this one is {}",
                        self.stage
                    )));
                }
                Ok(vec![JobEvent::JobShipped { at: now }])
            }
            Cancel { reason, now } => {
                // A job in review may still be rejected; shipped, failed and cancelled
                // jobs have ended.
                if matches!(
                    self.stage,
                    Stage::Shipped | Stage::Failed | Stage::Cancelled
                ) {
                    return Err(self.invalid_stage(format!("job is already {}", self.stage)));
                }
                Ok(vec![JobEvent::JobCancelled { reason, at: now }])
            }
            Reprioritise { priority, now } => {
                if self.stage.is_terminal() {
                    return Err(self.invalid_stage(format!("job is already {}", self.stage)));
                }
                let from = self.priority();
                if from == priority {
                    return Ok(vec![]);
                }
                Ok(vec![JobEvent::PriorityChanged {
                    from,
                    to: priority,
                    at: now,
                }])
            }
        }
    }

    fn submit(&self, job: NewJob, now: Timestamp) -> Result<Vec<JobEvent>, JobError> {
        if self.spec.is_some() {
            return Err(JobError::AlreadyExists);
        }
        let title = job.title.trim();
        if title.is_empty() || title.chars().count() > 500 {
            return Err(JobError::invalid(
                "title",
                "title must be 1 to 500 characters",
            ));
        }
        if !(1..=100).contains(&job.max_attempts) {
            return Err(JobError::invalid(
                "maxAttempts",
                "maxAttempts must be between 1 and 100",
            ));
        }
        if !job.budget_usd.is_finite() || job.budget_usd < 0.0 {
            return Err(JobError::invalid(
                "budget.usd",
                "budget.usd must be a finite number ≥ 0",
            ));
        }
        if job.timeout_secs == Some(0) {
            return Err(JobError::invalid(
                "timeoutSecs",
                "timeoutSecs must be positive",
            ));
        }
        if job
            .required_capabilities
            .iter()
            .any(|c| c.is_empty() || c.len() > 64)
        {
            return Err(JobError::invalid(
                "requiredCapabilities",
                "each capability must be 1 to 64 characters",
            ));
        }
        Ok(vec![JobEvent::JobSubmitted { job, at: now }])
    }

    fn report(
        &self,
        factory_id: FactoryId,
        epoch: u64,
        status: ReportStatus,
        report: Report,
        jitter: f64,
        now: Timestamp,
    ) -> Result<Vec<JobEvent>, JobError> {
        // A re-sent final report (same epoch, same status) changes nothing.
        let ended_same = |outcome| {
            self.ended_runs.iter().any(|r| {
                r.epoch == epoch && r.outcome == outcome && r.factory_id == Some(factory_id)
            })
        };
        match status {
            ReportStatus::Succeeded if ended_same(RunOutcome::Succeeded) => return Ok(vec![]),
            ReportStatus::Failed if ended_same(RunOutcome::Failed) => return Ok(vec![]),
            _ => {}
        }
        if let Some(p) = report.progress {
            if !p.is_finite() || !(0.0..=1.0).contains(&p) {
                return Err(JobError::invalid(
                    "progress",
                    "progress must be between 0 and 1",
                ));
            }
        }
        if let Some(c) = report.cost_usd {
            if !c.is_finite() || c < 0.0 {
                return Err(JobError::invalid(
                    "costUsd",
                    "costUsd must be a finite number ≥ 0",
                ));
            }
        }
        let lease = self.valid_lease(factory_id, epoch, now)?;
        let event = match status {
            ReportStatus::Running => JobEvent::RunProgressed {
                epoch,
                progress: report.progress,
                checkpoint: report.checkpoint,
                at: now,
            },
            ReportStatus::Succeeded => JobEvent::RunSucceeded {
                epoch,
                run_id: lease.run_id,
                cost_usd: report.cost_usd,
                checkpoint: report.checkpoint,
                at: now,
            },
            ReportStatus::Failed => {
                let attempts = self.attempts + 1;
                JobEvent::RunFailed {
                    epoch,
                    run_id: lease.run_id,
                    cost_usd: report.cost_usd,
                    error: report.error,
                    checkpoint: report.checkpoint,
                    attempts,
                    retry_at: self.retry_at(attempts, jitter, now),
                    at: now,
                }
            }
        };
        Ok(vec![event])
    }

    /// Keeps a checkpoint written under the current lease, and who wrote it.
    fn save_checkpoint(&mut self, checkpoint: Option<Value>) {
        if checkpoint.is_some() {
            self.checkpoint = checkpoint;
            self.checkpoint_factory = self.lease.as_ref().map(|l| l.factory_id);
        }
    }

    /// Ends the current lease with `outcome`.
    fn end_lease(&mut self, outcome: RunOutcome) {
        if let Some(l) = self.lease.take() {
            self.ended_runs.push(EndedRun {
                epoch: l.epoch,
                outcome,
                factory_id: Some(l.factory_id),
            });
        }
    }

    fn requeue_or_fail(&mut self, retry_at: Option<Timestamp>) {
        match retry_at {
            Some(t) => {
                self.stage = Stage::Queued;
                self.available_at = Some(t);
            }
            None => self.stage = Stage::Failed,
        }
    }
}

fn check_ttl(ttl_secs: u32) -> Result<(), JobError> {
    use super::commands::{LEASE_TTL_MAX_SECS, LEASE_TTL_MIN_SECS};
    if !(LEASE_TTL_MIN_SECS..=LEASE_TTL_MAX_SECS).contains(&ttl_secs) {
        return Err(JobError::invalid(
            "leaseTtlSecs",
            format!("leaseTtlSecs must be between {LEASE_TTL_MIN_SECS} and {LEASE_TTL_MAX_SECS}"),
        ));
    }
    Ok(())
}

impl Aggregate for Job {
    const TYPE: &'static str = "job";
    type Command = JobCommand;
    type Event = JobEvent;
    type Error = JobError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.handle_command(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        use JobEvent::*;
        self.version += 1;
        let at = match &event {
            JobSubmitted { at, .. }
            | LeaseGranted { at, .. }
            | LeaseRenewed { at, .. }
            | RunProgressed { at, .. }
            | RunSucceeded { at, .. }
            | RunFailed { at, .. }
            | LeaseExpired { at, .. }
            | LeaseReleased { at, .. }
            | LeaseRevoked { at, .. }
            | LeasePreempted { at, .. }
            | JobNominated { at, .. }
            | PreemptionShadowed { at, .. }
            | ArtifactAdded { at, .. }
            | ArtifactDeleted { at, .. }
            | JobShipped { at, .. }
            | JobCancelled { at, .. }
            | PriorityChanged { at, .. } => *at,
        };
        self.updated_at = Some(at);
        match event {
            JobSubmitted { job, at } => {
                self.spec = Some(job);
                self.stage = Stage::Queued;
                self.created_at = Some(at);
            }
            LeaseGranted {
                epoch,
                run_id,
                factory_id,
                ttl_secs,
                expires_at,
                at,
            } => {
                self.stage = Stage::Leased;
                self.available_at = None;
                self.progress = None;
                self.nomination = None;
                self.lease = Some(Lease {
                    epoch,
                    run_id,
                    factory_id,
                    ttl_secs,
                    granted_at: at,
                    expires_at,
                });
            }
            LeaseRenewed { expires_at, .. } => {
                if let Some(l) = self.lease.as_mut() {
                    l.expires_at = expires_at;
                }
            }
            RunProgressed {
                progress,
                checkpoint,
                ..
            } => {
                self.stage = Stage::Running;
                if progress.is_some() {
                    self.progress = progress;
                }
                self.save_checkpoint(checkpoint);
            }
            RunSucceeded { checkpoint, .. } => {
                self.save_checkpoint(checkpoint);
                self.progress = Some(1.0);
                self.end_lease(RunOutcome::Succeeded);
                self.stage = Stage::Review;
            }
            RunFailed {
                checkpoint,
                error,
                attempts,
                retry_at,
                ..
            } => {
                self.save_checkpoint(checkpoint);
                self.last_error = error;
                self.attempts = attempts;
                self.end_lease(RunOutcome::Failed);
                self.requeue_or_fail(retry_at);
            }
            LeaseExpired {
                attempts, retry_at, ..
            } => {
                self.attempts = attempts;
                self.end_lease(RunOutcome::Expired);
                self.requeue_or_fail(retry_at);
            }
            LeaseReleased { checkpoint, at, .. } => {
                self.save_checkpoint(checkpoint);
                self.end_lease(RunOutcome::Released);
                self.stage = Stage::Queued;
                self.available_at = Some(at);
            }
            LeaseRevoked { at, .. } => {
                self.end_lease(RunOutcome::Revoked);
                self.stage = Stage::Queued;
                self.available_at = Some(at);
            }
            LeasePreempted { at, .. } => {
                self.end_lease(RunOutcome::Preempted);
                self.stage = Stage::Queued;
                self.available_at = Some(at);
            }
            JobNominated {
                factory_id, until, ..
            } => {
                self.nomination = Some(Nomination { factory_id, until });
            }
            PreemptionShadowed { victim, .. } => self.shadowed_victims.push(victim),
            ArtifactAdded { artifact, .. } => self.artifacts.push(artifact.artifact_id),
            ArtifactDeleted { artifact_id, .. } => self.artifacts.retain(|a| *a != artifact_id),
            JobShipped { .. } => self.stage = Stage::Shipped,
            JobCancelled { .. } => {
                self.end_lease(RunOutcome::Cancelled);
                self.stage = Stage::Cancelled;
            }
            PriorityChanged { to, .. } => {
                if let Some(s) = self.spec.as_mut() {
                    s.priority = to;
                }
            }
        }
    }
}
