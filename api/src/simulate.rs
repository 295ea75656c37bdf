//! `gigafactory simulate`: N simulated factories against a running server — the demo
//! of a living fleet and a load generator. Each factory is a task with its own
//! keep-alive HTTP connection: enroll, then claim → (work) → report, heartbeating.

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimulateOptions {
    pub url: String,
    /// An operator token for the products, or the admin token (an operator token is
    /// then issued for the run).
    pub token: String,
    pub factories: usize,
    pub capacity: u32,
    pub jobs: usize,
    pub products: Vec<String>,
    pub capabilities: Vec<String>,
    /// Share of jobs submitted as critical / high / normal / low.
    pub priorities: [f64; 4],
    /// Chance that a run reports failure.
    pub failure_rate: f64,
    /// Simulated work per job.
    pub work: Duration,
    /// Upload a small artifact with each successful run.
    pub artifacts: bool,
    /// Jobs per claim call: above 1, factories use the batch endpoints
    /// (`/fleet/batch/claim`, `/fleet/batch/report`), up to their capacity.
    pub batch: usize,
    /// One job per call: each report asks for the next job in the same call
    /// (`/fleet/jobs/:id/report-and-claim`, docs/report-and-claim.md).
    pub chain: bool,
    pub progress: bool,
}

/// What happened.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub factories: usize,
    pub jobs: usize,
    pub runs_succeeded: u64,
    pub runs_failed: u64,
    pub seconds: f64,
    pub jobs_per_second: f64,
    pub claim_latency_ms: Percentiles,
    pub errors: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

fn percentiles(mut samples: Vec<f64>) -> Percentiles {
    if samples.is_empty() {
        return Percentiles {
            p50: 0.0,
            p95: 0.0,
            p99: 0.0,
        };
    }
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    Percentiles {
        p50: at(0.50),
        p95: at(0.95),
        p99: at(0.99),
    }
}

struct Shared {
    succeeded: AtomicU64,
    failed: AtomicU64,
    latencies: Mutex<Vec<f64>>,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Shared {
    fn error(&self, kind: String) {
        *self.errors.lock().unwrap().entry(kind).or_default() += 1;
    }

    /// A call that leased a job, begun at `t`.
    fn claimed(&self, t: Instant) {
        self.latencies
            .lock()
            .unwrap()
            .push(t.elapsed().as_secs_f64() * 1000.0);
    }
}

/// What a claim call came to.
enum ClaimOutcome {
    Leased(Value),
    Empty,
    Failed,
}

/// POSTs JSON with a bearer token; the status and the JSON answer (`null` when
/// empty or not JSON).
pub async fn post(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    body: &Value,
) -> anyhow::Result<(u16, Value)> {
    let r = http.post(url).bearer_auth(token).json(body).send().await?;
    let status = r.status().as_u16();
    let text = r.text().await?;
    Ok((
        status,
        if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::Null)
        },
    ))
}

fn error_kind(status: u16, body: &Value) -> String {
    format!("{status} {}", body["error"]["code"].as_str().unwrap_or(""))
}

