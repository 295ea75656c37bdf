use crate::{FactoryId, ProductId, Timestamp};
use serde::{Deserialize, Serialize};

/// A factory as an operator enrolls it. `token_hash` is the SHA-256 (hex) of the
/// token handed out once; the token itself never reaches the domain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewFactory {
    pub factory_id: FactoryId,
    pub name: String,
    pub product_ids: Vec<ProductId>,
    pub capabilities: Vec<String>,
    pub capacity: u32,
    pub token_hash: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FactoryCommand {
    Enroll {
        factory: NewFactory,
        now: Timestamp,
    },
    /// Issue a new token; the old one keeps working until the new one is first used
    /// or the grace period passes.
    RotateToken {
        new_token_hash: String,
        now: Timestamp,
    },
    /// The new token was used for the first time: the previous one stops working.
    ConfirmToken {
        token_hash: String,
        now: Timestamp,
    },
    /// Refuse the factory's tokens from now on.
    Revoke {
        now: Timestamp,
    },
}
