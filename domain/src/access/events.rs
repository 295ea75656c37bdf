use super::commands::NewAccessToken;
use crate::Timestamp;
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

/// What a non-factory token may do: operators command, auditors only read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Operator,
    Auditor,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all_fields = "camelCase")]
pub enum AccessTokenEvent {
    AccessTokenIssued {
        #[serde(flatten)]
        token: NewAccessToken,
        at: Timestamp,
    },
    AccessTokenRevoked {
        at: Timestamp,
    },
}

impl DomainEvent for AccessTokenEvent {
    fn event_type(&self) -> String {
        match self {
            Self::AccessTokenIssued { .. } => "AccessTokenIssued",
            Self::AccessTokenRevoked { .. } => "AccessTokenRevoked",
        }
        .to_string()
    }
    fn event_version(&self) -> String {
        "1".to_string()
    }
}
