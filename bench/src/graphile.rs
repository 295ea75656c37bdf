//! graphile-worker's drain (bench/graphile/drain.mjs, pinned 0.17.3), run with the
//! machine's Node.js on its own fresh database.

use anyhow::{bail, Context};
use serde::Deserialize;
use std::path::Path;
use tokio::process::Command;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GraphileDrain {
    pub version: String,
    pub jobs_per_second: f64,
}

/// Runs `drain.mjs` in `mode` (`default` or `batched`) and reads its JSON line.
pub async fn drain(
    dir: &Path,
    database_url: &str,
    jobs: usize,
    concurrency: usize,
    mode: &str,
) -> anyhow::Result<GraphileDrain> {
    if !dir.join("node_modules/graphile-worker").exists() {
        bail!(
            "graphile-worker is not installed in {}: run `npm ci --prefix {}` (bench/run does)",
            dir.display(),
            dir.display()
        );
    }
    let out = Command::new("node")
        .arg(dir.join("drain.mjs"))
        .args(["--connection", database_url])
        .args(["--jobs", &jobs.to_string()])
        .args(["--concurrency", &concurrency.to_string()])
        .args(["--mode", mode])
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .context("running node (Node.js is needed for the graphile-worker side)")?;
    if !out.status.success() {
        bail!("graphile-worker drain ({mode}) failed: {}", out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .context("graphile-worker drain printed no JSON line")?;
    Ok(serde_json::from_str(line)?)
}
