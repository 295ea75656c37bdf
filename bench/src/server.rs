//! A `gigafactory serve` process on a fresh database: started, waited for, measured
//! (resident memory from `/proc`) and stopped.

use anyhow::{bail, Context};
use std::path::Path;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub struct Server {
    child: Child,
    pub url: String,
    pub admin_token: String,
}

impl Server {
    /// Starts `bin serve` on `database_url` on a free port and waits until it is ready.
    pub async fn start(bin: &Path, database_url: &str, work_dir: &Path) -> anyhow::Result<Self> {
        let admin_token = gigafactory_api::auth::generate_token();
        let mut child = Command::new(bin)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("DATABASE_URL", database_url)
            .env("GIGAFACTORY_ADMIN_TOKEN", &admin_token)
            .env("GIGAFACTORY_ARTIFACT_DIR", work_dir.join("artifacts"))
            .env(
                "RUST_LOG",
                std::env::var("GF_BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().context("server stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            match lines.next_line().await? {
                Some(line) => {
                    if let Some(url) = line.strip_prefix("gigafactory listening on ") {
                        break url.trim().to_string();
                    }
                }
                None => bail!("the server exited before it listened"),
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let http = reqwest::Client::new();
        for _ in 0..200 {
            if let Ok(r) = http.get(format!("{url}/readyz")).send().await {
                if r.status().is_success() {
                    return Ok(Self {
                        child,
                        url,
                        admin_token,
                    });
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        bail!("the server at {url} did not become ready")
    }

    /// The process's resident set size in bytes (Linux).
    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        let pid = self.child.id().context("server still running")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .context("VmRSS in /proc status")?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()?;
        Ok(kb * 1024)
    }

    /// Stops the server (SIGTERM, then kill after a grace period).
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        if tokio::time::timeout(std::time::Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}
