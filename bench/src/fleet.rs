//! The fleet scenarios, each a set of concurrent HTTP clients against one server:
//! the drain (with the projection-lag probe beside it), the lifecycle and the idle
//! enqueue → claim latency.

use crate::client::Api;
use crate::stats::Percentiles;
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// What a drain measured.
pub struct Drain {
    pub jobs: usize,
    pub seconds: f64,
    pub claim_ms: Percentiles,
    pub projection_lag_ms: Percentiles,
    /// Claims per claim transaction and reports per report statement, on average
    /// (the server serves concurrent calls together: docs/architecture.md).
    pub claims_per_batch: Option<f64>,
    pub reports_per_batch: Option<f64>,
}

impl Drain {
    pub fn jobs_per_second(&self) -> f64 {
        self.jobs as f64 / self.seconds
    }
}

/// How a drain's factories report a run and claim the next job.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Calls {
    /// `POST /fleet/claim`, then `POST /fleet/jobs/:id/report`: two calls per job.
    ClaimThenReport,
    /// `POST /fleet/jobs/:id/report-and-claim`: one call per job (a claim alone only
    /// when the factory holds nothing).
    ReportAndClaim,
}

impl Calls {
    /// The drain's name (its database's, its log lines').
    pub fn name(self) -> &'static str {
        match self {
            Calls::ClaimThenReport => "drain",
            Calls::ReportAndClaim => "drain_chained",
        }
    }
}

