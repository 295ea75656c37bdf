//! The scoring scheduler through the real claim path: weights (product, request),
//! explain, breakdowns, and a starving job that eventually wins.

use chrono::Duration;
use gigafactory_tests::spawn_app;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn weighted_sum(breakdown: &Value) -> f64 {
    breakdown["terms"]
        .as_object()
        .unwrap()
        .values()
        .map(|t| t["value"].as_f64().unwrap() * t["weight"].as_f64().unwrap())
        .sum()
}

#[tokio::test]
async fn product_and_request_weights_change_the_ranking() {
    let app = spawn_app().await;
    let op = app.operator(&["p1"]).await;
    let (factory_id, ft) = app.enroll(&op, &["p1"], &[], 5).await;
    let old = app
        .submit(&op, json!({"productId": "p1", "title": "old normal"}))
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let new = app
        .submit(
            &op,
            json!({"productId": "p1", "title": "new high", "priority": "high"}),
        )
        .await;

    let path = format!("/fleet/explain?factoryId={factory_id}");
    let first = app.get(&path, &op).await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    let cands = first.body["candidates"].as_array().unwrap();
    assert_eq!(cands.len(), 2);
    assert_eq!(cands[0]["jobId"], new["id"], "defaults: priority first");
    for c in cands {
        assert!(
            (weighted_sum(&c["breakdown"]) - c["breakdown"]["total"].as_f64().unwrap()).abs()
                < 1e-9
        );
    }

    // Product override: age only.
    let put = app
        .call(
            reqwest::Method::PUT,
            "/fleet/weights/p1",
            Some(&op),
            Some(&json!({"weights": {"priority": 0, "age": 1}})),
        )
        .await;
    assert_eq!(put.status, StatusCode::OK, "{:?}", put.body);
    assert_eq!(put.body["source"], "product");
    let got = app.get("/fleet/weights/p1", &op).await;
    assert_eq!(got.body["weights"]["priority"], 0.0);
    assert_eq!(got.body["weights"]["fairness"], 0.5);
    assert_eq!(
        app.get(&path, &op).await.body["candidates"][0]["jobId"],
        old["id"],
        "product weights: oldest first"
    );

    // Request override beats the product's.
    let claim = app
        .post("/fleet/claim", &ft, json!({"weights": {"priority": 5}}))
        .await;
    assert_eq!(claim.status, StatusCode::OK);
    assert_eq!(
        claim.body["job"]["id"], new["id"],
        "request weights: priority again"
    );
    assert_eq!(claim.body["breakdown"]["terms"]["priority"]["weight"], 5.0);
    assert_eq!(claim.body["breakdown"]["terms"]["age"]["weight"], 1.0);
    assert!(
        (weighted_sum(&claim.body["breakdown"])
            - claim.body["breakdown"]["total"].as_f64().unwrap())
        .abs()
            < 1e-9
    );

    // Back to the defaults.
    let reset = app
        .call(
            reqwest::Method::PUT,
            "/fleet/weights/p1",
            Some(&op),
            Some(&json!({"weights": {}})),
        )
        .await;
    assert_eq!(reset.body["source"], "default");
}

