//! `credential_view`: SHA-256 hashes of operator, auditor and factory tokens, with
//! their scope and validity. Authentication reads only this table.

use crate::{EventRecord, ProjectionError};
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use gigafactory_domain::access::{AccessToken, AccessTokenEvent, Role};
use gigafactory_domain::factory::{Factory, FactoryEvent};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

pub async fn apply(conn: &mut PgConnection, event: &EventRecord) -> Result<(), ProjectionError> {
    if event.aggregate_type == AccessToken::TYPE {
        match event.decode::<AccessToken>()? {
            AccessTokenEvent::AccessTokenIssued { token, .. } => {
                let kind = match token.role {
                    Role::Operator => "operator",
                    Role::Auditor => "auditor",
                };
                insert(
                    conn,
                    &token.token_hash,
                    kind,
                    token.token_id.0,
                    &token.products,
                    false,
                )
                .await?;
            }
            AccessTokenEvent::AccessTokenRevoked { .. } => {
                let id = subject_of(&event.aggregate_id, "token:");
                revoke(conn, id).await?;
            }
        }
    } else if event.aggregate_type == Factory::TYPE {
        let id = subject_of(&event.aggregate_id, "factory:");
        match event.decode::<Factory>()? {
            FactoryEvent::FactoryEnrolled { factory, .. } => {
                let products: Vec<String> =
                    factory.product_ids.iter().map(|p| p.0.clone()).collect();
                insert(conn, &factory.token_hash, "factory", id, &products, false).await?;
            }
            FactoryEvent::FactoryTokenRotated {
                token_hash,
                previous_token_hash,
                previous_valid_until,
                ..
            } => {
                let products: Vec<String> = sqlx::query_scalar(
                    "SELECT products FROM credential_view WHERE token_hash = $1",
                )
                .bind(&previous_token_hash)
                .fetch_optional(&mut *conn)
                .await?
                .unwrap_or_default();
                insert(conn, &token_hash, "factory", id, &products, true).await?;
                retire(conn, &previous_token_hash, previous_valid_until).await?;
            }
            FactoryEvent::FactoryTokenConfirmed {
                token_hash,
                retired_token_hash,
                at,
            } => {
                retire(conn, &retired_token_hash, at).await?;
                sqlx::query(
                    "UPDATE credential_view SET pending_confirmation = false WHERE token_hash = $1",
                )
                .bind(&token_hash)
                .execute(&mut *conn)
                .await?;
            }
            FactoryEvent::FactoryRevoked { .. } => revoke(conn, id).await?,
        }
    }
    Ok(())
}

fn subject_of(aggregate_id: &str, prefix: &str) -> Uuid {
    aggregate_id
        .strip_prefix(prefix)
        .and_then(|s| Uuid::parse_str(s).ok())
        .unwrap_or_default()
}

async fn insert(
    conn: &mut PgConnection,
    hash: &str,
    kind: &str,
    subject: Uuid,
    products: &[String],
    pending: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO credential_view (token_hash, kind, subject_id, products, pending_confirmation)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (token_hash) DO NOTHING",
    )
    .bind(hash)
    .bind(kind)
    .bind(subject)
    .bind(products)
    .bind(pending)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Idempotent and order-free: the earliest end wins.
async fn retire(
    conn: &mut PgConnection,
    hash: &str,
    until: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE credential_view SET valid_until = least(coalesce(valid_until, $2), $2)
         WHERE token_hash = $1",
    )
    .bind(hash)
    .bind(until)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn revoke(conn: &mut PgConnection, subject: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE credential_view SET revoked = true WHERE subject_id = $1")
        .bind(subject)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// A credential that authenticates now (by the database clock).
#[derive(Debug, Clone, PartialEq)]
pub struct Credential {
    pub token_hash: String,
    pub kind: String,
    pub subject_id: Uuid,
    pub products: Vec<String>,
    /// A rotated-in factory token not used before: its first use retires the old one.
    pub pending_confirmation: bool,
}

/// Looks several token hashes up in one statement (concurrent requests' lookups,
/// coalesced): the credentials that authenticate now, by hash; unknown, revoked and
/// rotated-out hashes are absent.
pub async fn find_valid_many(
    conn: &mut PgConnection,
    token_hashes: &[String],
) -> Result<std::collections::HashMap<String, Credential>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT token_hash, kind, subject_id, products, pending_confirmation FROM credential_view
         WHERE token_hash = ANY($1) AND NOT revoked AND (valid_until IS NULL OR valid_until > now())",
    )
    .bind(token_hashes)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let c = Credential {
                token_hash: r.get("token_hash"),
                kind: r.get("kind"),
                subject_id: r.get("subject_id"),
                products: r.get("products"),
                pending_confirmation: r.get("pending_confirmation"),
            };
            (c.token_hash.clone(), c)
        })
        .collect())
}

/// Looks a token hash up; `None` when unknown, revoked or rotated out.
pub async fn find_valid(
    conn: &mut PgConnection,
    token_hash: &str,
) -> Result<Option<Credential>, sqlx::Error> {
    Ok(find_valid_many(conn, &[token_hash.to_string()])
        .await?
        .remove(token_hash))
}
