//! The HTTP calls the scenarios make, as an outside client would (API.md).

use anyhow::{bail, Context};
use futures::stream::{self, StreamExt, TryStreamExt};
use serde_json::{json, Value};

/// One keep-alive client for one server.
#[derive(Clone)]
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
}

impl Api {
    pub fn new(base: &str, connections: usize) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(connections + 4)
                .tcp_nodelay(true)
                .build()?,
            base: base.trim_end_matches('/').to_string(),
        })
    }

    /// POSTs JSON; returns the status and the JSON answer (`null` when empty).
    pub async fn post(
        &self,
        path: &str,
        token: &str,
        body: &Value,
    ) -> anyhow::Result<(u16, Value)> {
        gigafactory_api::simulate::post(&self.http, &format!("{}{path}", self.base), token, body)
            .await
    }

    /// How many requests of `kind` (`claims`, `reports`, `tokens`) the server served
    /// per shared batch so far, on average (from `GET /metrics`), if it served any.
    pub async fn mean_batch(&self, kind: &str) -> anyhow::Result<Option<f64>> {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        let value = |suffix: &str| {
            let name = format!("gigafactory_coalesced_batch_size_{suffix}{{kind=\"{kind}\"}}");
            text.lines()
                .find_map(|l| l.strip_prefix(&name))
                .and_then(|v| v.trim().parse::<f64>().ok())
        };
        Ok(match (value("sum"), value("count")) {
            (Some(sum), Some(count)) if count > 0.0 => Some(sum / count),
            _ => None,
        })
    }

    /// POSTs and insists on `expect`.
    pub async fn post_ok(
        &self,
        path: &str,
        token: &str,
        body: &Value,
        expect: u16,
    ) -> anyhow::Result<Value> {
        let (status, answer) = self.post(path, token, body).await?;
        if status != expect {
            bail!("POST {path} answered {status} (expected {expect}): {answer}");
        }
        Ok(answer)
    }

    /// Issues an operator token for `products` with the admin token.
    pub async fn operator_token(&self, admin: &str, products: &[&str]) -> anyhow::Result<String> {
        let answer = self
            .post_ok(
                "/fleet/tokens",
                admin,
                &json!({"role": "operator", "products": products, "name": "bench"}),
                201,
            )
            .await?;
        Ok(answer["token"].as_str().context("token")?.to_string())
    }

    /// Enrolls `n` factories of `capacity` for `product`; returns their tokens.
    pub async fn enroll(
        &self,
        operator: &str,
        product: &str,
        n: usize,
        capacity: usize,
    ) -> anyhow::Result<Vec<String>> {
        let mut tokens = Vec::with_capacity(n);
        for i in 0..n {
            let answer = self
                .post_ok(
                    "/fleet/factories/enroll",
                    operator,
                    &json!({"name": format!("bench-{i}"), "productIds": [product], "capabilities": [], "capacity": capacity}),
                    201,
                )
                .await?;
            tokens.push(
                answer["token"]
                    .as_str()
                    .context("factory token")?
                    .to_string(),
            );
        }
        Ok(tokens)
    }

    /// Submits one no-op job; returns its id.
    pub async fn submit(
        &self,
        operator: &str,
        product: &str,
        title: &str,
    ) -> anyhow::Result<String> {
        let answer = self
            .post_ok(
                "/fleet/jobs",
                operator,
                &json!({"productId": product, "title": title}),
                201,
            )
            .await?;
        Ok(answer["id"].as_str().context("job id")?.to_string())
    }

    /// Submits `n` jobs with `parallel` requests in flight (set-up, not timed).
    pub async fn submit_many(
        &self,
        operator: &str,
        product: &str,
        n: usize,
        parallel: usize,
    ) -> anyhow::Result<()> {
        stream::iter(0..n)
            .map(|i| async move { self.submit(operator, product, &format!("job {i}")).await })
            .buffer_unordered(parallel.max(1))
            .try_for_each(|_| async { Ok(()) })
            .await
    }

    /// One claim; `Some((job id, epoch))` or `None` on 204.
    pub async fn claim(
        &self,
        factory: &str,
        wait_ms: u32,
    ) -> anyhow::Result<Option<(String, u64)>> {
        let (status, answer) = self
            .post("/fleet/claim", factory, &json!({"waitMs": wait_ms}))
            .await?;
        match status {
            200 => Ok(Some((
                answer["job"]["id"].as_str().context("job id")?.to_string(),
                answer["lease"]["epoch"].as_u64().context("epoch")?,
            ))),
            204 => Ok(None),
            s => bail!("claim answered {s}: {answer}"),
        }
    }

    /// Reports the run succeeded.
    pub async fn succeed(&self, factory: &str, job: &str, epoch: u64) -> anyhow::Result<()> {
        self.post_ok(
            &format!("/fleet/jobs/{job}/report"),
            factory,
            &json!({"epoch": epoch, "status": "succeeded", "costUsd": 0.0}),
            200,
        )
        .await
        .map(|_| ())
    }

    /// Reports the run succeeded and claims the next job in the same call
    /// (`POST /fleet/jobs/:id/report-and-claim`): the next lease, if any.
    pub async fn succeed_and_claim(
        &self,
        factory: &str,
        job: &str,
        epoch: u64,
        wait_ms: u32,
    ) -> anyhow::Result<Option<(String, u64)>> {
        let answer = self
            .post_ok(
                &format!("/fleet/jobs/{job}/report-and-claim"),
                factory,
                &json!({"report": {"epoch": epoch, "status": "succeeded", "costUsd": 0.0}, "claim": {"waitMs": wait_ms}}),
                200,
            )
            .await?;
        let next = &answer["next"];
        if next.is_null() {
            return Ok(None);
        }
        Ok(Some((
            next["job"]["id"].as_str().context("job id")?.to_string(),
            next["lease"]["epoch"].as_u64().context("epoch")?,
        )))
    }

    /// One batch claim of up to `max` jobs: (job id, epoch) of each lease.
    pub async fn claim_batch(
        &self,
        factory: &str,
        max: usize,
        wait_ms: u32,
    ) -> anyhow::Result<Vec<(String, u64)>> {
        let (status, answer) = self
            .post(
                "/fleet/batch/claim",
                factory,
                &json!({"max": max, "waitMs": wait_ms}),
            )
            .await?;
        match status {
            200 => answer["claims"]
                .as_array()
                .context("claims")?
                .iter()
                .map(|c| {
                    Ok((
                        c["job"]["id"].as_str().context("job id")?.to_string(),
                        c["lease"]["epoch"].as_u64().context("epoch")?,
                    ))
                })
                .collect(),
            204 => Ok(vec![]),
            s => bail!("batch claim answered {s}: {answer}"),
        }
    }

    /// Reports every run of `leases` succeeded in one batch; each must be accepted.
    pub async fn succeed_batch(
        &self,
        factory: &str,
        leases: &[(String, u64)],
    ) -> anyhow::Result<()> {
        let reports: Vec<Value> = leases
            .iter()
            .map(|(job, epoch)| json!({"jobId": job, "epoch": epoch, "status": "succeeded", "costUsd": 0.0}))
            .collect();
        let answer = self
            .post_ok(
                "/fleet/batch/report",
                factory,
                &json!({"reports": reports}),
                200,
            )
            .await?;
        for result in answer["results"].as_array().context("results")? {
            if result["status"] != 200 {
                bail!("a batched report was refused: {result}");
            }
        }
        Ok(())
    }
}