#[tokio::test]
async fn weights_and_explain_check_input_and_access() {
    let app = spawn_app().await;
    let op = app.operator(&["p1"]).await;
    let auditor = app.token("auditor", &["p1"]).await;
    let other = app.operator(&["p2"]).await;
    let (factory_id, ft) = app.enroll(&op, &["p1"], &[], 1).await;
    let before = app.event_count().await;
    for (weights, field) in [
        (json!({"speed": 1}), "weights.speed"),
        (json!({"age": -0.5}), "weights.age"),
        (json!({"age": "lots"}), "weights.age"),
    ] {
        let r = app
            .call(
                reqwest::Method::PUT,
                "/fleet/weights/p1",
                Some(&op),
                Some(&json!({"weights": weights})),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(r.body["error"]["field"], field);
        let r = app
            .post("/fleet/claim", &ft, json!({"weights": weights}))
            .await;
        assert_eq!(r.body["error"]["field"], field);
    }
    let r = app
        .call(
            reqwest::Method::PUT,
            "/fleet/weights/p1",
            Some(&auditor),
            Some(&json!({"weights": {}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(
        app.get("/fleet/weights/p1", &other).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(app.event_count().await, before);

    assert_eq!(
        app.get(&format!("/fleet/explain?factoryId={factory_id}"), &auditor)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        app.get(&format!("/fleet/explain?factoryId={factory_id}"), &other)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get(&format!("/fleet/explain?factoryId={factory_id}"), &ft)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.get("/fleet/explain", &op).await.body["error"]["field"],
        "factoryId"
    );
}

#[tokio::test]
async fn a_starving_low_priority_job_eventually_wins_through_the_claim_path() {
    let app = spawn_app().await;
    let op = app.operator(&["p1"]).await;
    let (_, ft) = app.enroll(&op, &["p1"], &[], 1).await;
    let low = app
        .submit(
            &op,
            json!({"productId": "p1", "title": "low", "priority": "low"}),
        )
        .await;
    let mut won_at = None;
    for round in 0..40 {
        // A steady stream of higher-priority work, on a simulated clock.
        app.submit(
            &op,
            json!({"productId": "p1", "title": format!("high {round}"), "priority": "high"}),
        )
        .await;
        app.state.clock.advance(Duration::minutes(2));
        let c = app.claim(&ft).await.expect("work is queued");
        let id = c["job"]["id"].as_str().unwrap().to_string();
        if id == low["id"].as_str().unwrap() {
            won_at = Some(round);
            break;
        }
        let epoch = c["lease"]["epoch"].clone();
        let r = app
            .post(
                &format!("/fleet/jobs/{id}/report"),
                &ft,
                json!({"epoch": epoch, "status": "succeeded"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let round = won_at.expect("the low-priority job was never picked");
    assert!(
        round > 3,
        "it waited behind the higher ones first (won at round {round})"
    );
}

/// The plan of the claim's candidate read on `conn` (a generic plan, as the server's
/// connections keep), as EXPLAIN's text.
async fn candidate_plan(conn: &mut sqlx::PgConnection) -> String {
    sqlx::raw_sql(&format!(
        "PREPARE gf_candidates(text[], text[], timestamptz, bigint, uuid[]) AS {}",
        gigafactory_projections::jobs::candidates_sql()
    ))
    .execute(&mut *conn)
    .await
    .unwrap();
    let lines: Vec<String> =
        sqlx::query_scalar("EXPLAIN EXECUTE gf_candidates('{p}', '{}', now(), 48, '{}')")
            .fetch_all(&mut *conn)
            .await
            .unwrap();
    sqlx::raw_sql("DEALLOCATE gf_candidates")
        .execute(&mut *conn)
        .await
        .unwrap();
    lines.join("\n")
}

/// After a large submit the statistics say nearly every job is queued, and a plan
/// made then is kept (generic plans) while the queue drains. The oldest-first
/// candidate set must still come from the queue index: `job_view_product` (all of a
/// product's jobs) walked from the oldest would step over every finished job on
/// each claim. No other index delivers the set's order, so without the queue index
/// the plan has to sort — the planner cannot tie the two on cost.
#[tokio::test]
async fn the_oldest_first_candidate_set_comes_from_the_queue_index_only() {
    let db = gigafactory_tests::TestDb::create().await;
    let pool = db.pool(1).await;
    let mut conn = pool.acquire().await.unwrap();
    // A large submit, analysed; then the drain: the oldest nine in ten are done (the
    // statistics still say queued).
    sqlx::raw_sql(
        "INSERT INTO job_view (job_id, product_id, title, stage, priority, priority_rank,
             required_capabilities, attempts, max_attempts, created_at, updated_at, version, state)
         SELECT gen_random_uuid(), 'p', 'job ' || i, 'queued', 'normal', 2, '{}', 0, 3,
                now() - interval '1 hour' + i * interval '1 ms', now(), 1, '{}'
         FROM generate_series(1, 5000) i;
         ANALYZE job_view;
         UPDATE job_view SET stage = 'succeeded'
         WHERE job_id IN (SELECT job_id FROM job_view ORDER BY created_at LIMIT 4500)",
    )
    .execute(&mut *conn)
    .await
    .unwrap();

    let plan = candidate_plan(&mut conn).await;
    assert!(
        plan.contains("job_view_queued_product_age"),
        "the oldest-first set reads the queue index:\n{plan}"
    );
    assert!(!plan.contains("job_view_product "), "{plan}");

    // Without the queue index, the product index serves only with a sort on top.
    sqlx::raw_sql("BEGIN; DROP INDEX job_view_queued_product_age")
        .execute(&mut *conn)
        .await
        .unwrap();
    let fallback = candidate_plan(&mut conn).await;
    sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await.unwrap();
    let product_scan = fallback
        .lines()
        .position(|l| l.contains("job_view_product "))
        .unwrap_or_else(|| panic!("the product index is the other way to the order:\n{fallback}"));
    let above: Vec<&str> = fallback.lines().take(product_scan).collect();
    assert!(
        above.iter().rev().take(3).any(|l| l.contains("Sort")),
        "the product index does not deliver the set's order by itself:\n{fallback}"
    );
}
