use super::events::Role;
use crate::{Timestamp, TokenId};
use serde::{Deserialize, Serialize};

/// A token to issue. `products` holds product ids or the single entry `*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewAccessToken {
    pub token_id: TokenId,
    pub role: Role,
    pub products: Vec<String>,
    pub name: String,
    pub token_hash: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AccessTokenCommand {
    Issue {
        token: NewAccessToken,
        now: Timestamp,
    },
    Revoke {
        now: Timestamp,
    },
}
