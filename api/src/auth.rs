//! Bearer-token authentication and product scoping.
//!
//! Tokens are 32 random bytes (hex, with a `gf_` prefix), shown once, stored only as
//! SHA-256 (a fast hash is right for high-entropy tokens: a slow KDF would slow every
//! claim), compared in constant time, never logged.

use crate::app::AppState;
use crate::commands;
use crate::error::ApiError;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use gigafactory_domain::factory::{Factory, FactoryCommand};
use gigafactory_domain::FactoryId;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

/// A fresh token: `gf_` + 64 hex characters (32 random bytes from the OS CSPRNG).
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("gf_{}", hex::encode(bytes))
}

/// The stored form of a token.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Which products a caller may see.
#[derive(Debug, Clone, PartialEq)]
pub enum Scope {
    All,
    Products(Vec<String>),
}

impl Scope {
    pub fn from_list(products: Vec<String>) -> Self {
        if products.iter().any(|p| p == "*") {
            Self::All
        } else {
            Self::Products(products)
        }
    }
    pub fn covers(&self, product: &str) -> bool {
        match self {
            Self::All => true,
            Self::Products(ps) => ps.iter().any(|p| p == product),
        }
    }
    pub fn covers_any(&self, products: &[String]) -> bool {
        products.iter().any(|p| self.covers(p))
    }
    /// `None` for all products, as the read-model queries take it.
    pub fn as_filter(&self) -> Option<Vec<String>> {
        match self {
            Self::All => None,
            Self::Products(ps) => Some(ps.clone()),
        }
    }
}

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Caller {
    Admin,
    Operator {
        token_id: Uuid,
        scope: Scope,
    },
    Auditor {
        token_id: Uuid,
        scope: Scope,
    },
    Factory {
        factory_id: FactoryId,
        products: Vec<String>,
    },
}

impl Caller {
    pub fn scope(&self) -> Scope {
        match self {
            Self::Admin => Scope::All,
            Self::Operator { scope, .. } | Self::Auditor { scope, .. } => scope.clone(),
            Self::Factory { products, .. } => Scope::Products(products.clone()),
        }
    }

    /// Admin or operator: may command. Auditors and factories get 403.
    pub fn require_operator(&self) -> Result<Scope, ApiError> {
        match self {
            Self::Admin | Self::Operator { .. } => Ok(self.scope()),
            Self::Auditor { .. } => Err(ApiError::Forbidden("auditor tokens are read-only")),
            Self::Factory { .. } => Err(ApiError::Forbidden("this call is for operators")),
        }
    }

    /// Admin, operator or auditor: may read.
    pub fn require_reader(&self) -> Result<Scope, ApiError> {
        match self {
            Self::Factory { .. } => Err(ApiError::Forbidden(
                "this call is for operators and auditors",
            )),
            _ => Ok(self.scope()),
        }
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self {
            Self::Admin => Ok(()),
            Self::Auditor { .. } => Err(ApiError::Forbidden("auditor tokens are read-only")),
            _ => Err(ApiError::Forbidden("this call needs the admin token")),
        }
    }

    pub fn require_factory(&self) -> Result<(FactoryId, Vec<String>), ApiError> {
        match self {
            Self::Factory {
                factory_id,
                products,
            } => Ok((*factory_id, products.clone())),
            Self::Auditor { .. } => Err(ApiError::Forbidden("auditor tokens are read-only")),
            _ => Err(ApiError::Forbidden("this call is for factories")),
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::Unauthorized)?;
        let hash = hash_token(token);
        if let Some(admin) = &state.admin_token_hash {
            if bool::from(admin.as_bytes().ct_eq(hash.as_bytes())) {
                return Ok(Caller::Admin);
            }
        }
        // Looked up together with the concurrent requests' tokens (one statement).
        let cred = state
            .coalesced
            .credential(&state.pool, hash.clone())
            .await?
            .ok_or(ApiError::Unauthorized)?;
        // The lookup was by hash; compare again in constant time all the same.
        if !bool::from(cred.token_hash.as_bytes().ct_eq(hash.as_bytes())) {
            return Err(ApiError::Unauthorized);
        }
        match cred.kind.as_str() {
            "operator" => Ok(Caller::Operator {
                token_id: cred.subject_id,
                scope: Scope::from_list(cred.products),
            }),
            "auditor" => Ok(Caller::Auditor {
                token_id: cred.subject_id,
                scope: Scope::from_list(cred.products),
            }),
            "factory" => {
                let factory_id = FactoryId(cred.subject_id);
                if cred.pending_confirmation {
                    // First use of a rotated-in token: the previous one stops working.
                    commands::execute::<Factory, _>(state, &factory_id.aggregate_id(), |now| {
                        FactoryCommand::ConfirmToken {
                            token_hash: hash.clone(),
                            now,
                        }
                    })
                    .await
                    .map_err(commands::into_api::<Factory>)?;
                }
                Ok(Caller::Factory {
                    factory_id,
                    products: cred.products,
                })
            }
            _ => Err(ApiError::Unauthorized),
        }
    }
}

/// An admin or operator, checked before the body is read (so an auditor's write is
/// 403 whatever its body).
pub struct Operator(pub Scope);

/// The admin, checked before the body is read.
pub struct Admin;

/// A factory, checked before the body is read.
pub struct FactoryCaller {
    pub factory_id: FactoryId,
    pub products: Vec<String>,
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(
            Caller::from_request_parts(parts, state)
                .await?
                .require_operator()?,
        ))
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Caller::from_request_parts(parts, state)
            .await?
            .require_admin()?;
        Ok(Self)
    }
}

impl FromRequestParts<AppState> for FactoryCaller {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let (factory_id, products) = Caller::from_request_parts(parts, state)
            .await?
            .require_factory()?;
        Ok(Self {
            factory_id,
            products,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashed() {
        let a = generate_token();
        let b = generate_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), 3 + 64);
        assert_eq!(hash_token(&a).len(), 64);
        assert_ne!(hash_token(&a), a);
    }

    #[test]
    fn scope_star_covers_everything() {
        assert!(Scope::from_list(vec!["*".into()]).covers("x"));
        let s = Scope::from_list(vec!["a".into()]);
        assert!(s.covers("a") && !s.covers("b"));
    }
}