/// `factories` claim → report succeeded, one job per claim, until `jobs` runs ended;
/// `claim_ms` times each call that leased a job. Meanwhile a probe submits a job to an unserved product every 20 ms and times each
/// submit's acknowledgement until its event reaches an SSE subscriber, which happens
/// once the sequencer gave it its position in the log (the read models have it since
/// its commit: a command writes them in its own transaction).
pub async fn drain(
    api: &Api,
    factories: &[String],
    jobs: usize,
    probe_token: &str,
    probe_product: &str,
    calls: Calls,
) -> anyhow::Result<Drain> {
    let done = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(Mutex::new(None::<Instant>));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(jobs)));
    let probing = Arc::new(AtomicBool::new(true));
    let probe = tokio::spawn(lag_probe(
        api.clone(),
        probe_token.to_string(),
        probe_product.to_string(),
        probing.clone(),
    ));
    // Let the subscriber connect before the clock starts.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for token in factories {
        let (api, token, done, finished, latencies) = (
            api.clone(),
            token.clone(),
            done.clone(),
            finished.clone(),
            latencies.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut wait_ms = 0;
            let mut held: Option<(String, u64)> = None;
            let finish = |done: &AtomicUsize| {
                if done.fetch_add(1, Ordering::Relaxed) + 1 == jobs {
                    *finished.lock().unwrap() = Some(Instant::now());
                }
            };
            while done.load(Ordering::Relaxed) < jobs || held.is_some() {
                let t = Instant::now();
                let next = match (held.take(), calls) {
                    (Some((job, epoch)), Calls::ReportAndClaim) => {
                        let next = api.succeed_and_claim(&token, &job, epoch, 0).await?;
                        finish(&done);
                        next
                    }
                    (Some((job, epoch)), Calls::ClaimThenReport) => {
                        api.succeed(&token, &job, epoch).await?;
                        finish(&done);
                        continue;
                    }
                    (None, _) if done.load(Ordering::Relaxed) >= jobs => break,
                    (None, _) => api.claim(&token, wait_ms).await?,
                };
                match next {
                    Some(lease) => {
                        latencies.lock().unwrap().push(ms(t.elapsed()));
                        held = Some(lease);
                        wait_ms = 0;
                    }
                    // Other claimers hold the rows left: wait for the next change.
                    None => wait_ms = 1000,
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let ended = finished.lock().unwrap().unwrap_or_else(Instant::now);
    probing.store(false, Ordering::Relaxed);
    let lags = probe.await??;
    let claim_ms = Percentiles::of(std::mem::take(&mut *latencies.lock().unwrap()));
    Ok(Drain {
        jobs,
        seconds: (ended - started).as_secs_f64(),
        claim_ms,
        projection_lag_ms: Percentiles::of(lags),
        claims_per_batch: api.mean_batch("claims").await?,
        reports_per_batch: api.mean_batch("reports").await?,
    })
}

/// `factories` claim up to `batch` jobs per call and report them in one call, until
/// `jobs` runs ended; returns the seconds it took.
pub async fn drain_batched(
    api: &Api,
    factories: &[String],
    jobs: usize,
    batch: usize,
) -> anyhow::Result<f64> {
    let done = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(Mutex::new(None::<Instant>));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for token in factories {
        let (api, token, done, finished) =
            (api.clone(), token.clone(), done.clone(), finished.clone());
        tasks.push(tokio::spawn(async move {
            let mut wait_ms = 0;
            while done.load(Ordering::Relaxed) < jobs {
                let leases = api.claim_batch(&token, batch, wait_ms).await?;
                if leases.is_empty() {
                    // Other claimers hold the rows left: wait for the next change.
                    wait_ms = 1000;
                    continue;
                }
                api.succeed_batch(&token, &leases).await?;
                let before = done.fetch_add(leases.len(), Ordering::Relaxed);
                if before < jobs && before + leases.len() >= jobs {
                    *finished.lock().unwrap() = Some(Instant::now());
                }
                wait_ms = 0;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let ended = finished.lock().unwrap().unwrap_or_else(Instant::now);
    Ok((ended - started).as_secs_f64())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Submits probe jobs while `probing`; returns each one's lag (ms) from the append's
/// acknowledgement to the SSE message.
async fn lag_probe(
    api: Api,
    token: String,
    product: String,
    probing: Arc<AtomicBool>,
) -> anyhow::Result<Vec<f64>> {
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Default::default();
    let response = api
        .http
        .get(format!("{}/fleet/stream", api.base))
        .bearer_auth(&token)
        .send()
        .await?
        .error_for_status()?;
    let reader = {
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut body = response.bytes_stream();
            let mut buffer = String::new();
            while let Some(chunk) = body.next().await {
                let Ok(chunk) = chunk else { break };
                let at = Instant::now();
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buffer.find("\n\n") {
                    let message: String = buffer.drain(..end + 2).collect();
                    for data in message.lines().filter_map(|l| l.strip_prefix("data:")) {
                        if let Ok(v) = serde_json::from_str::<serde_json::Value>(data.trim()) {
                            if v["type"] == "JobSubmitted" {
                                if let Some(id) = v["aggregateId"].as_str() {
                                    let job = id.rsplit('/').next().unwrap_or(id).to_string();
                                    seen.lock().unwrap().insert(job, at);
                                }
                            }
                        }
                    }
                }
            }
        })
    };
    let mut acked = Vec::new();
    let mut n = 0;
    while probing.load(Ordering::Relaxed) {
        let id = api.submit(&token, &product, &format!("probe {n}")).await?;
        acked.push((id, Instant::now()));
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Give the last probes time to arrive.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if acked
            .iter()
            .all(|(id, _)| seen.lock().unwrap().contains_key(id))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    reader.abort();
    let seen = seen.lock().unwrap();
    let lost = acked
        .iter()
        .filter(|(id, _)| !seen.contains_key(id))
        .count();
    if lost > 0 {
        anyhow::bail!("{lost} probe events never reached the stream");
    }
    Ok(acked
        .iter()
        .map(|(id, at)| ms(seen[id].saturating_duration_since(*at)))
        .collect())
}

/// `workers` each loop submit → claim → report succeeded until `jobs` runs ended;
/// returns jobs/s.
pub async fn lifecycle(
    api: &Api,
    operator: &str,
    product: &str,
    factories: &[String],
    jobs: usize,
) -> anyhow::Result<f64> {
    let started_jobs = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for token in factories {
        let (api, token, operator, product, started_jobs, done) = (
            api.clone(),
            token.clone(),
            operator.to_string(),
            product.to_string(),
            started_jobs.clone(),
            done.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while started_jobs.fetch_add(1, Ordering::Relaxed) < jobs {
                api.submit(&operator, &product, "lifecycle").await?;
                loop {
                    if let Some((job, epoch)) = api.claim(&token, 1000).await? {
                        api.succeed(&token, &job, epoch).await?;
                        done.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

/// With every factory idle in a claim long poll, submits one job at a time and times
/// from sending the submit to a factory holding the lease; `samples` times.
pub async fn idle_enqueue_to_claim(
    api: &Api,
    operator: &str,
    product: &str,
    factories: &[String],
    samples: usize,
) -> anyhow::Result<Percentiles> {
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, Instant)>();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for token in factories {
        let (api, token, tx, stop) = (api.clone(), token.clone(), tx.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            // Long polls end by themselves (a dropped request would leave the server
            // waiting on a connection nobody reads).
            while !stop.load(Ordering::Relaxed) {
                if let Some((job, epoch)) = api.claim(&token, IDLE_POLL_MS).await? {
                    let _ = tx.send((job.clone(), Instant::now()));
                    api.succeed(&token, &job, epoch).await?;
                }
            }
            anyhow::Ok(())
        }));
    }
    // Let every factory enter its long poll.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut latencies = Vec::with_capacity(samples);
    let mut submits = Vec::with_capacity(samples);
    let result = async {
        for i in 0..samples {
            let sent = Instant::now();
            let id = api.submit(operator, product, &format!("idle {i}")).await?;
            submits.push(ms(sent.elapsed()));
            let claimed = loop {
                let (job, at) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                    .await
                    .map_err(|_| anyhow::anyhow!("job {id} was not claimed within 10 s"))?
                    .ok_or_else(|| anyhow::anyhow!("every factory stopped"))?;
                if job == id {
                    break at;
                }
            };
            latencies.push(ms(claimed - sent));
            // The factory reports and long-polls again: the fleet is idle again.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::Ok(())
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    result?;
    let submits = Percentiles::of(submits);
    // Of the whole, the submit's answer (the rest is the wake-up and the claim).
    tracing::info!(
        p50 = submits.p50,
        p99 = submits.p99,
        "idle submit latency (ms)"
    );
    Ok(Percentiles::of(latencies))
}

/// How long an idle factory's claim waits before it asks again.
const IDLE_POLL_MS: u32 = 5_000;
