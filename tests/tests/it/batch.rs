//! Batch claim and batch report: several leases or reports per call, each its own
//! event, one transaction; bad batches refused whole, bad items refused alone.

use futures::future::join_all;
use gigafactory_tests::{spawn_app, spawn_app_on, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::Row;

async fn batch_claim(app: &TestApp, factory: &str, max: usize) -> Vec<Value> {
    let r = app
        .post("/fleet/batch/claim", factory, json!({"max": max}))
        .await;
    match r.status {
        StatusCode::OK => r.body["claims"].as_array().unwrap().clone(),
        StatusCode::NO_CONTENT => vec![],
        s => panic!("batch claim answered {s}: {:?}", r.body),
    }
}

fn job_and_epoch(claim: &Value) -> (String, u64) {
    (
        claim["job"]["id"].as_str().unwrap().to_string(),
        claim["lease"]["epoch"].as_u64().unwrap(),
    )
}

#[tokio::test]
async fn batch_claim_takes_the_best_jobs_up_to_max_and_free_capacity() {
    let app = spawn_app().await;
    let op = app.operator(&["p1"]).await;
    let mut ids = IdsByPriority::default();
    for (i, priority) in ["low", "normal", "critical", "high", "low", "normal"]
        .iter()
        .enumerate()
    {
        let job = app
            .submit(
                &op,
                json!({"productId": "p1", "title": format!("job {i}"), "priority": priority}),
            )
            .await;
        ids.push(priority, job["id"].as_str().unwrap());
    }
    let (_, ft) = app.enroll(&op, &["p1"], &[], 4).await;
    let before = app.event_count().await;

    let r = app.post("/fleet/batch/claim", &ft, json!({"max": 0})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["error"]["field"], "max");
    let r = app
        .post("/fleet/batch/claim", &ft, json!({"max": 101}))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = app
        .post(
            "/fleet/batch/claim",
            &ft,
            json!({"max": 2, "leaseTtlSecs": 1}),
        )
        .await;
    assert_eq!(r.body["error"]["field"], "leaseTtlSecs");
    assert_eq!(
        app.event_count().await,
        before,
        "refused batches append nothing"
    );

    // Asks for 10, the factory has room for 4: the best 4, best first.
    let claims = batch_claim(&app, &ft, 10).await;
    let got: Vec<String> = claims.iter().map(|c| job_and_epoch(c).0).collect();
    assert_eq!(got.len(), 4);
    assert_eq!(got[0], ids.of("critical")[0]);
    assert_eq!(got[1], ids.of("high")[0]);
    let normals: Vec<String> = ids.of("normal");
    assert!(normals.contains(&got[2]) && normals.contains(&got[3]));
    let runs: std::collections::HashSet<&str> = claims
        .iter()
        .map(|c| c["runId"].as_str().unwrap())
        .collect();
    assert_eq!(runs.len(), 4, "a run per lease");
    for c in &claims {
        assert_eq!(c["job"]["stage"], "leased");
        assert!(c["breakdown"]["total"].is_number());
    }
    // At capacity: nothing more.
    assert!(batch_claim(&app, &ft, 10).await.is_empty());
    // Room for 5, asks for 1: one (of the two low ones left).
    let (_, roomy) = app.enroll(&op, &["p1"], &[], 5).await;
    let one = batch_claim(&app, &roomy, 1).await;
    assert_eq!(one.len(), 1);
    assert!(ids.of("low").contains(&job_and_epoch(&one[0]).0));

    // The log holds one LeaseGranted per job, all from one transaction.
    let rows = sqlx::query(
        "SELECT count(*) AS grants, count(DISTINCT txid) AS transactions,
                count(DISTINCT aggregate_id) AS jobs
         FROM events WHERE event_type = 'LeaseGranted'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(rows.get::<i64, _>("grants"), 5);
    assert_eq!(rows.get::<i64, _>("jobs"), 5);
    assert_eq!(rows.get::<i64, _>("transactions"), 2, "one per batch claim");
}

#[tokio::test]
async fn batch_report_settles_each_report_on_its_own() {
    let app = spawn_app().await;
    let op = app.operator(&["p1", "p2"]).await;
    for i in 0..3 {
        app.submit(
            &op,
            json!({"productId": "p1", "title": format!("job {i}"), "maxAttempts": 1}),
        )
        .await;
    }
    let other = app
        .submit(
            &op,
            json!({"productId": "p2", "title": "not this factory's"}),
        )
        .await;
    let (_, ft) = app.enroll(&op, &["p1"], &[], 3).await;
    let claims = batch_claim(&app, &ft, 3).await;
    assert_eq!(claims.len(), 3);
    let (a, ea) = job_and_epoch(&claims[0]);
    let (b, eb) = job_and_epoch(&claims[1]);
    let (c, ec) = job_and_epoch(&claims[2]);
    let unknown = uuid::Uuid::now_v7().to_string();
    let other = other["id"].as_str().unwrap();

    // Refused whole: a job twice, a field out of range, none, too many.
    let before = app.event_count().await;
    for (body, field) in [
        (
            json!({"reports": [
                {"jobId": a, "epoch": ea, "status": "succeeded"},
                {"jobId": a, "epoch": ea, "status": "succeeded"}]}),
            "reports[1].jobId",
        ),
        (
            json!({"reports": [
                {"jobId": a, "epoch": ea, "status": "succeeded"},
                {"jobId": b, "epoch": eb, "status": "failed", "error": "x".repeat(10_001)}]}),
            "reports[1].error",
        ),
        (json!({"reports": []}), "reports"),
        (
            json!({"reports": (0..101).map(|_| json!({"jobId": a, "epoch": ea, "status": "running"})).collect::<Vec<_>>()}),
            "reports",
        ),
    ] {
        let r = app.post("/fleet/batch/report", &ft, body).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", r.body);
        assert_eq!(r.body["error"]["field"], field);
    }
    let r = app
        .post(
            "/fleet/batch/report",
            &ft,
            json!({"reports": [{"jobId": a}]}),
        )
        .await;
    assert!(r.status.is_client_error(), "{:?}", r.body);
    let r = app
        .post(
            "/fleet/batch/report",
            &ft,
            json!({"reports": [{"jobId": a, "epoch": "seven", "status": "succeeded"}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", r.body);
    assert_eq!(r.body["error"]["field"], "reports[0].epoch");
    let r = app
        .post(
            "/fleet/batch/claim",
            &ft,
            json!({"max": 1, "waitMs": "soon"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{:?}", r.body);
    assert_eq!(r.body["error"]["field"], "waitMs");
    assert_eq!(
        app.event_count().await,
        before,
        "refused batches append nothing"
    );

    // Item by item: succeeded, stale epoch, failed, unknown, not an id, not covered.
    let r = app
        .post(
            "/fleet/batch/report",
            &ft,
            json!({"reports": [
                {"jobId": a, "epoch": ea, "status": "succeeded", "costUsd": 0.25},
                {"jobId": b, "epoch": eb + 1, "status": "succeeded"},
                {"jobId": c, "epoch": ec, "status": "failed", "error": "boom"},
                {"jobId": unknown, "epoch": 1, "status": "succeeded"},
                {"jobId": "not-a-uuid", "epoch": 1, "status": "succeeded"},
                {"jobId": other, "epoch": 1, "status": "succeeded"},
            ]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let results = r.body["results"].as_array().unwrap();
    assert_eq!(results.len(), 6);
    let statuses: Vec<u64> = results
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [200, 409, 200, 404, 404, 404]);
    assert_eq!(results[0]["jobId"], a.as_str());
    assert_eq!(
        results[0]["job"]["stage"], "review",
        "succeeded: awaiting review"
    );
    assert_eq!(results[1]["error"]["code"], "fenced");
    assert_eq!(results[1]["error"]["current"]["epoch"], eb);
    assert_eq!(results[2]["job"]["stage"], "failed");
    assert_eq!(results[3]["error"]["code"], "not_found");
    assert_eq!(results[4]["jobId"], "not-a-uuid");

    // Only the accepted reports appended, in one transaction; the fenced job still
    // runs under its lease and its holder can finish it.
    let rows = sqlx::query(
        "SELECT aggregate_id, event_type, txid::text AS txid FROM events WHERE id > (
             SELECT max(id) FROM events WHERE event_type = 'LeaseGranted')",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let touched: std::collections::HashSet<String> = rows
        .iter()
        .map(|r| r.get::<String, _>("aggregate_id"))
        .collect();
    assert!(
        touched.iter().all(|s| s.ends_with(&a) || s.ends_with(&c)),
        "{touched:?}"
    );
    assert_eq!(touched.len(), 2);
    let txids: std::collections::HashSet<String> =
        rows.iter().map(|r| r.get::<String, _>("txid")).collect();
    assert_eq!(txids.len(), 1, "one commit for the batch");
    assert_eq!(
        app.get(&format!("/fleet/jobs/{b}"), &op).await.body["stage"],
        "leased"
    );

    // A value the job refuses is that report's outcome, named as the batch names it.
    let before = app.event_count().await;
    let r = app
        .post(
            "/fleet/batch/report",
            &ft,
            json!({"reports": [
                {"jobId": a, "epoch": ea, "status": "succeeded", "costUsd": 0.25},
                {"jobId": b, "epoch": eb, "status": "running", "progress": 2.0},
            ]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["results"][0]["status"], 200);
    assert_eq!(r.body["results"][1]["status"], 422);
    assert_eq!(
        r.body["results"][1]["error"]["field"],
        "reports[1].progress"
    );
    assert_eq!(app.event_count().await, before, "nothing new to append");

    // Re-sending the final reports answers 200 and appends nothing.
    let before = app.event_count().await;
    let r = app
        .post(
            "/fleet/batch/report",
            &ft,
            json!({"reports": [
                {"jobId": a, "epoch": ea, "status": "succeeded", "costUsd": 0.25},
                {"jobId": b, "epoch": eb, "status": "succeeded"},
            ]}),
        )
        .await;
    let statuses: Vec<u64> = r.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [200, 200]);
    assert_eq!(
        app.event_count().await,
        before + 1,
        "only b's report appended"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_batch_claims_of_one_factory_never_exceed_its_capacity() {
    let app = spawn_app().await;
    let op = app.operator(&["p1"]).await;
    for i in 0..20 {
        app.submit(&op, json!({"productId": "p1", "title": format!("job {i}")}))
            .await;
    }
    let (_, ft) = app.enroll(&op, &["p1"], &[], 6).await;
    let claims = join_all((0..4).map(|_| batch_claim(&app, &ft, 4))).await;
    let granted: usize = claims.iter().map(Vec::len).sum();
    assert_eq!(granted, 6, "exactly the capacity: {claims:?}");
    let leased: i64 =
        sqlx::query_scalar("SELECT count(*) FROM job_view WHERE lease_factory_id IS NOT NULL")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(leased, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batch_claimers_on_two_servers_lease_and_finish_every_job_once() {
    let a = spawn_app().await;
    let b = spawn_app_on(a.db.clone()).await;
    let op = a.operator(&["p1"]).await;
    const JOBS: usize = 300;
    const FACTORIES: usize = 8;
    let mut submits = Vec::new();
    for i in 0..JOBS {
        submits.push(a.submit(&op, json!({"productId": "p1", "title": format!("job {i}")})));
        if submits.len() == 50 {
            join_all(submits.drain(..)).await;
        }
    }
    join_all(submits).await;
    let mut factories = Vec::new();
    for _ in 0..FACTORIES {
        factories.push(a.enroll(&op, &["p1"], &[], 10).await.1);
    }
    let workers = factories.iter().enumerate().map(|(i, ft)| {
        let app = if i % 2 == 0 { &a } else { &b };
        async move {
            let mut done = 0;
            loop {
                let claims = batch_claim(app, ft, 10).await;
                if claims.is_empty() {
                    return done;
                }
                let reports: Vec<Value> = claims
                    .iter()
                    .map(|c| {
                        let (id, epoch) = job_and_epoch(c);
                        json!({"jobId": id, "epoch": epoch, "status": "succeeded"})
                    })
                    .collect();
                let r = app
                    .post("/fleet/batch/report", ft, json!({"reports": reports}))
                    .await;
                assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
                for result in r.body["results"].as_array().unwrap() {
                    assert_eq!(result["status"], 200, "{result:?}");
                }
                done += claims.len();
            }
        }
    });
    let done: usize = join_all(workers).await.into_iter().sum();
    assert_eq!(done, JOBS);
    let rows = sqlx::query(
        "SELECT count(*) FILTER (WHERE event_type = 'LeaseGranted') AS grants,
                count(*) FILTER (WHERE event_type = 'RunSucceeded') AS successes
         FROM events WHERE aggregate_type = 'job' GROUP BY aggregate_id",
    )
    .fetch_all(&a.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), JOBS);
    for r in rows {
        assert_eq!(r.get::<i64, _>("grants"), 1);
        assert_eq!(r.get::<i64, _>("successes"), 1);
    }
    let in_review: i64 = sqlx::query_scalar("SELECT count(*) FROM job_view WHERE stage = 'review'")
        .fetch_one(&a.pool)
        .await
        .unwrap();
    assert_eq!(in_review as usize, JOBS, "the read model agrees");
}

/// Job ids by priority, in submission order.
#[derive(Default)]
struct IdsByPriority(Vec<(String, String)>);

impl IdsByPriority {
    fn push(&mut self, priority: &str, id: &str) {
        self.0.push((priority.to_string(), id.to_string()));
    }
    fn of(&self, priority: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(p, _)| p == priority)
            .map(|(_, id)| id.clone())
            .collect()
    }
}
