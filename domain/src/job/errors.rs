//! Why a job command was refused. A refused command appends nothing.

use crate::Stage;
use serde::Serialize;

/// What the caller is told about the job when its write is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CurrentState {
    pub stage: Stage,
    pub epoch: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JobError {
    #[error("job not found")]
    NotFound,
    #[error("job already exists")]
    AlreadyExists,
    /// The epoch is not the current lease's, or that lease has expired.
    #[error("stale lease epoch: the lease is no longer held with this epoch")]
    Fenced { current: CurrentState },
    /// The move is not allowed from the job's stage.
    #[error("{message}")]
    InvalidStage {
        current: CurrentState,
        message: String,
    },
    /// The lease may not be expired yet (the sweeper raced a renewal).
    #[error("lease has not expired")]
    NotExpired,
    /// The factory lacks a capability the job requires.
    #[error("factory lacks required capabilities")]
    NotCapable,
    #[error("{message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

impl JobError {
    pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            message: message.into(),
        }
    }
}
