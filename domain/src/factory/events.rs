use super::commands::NewFactory;
use crate::Timestamp;
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all_fields = "camelCase")]
pub enum FactoryEvent {
    FactoryEnrolled {
        #[serde(flatten)]
        factory: NewFactory,
        at: Timestamp,
    },
    /// `previousValidUntil`: the old token works until then unless the new one is
    /// used first.
    FactoryTokenRotated {
        token_hash: String,
        previous_token_hash: String,
        previous_valid_until: Timestamp,
        at: Timestamp,
    },
    /// The new token was used: the previous one is retired now.
    FactoryTokenConfirmed {
        token_hash: String,
        retired_token_hash: String,
        at: Timestamp,
    },
    FactoryRevoked {
        at: Timestamp,
    },
}

impl DomainEvent for FactoryEvent {
    fn event_type(&self) -> String {
        match self {
            Self::FactoryEnrolled { .. } => "FactoryEnrolled",
            Self::FactoryTokenRotated { .. } => "FactoryTokenRotated",
            Self::FactoryTokenConfirmed { .. } => "FactoryTokenConfirmed",
            Self::FactoryRevoked { .. } => "FactoryRevoked",
        }
        .to_string()
    }
    fn event_version(&self) -> String {
        "1".to_string()
    }
}
