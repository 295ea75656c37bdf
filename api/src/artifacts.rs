//! The artifact blob store (`object_store`): a local directory by default, any
//! object_store URL (e.g. `s3://bucket/prefix`) by configuration. Keys are
//! `artifacts/<product>/<job>/<artifact id>`; names never become paths.

use crate::app::AppState;
use futures::StreamExt;
use gigafactory_projections::artifacts::is_live;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::ObjectStore;
use std::sync::Arc;
use uuid::Uuid;

/// Opens the store: a URL (`s3://…`, `file:///…`, `memory:///`) or a local directory.
pub fn open(url: Option<&str>, dir: &std::path::Path) -> anyhow::Result<Arc<dyn ObjectStore>> {
    match url {
        Some(u) => {
            let url = url::Url::parse(u)?;
            // Credentials and options come from the environment (AWS_ACCESS_KEY_ID, …).
            let options: Vec<(String, String)> = std::env::vars()
                .filter(|(k, _)| k.starts_with("AWS_"))
                .map(|(k, v)| (k.to_lowercase(), v))
                .collect();
            let (store, prefix) = object_store::parse_url_opts(&url, options)?;
            Ok(Arc::new(object_store::prefix::PrefixStore::new(
                store, prefix,
            )))
        }
        None => {
            std::fs::create_dir_all(dir)?;
            Ok(Arc::new(LocalFileSystem::new_with_prefix(dir)?))
        }
    }
}

pub fn key(product: &str, job_id: Uuid, artifact_id: Uuid) -> Path {
    Path::from(format!("artifacts/{product}/{job_id}/{artifact_id}"))
}

/// Removes blobs that no live artifact points to and that are older than the grace
/// period (a crash between writing the bytes and appending the event, or between
/// deleting an artifact and its bytes, leaves such blobs). Returns how many.
pub async fn sweep_orphans(state: &AppState) -> anyhow::Result<usize> {
    let grace = chrono::Duration::from_std(state.settings.artifact_orphan_grace)?;
    let cutoff = chrono::Utc::now() - grace;
    let mut listing = state.artifacts.list(Some(&Path::from("artifacts")));
    let mut removed = 0;
    let mut conn = state.pool.acquire().await?;
    while let Some(meta) = listing.next().await {
        let meta = meta?;
        if meta.last_modified > cutoff {
            continue;
        }
        let Some(id) = meta
            .location
            .filename()
            .and_then(|f| Uuid::parse_str(f).ok())
        else {
            continue;
        };
        if !is_live(&mut conn, id).await? {
            state.artifacts.delete(&meta.location).await?;
            removed += 1;
            tracing::info!(artifact_id = %id, "orphan artifact blob removed");
        }
    }
    Ok(removed)
}
