//! Feeding the pure scheduler from the read models: the bounded candidate set, the
//! running counts for fairness and each product's resolved weights. The claim and the
//! explain endpoint share it.

use crate::error::ApiError;
use chrono::{DateTime, Utc};
use gigafactory_domain::scheduler::{
    rank, Breakdown, FactoryProfile, FleetWeightConfig, JobCandidate, SchedulingContext,
    WeightOverrides, Weights,
};
use gigafactory_domain::{FactoryId, JobId, ProductId};
use gigafactory_projections::{jobs, settings};
use sqlx::PgConnection;
use std::collections::{BTreeMap, HashMap};

/// Rows per part of the bounded candidate set (by priority, oldest, affinity).
pub const CANDIDATES_PER_SET: i64 = 16;

/// The resolved weights of each product: defaults → product override → request.
pub async fn weights_for(
    conn: &mut PgConnection,
    products: &[String],
    request: Option<&WeightOverrides>,
) -> Result<HashMap<ProductId, Weights>, ApiError> {
    let overrides = settings::weights_of(conn, products).await?;
    Ok(resolve(products.iter(), &overrides, request))
}

/// Each product's weights: defaults → its stored override → the request's.
fn resolve<'a>(
    products: impl Iterator<Item = &'a String>,
    overrides: &HashMap<String, WeightOverrides>,
    request: Option<&WeightOverrides>,
) -> HashMap<ProductId, Weights> {
    products
        .map(|p| {
            let config = FleetWeightConfig {
                product: overrides.get(p).cloned(),
                request: request.cloned(),
            };
            (ProductId(p.clone()), config.resolve())
        })
        .collect()
}

/// How `factory` ranks the claimable jobs of `products` now, best first.
#[allow(clippy::too_many_arguments)]
pub async fn rank_for_factory(
    conn: &mut PgConnection,
    factory_id: FactoryId,
    capabilities: &[String],
    products: &[String],
    request: Option<&WeightOverrides>,
    now: DateTime<Utc>,
    per_set: i64,
) -> Result<Vec<Pick>, ApiError> {
    let mut ranked = rank_for_factories(
        conn,
        &[factory_id],
        capabilities,
        products,
        request,
        now,
        per_set,
    )
    .await?;
    Ok(ranked.pop().unwrap_or_default())
}

/// How each of `factory_ids` — factories of one profile (the same `capabilities`,
/// `products` and request weights) claiming together — ranks the claimable jobs
/// now, best first, from one candidate read. Each ranks as it would alone: its own
/// affinity, and a job a preemption reserved for a factory is in that factory's
/// ranking only.
#[allow(clippy::too_many_arguments)]
pub async fn rank_for_factories(
    conn: &mut PgConnection,
    factory_ids: &[FactoryId],
    capabilities: &[String],
    products: &[String],
    request: Option<&WeightOverrides>,
    now: DateTime<Utc>,
    per_set: i64,
) -> Result<Vec<Vec<Pick>>, ApiError> {
    let ids: Vec<uuid::Uuid> = factory_ids.iter().map(|f| f.0).collect();
    let set = jobs::candidates(conn, products, capabilities, &ids, now, per_set).await?;
    let running: BTreeMap<ProductId, u32> = set
        .running
        .into_iter()
        .map(|(p, n)| (ProductId(p), n as u32))
        .collect();
    let weights = resolve(
        set.rows.iter().map(|r| &r.product_id),
        &set.weight_overrides,
        request,
    );
    let defaults = Weights::defaults();
    let ctx = SchedulingContext {
        now,
        running_by_product: running,
    };
    let reserved_for: Vec<Option<uuid::Uuid>> = set.rows.iter().map(|r| r.nominated_for).collect();
    let candidates: Vec<JobCandidate> = set.rows.into_iter().map(candidate).collect();
    Ok(factory_ids
        .iter()
        .map(|&factory_id| {
            let mine: Vec<JobCandidate> = candidates
                .iter()
                .zip(&reserved_for)
                .filter(|(_, r)| r.is_none_or(|f| f == factory_id.0))
                .map(|(c, _)| c.clone())
                .collect();
            let factory = FactoryProfile {
                factory_id,
                capabilities: capabilities.to_vec(),
            };
            rank(&mine, &factory, &ctx, |p| {
                weights.get(p).unwrap_or(&defaults)
            })
            .into_iter()
            .map(|r| Pick {
                job: r.job.clone(),
                breakdown: r.breakdown,
            })
            .collect()
        })
        .collect())
}

/// A queue row as the scheduler sees it.
pub fn candidate(r: jobs::CandidateRow) -> JobCandidate {
    JobCandidate {
        job_id: JobId(r.job_id),
        product_id: ProductId(r.product_id),
        priority: r.priority.parse().unwrap_or_default(),
        created_at: r.created_at,
        required_capabilities: r.required_capabilities,
        checkpoint_factory: r.affinity_factory_id.map(FactoryId),
    }
}

/// A ranked candidate, owned (the claim's and explain's sets are small).
#[derive(Debug, Clone)]
pub struct Pick {
    pub job: JobCandidate,
    pub breakdown: Breakdown,
}