/// Runs the simulation to the end (every job's runs reported) and summarises it.
pub async fn simulate(o: SimulateOptions) -> anyhow::Result<Summary> {
    if o.products.is_empty() || o.factories == 0 {
        bail!("simulate needs at least one product and one factory");
    }
    if !(1..=100).contains(&o.batch) {
        bail!("--batch must be between 1 and 100");
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(o.factories + 4)
        .build()?;
    let base = o.url.trim_end_matches('/').to_string();

    // An operator token: the given one, or one issued with the admin token.
    let (status, issued) = post(
        &http,
        &format!("{base}/fleet/tokens"),
        &o.token,
        &json!({"role": "operator", "products": o.products, "name": "simulate"}),
    )
    .await?;
    let operator = match status {
        201 => issued["token"]
            .as_str()
            .context("token in answer")?
            .to_string(),
        403 => o.token.clone(),
        s => bail!("the server refused the token ({s}): {issued}"),
    };

    let shared = Arc::new(Shared {
        succeeded: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        latencies: Mutex::new(Vec::new()),
        errors: Mutex::new(BTreeMap::new()),
    });
    let bar = (o.progress && std::io::stderr().is_terminal()).then(|| {
        let b = ProgressBar::new(o.jobs as u64);
        b.set_style(
            ProgressStyle::with_template("{spinner} {pos}/{len} jobs run [{bar:40}] {per_sec}")
                .expect("valid template"),
        );
        b
    });

    // Submit the jobs first.
    let mut rng = rand::thread_rng();
    for i in 0..o.jobs {
        let roll: f64 = rng.gen();
        let mut acc = 0.0;
        let mut priority = "low";
        for (p, share) in ["critical", "high", "normal", "low"]
            .iter()
            .zip(o.priorities)
        {
            acc += share;
            if roll < acc {
                priority = p;
                break;
            }
        }
        let caps: Vec<&String> = o
            .capabilities
            .iter()
            .filter(|_| rng.gen_bool(0.3))
            .collect();
        let body = json!({
            "productId": o.products[i % o.products.len()],
            "title": format!("simulated job {i}"),
            "priority": priority,
            "requiredCapabilities": caps,
            "budget": {"usd": 0.05},
            "maxAttempts": 3,
        });
        let (status, answer) = post(&http, &format!("{base}/fleet/jobs"), &operator, &body).await?;
        if status != 201 {
            bail!("submitting a job failed ({status}): {answer}");
        }
    }

    // Enroll the fleet.
    let mut tokens = Vec::new();
    for i in 0..o.factories {
        let body = json!({"name": format!("sim-{i}"), "productIds": o.products, "capabilities": o.capabilities, "capacity": o.capacity});
        let (status, answer) = post(
            &http,
            &format!("{base}/fleet/factories/enroll"),
            &operator,
            &body,
        )
        .await?;
        if status != 201 {
            bail!("enrolling a factory failed ({status}): {answer}");
        }
        tokens.push(
            answer["token"]
                .as_str()
                .context("factory token")?
                .to_string(),
        );
    }

    let started = Instant::now();
    let mut tasks = Vec::new();
    for token in tokens {
        let (http, base, shared, o, bar) = (
            http.clone(),
            base.clone(),
            shared.clone(),
            o.clone(),
            bar.clone(),
        );
        tasks.push(tokio::spawn(async move {
            factory(http, base, token, shared, o, bar).await
        }));
    }
    for t in tasks {
        t.await??;
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let seconds = started.elapsed().as_secs_f64();
    let succeeded = shared.succeeded.load(Ordering::Relaxed);
    let failed = shared.failed.load(Ordering::Relaxed);
    let latencies = std::mem::take(&mut *shared.latencies.lock().unwrap());
    let errors = shared.errors.lock().unwrap().clone();
    Ok(Summary {
        factories: o.factories,
        jobs: o.jobs,
        runs_succeeded: succeeded,
        runs_failed: failed,
        seconds,
        jobs_per_second: succeeded as f64 / seconds.max(1e-9),
        claim_latency_ms: percentiles(latencies),
        errors,
    })
}

/// One simulated factory: runs jobs until the queue stays empty.
async fn factory(
    http: reqwest::Client,
    base: String,
    token: String,
    shared: Arc<Shared>,
    o: SimulateOptions,
    bar: Option<ProgressBar>,
) -> anyhow::Result<()> {
    let mut empty = 0;
    // The next lease a report-and-claim answered, if any.
    let mut held: Option<Value> = None;
    let mut last_heartbeat = Instant::now() - Duration::from_secs(60);
    while empty < 3 {
        if last_heartbeat.elapsed() >= Duration::from_secs(10) {
            let (status, body) = post(
                &http,
                &format!("{base}/fleet/factories/heartbeat"),
                &token,
                &json!({"runningJobIds": []}),
            )
            .await?;
            if status != 200 {
                shared.error(error_kind(status, &body));
            }
            last_heartbeat = Instant::now();
        }
        let answer = match held.take() {
            Some(next) => next,
            None => match claim(&http, &base, &token, &shared, &o).await? {
                ClaimOutcome::Leased(answer) => answer,
                ClaimOutcome::Empty => {
                    empty += 1;
                    continue;
                }
                ClaimOutcome::Failed => continue,
            },
        };
        empty = 0;
        let claims = if o.batch > 1 {
            answer["claims"].as_array().context("claims")?.clone()
        } else {
            vec![answer]
        };
        // The leases' work runs side by side: one wait for the batch.
        if !o.work.is_zero() {
            tokio::time::sleep(o.work).await;
        }
        let mut reports = Vec::with_capacity(claims.len());
        for claim in &claims {
            reports.push(run(&http, &base, &token, &shared, &o, claim).await?);
        }
        // (status, answer, failed?) per report.
        let mut outcomes: Vec<(u16, Value, bool)> = Vec::with_capacity(reports.len());
        if o.batch > 1 {
            let (status, body) = post(
                &http,
                &format!("{base}/fleet/batch/report"),
                &token,
                &json!({"reports": reports}),
            )
            .await?;
            match body["results"].as_array() {
                Some(results) if status == 200 => {
                    for (report, result) in reports.iter().zip(results) {
                        let s = result["status"].as_u64().unwrap_or(0) as u16;
                        let error = json!({"error": result["error"].clone()});
                        outcomes.push((s, error, report["status"] == "failed"));
                    }
                }
                _ => shared.error(error_kind(status, &body)),
            }
        } else {
            for report in &reports {
                let job = report["jobId"].as_str().unwrap_or("");
                let failed = report["status"] == "failed";
                if o.chain {
                    let t = Instant::now();
                    let (status, body) = post(
                        &http,
                        &format!("{base}/fleet/jobs/{job}/report-and-claim"),
                        &token,
                        &json!({"report": report, "claim": {}}),
                    )
                    .await?;
                    if status == 200 && !body["next"].is_null() {
                        shared.claimed(t);
                        held = Some(body["next"].clone());
                    }
                    outcomes.push((status, body, failed));
                } else {
                    let (status, body) = post(
                        &http,
                        &format!("{base}/fleet/jobs/{job}/report"),
                        &token,
                        report,
                    )
                    .await?;
                    outcomes.push((status, body, failed));
                }
            }
        }
        for (status, body, failed) in outcomes {
            if status != 200 {
                shared.error(error_kind(status, &body));
            } else if failed {
                shared.failed.fetch_add(1, Ordering::Relaxed);
            } else {
                shared.succeeded.fetch_add(1, Ordering::Relaxed);
                if let Some(b) = &bar {
                    b.inc(1);
                }
            }
        }
    }
    Ok(())
}

/// One claim call (a batch claim above `--batch 1`), long polling a second; a
/// failed call is counted by its kind.
async fn claim(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    shared: &Shared,
    o: &SimulateOptions,
) -> anyhow::Result<ClaimOutcome> {
    let t = Instant::now();
    let (claim_path, claim_body) = if o.batch > 1 {
        ("batch/claim", json!({"waitMs": 1000, "max": o.batch}))
    } else {
        ("claim", json!({"waitMs": 1000}))
    };
    let (status, answer) = post(
        http,
        &format!("{base}/fleet/{claim_path}"),
        token,
        &claim_body,
    )
    .await?;
    match status {
        200 => {
            shared.claimed(t);
            Ok(ClaimOutcome::Leased(answer))
        }
        204 => Ok(ClaimOutcome::Empty),
        s => {
            shared.error(error_kind(s, &answer));
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(ClaimOutcome::Failed)
        }
    }
}

/// One leased job's run: the artifact upload (if asked) and the report to make.
async fn run(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    shared: &Shared,
    o: &SimulateOptions,
    claim: &Value,
) -> anyhow::Result<Value> {
    let id = claim["job"]["id"].as_str().context("job id")?.to_string();
    let epoch = claim["lease"]["epoch"].as_u64().context("epoch")?;
    let fail = rand::thread_rng().gen_bool(o.failure_rate.clamp(0.0, 1.0));
    if o.artifacts && !fail {
        let r = http
            .post(format!(
                "{base}/fleet/jobs/{id}/artifacts?name=result.txt&epoch={epoch}"
            ))
            .bearer_auth(&token)
            .header("content-type", "text/plain")
            .body(format!("result of {id}"))
            .send()
            .await?;
        if r.status().as_u16() != 201 {
            let s = r.status().as_u16();
            shared.error(error_kind(s, &r.json().await.unwrap_or(Value::Null)));
        }
    }
    let report = if fail {
        json!({"jobId": id, "epoch": epoch, "status": "failed", "error": "simulated failure", "costUsd": 0.01})
    } else {
        json!({"jobId": id, "epoch": epoch, "status": "succeeded", "costUsd": 0.04})
    };
    Ok(report)
}
