//! `product_settings_view`: each product's weight override for the scheduler.

use crate::{EventRecord, ProjectionError};
use cqrs_es::Aggregate;
use gigafactory_domain::scheduler::WeightOverrides;
use gigafactory_domain::settings::{ProductSettings, SettingsEvent};
use sqlx::{PgConnection, Row};
use std::collections::HashMap;

pub async fn apply(conn: &mut PgConnection, event: &EventRecord) -> Result<(), ProjectionError> {
    if event.aggregate_type != ProductSettings::TYPE {
        return Ok(());
    }
    match event.decode::<ProductSettings>()? {
        SettingsEvent::WeightsSet {
            product_id,
            weights,
            ..
        } => {
            sqlx::query(
                "INSERT INTO product_settings_view (product_id, weights, version) VALUES ($1, $2, $3)
                 ON CONFLICT (product_id) DO UPDATE SET weights = EXCLUDED.weights, version = EXCLUDED.version
                 WHERE product_settings_view.version < EXCLUDED.version",
            )
            .bind(product_id.as_str())
            .bind(serde_json::to_value(&weights).expect("weights serialise"))
            .bind(event.sequence)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

/// The weight overrides of these products (products without one are absent).
pub async fn weights_of(
    conn: &mut PgConnection,
    products: &[String],
) -> Result<HashMap<String, WeightOverrides>, ProjectionError> {
    let rows = sqlx::query(
        "SELECT product_id, weights FROM product_settings_view WHERE product_id = ANY($1)",
    )
    .bind(products)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .filter_map(|r| {
            overrides_of(r.get("weights"))
                .transpose()
                .map(|w| w.map(|w| (r.get::<String, _>("product_id"), w)))
        })
        .collect()
}

/// A stored `weights` value as an override; `None` when it overrides nothing.
pub fn overrides_of(stored: serde_json::Value) -> Result<Option<WeightOverrides>, ProjectionError> {
    let w: WeightOverrides = serde_json::from_value(stored).map_err(ProjectionError::State)?;
    Ok((!w.is_empty()).then_some(w))
}
