//! Bad input: a clear 4xx naming the field, and nothing appended.

use gigafactory_tests::spawn_app;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn bad_requests_get_clear_errors_and_append_nothing() {
    let app = spawn_app().await;
    let op = app.operator(&["p1"]).await;
    let (_, ft) = app.enroll(&op, &["p1"], &[], 1).await;
    let before = app.event_count().await;

    let raw = app
        .http
        .post(format!("{}/fleet/jobs", app.base))
        .bearer_auth(&op)
        .header("content-type", "application/json")
        .body("{\"productId\": \"p1\",")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = raw.json().await.unwrap();
    assert_eq!(body["error"]["code"], "malformed_json");

    for (body, field) in [
        (json!({"productId": "p1"}), "title"),
        (json!({"title": "x"}), "productId"),
        (
            json!({"productId": "p1", "title": "x", "priority": "urgent"}),
            "priority",
        ),
        (
            json!({"productId": "p1", "title": "x", "maxAttempts": 0}),
            "maxAttempts",
        ),
        (
            json!({"productId": "p1", "title": "x", "budget": {"usd": -1}}),
            "budget.usd",
        ),
        (json!({"productId": "p1", "title": ""}), "title"),
        (json!({"productId": "bad/id", "title": "x"}), "productId"),
        (
            json!({"productId": "p1", "title": "x", "requiredCapabilities": "rust"}),
            "requiredCapabilities",
        ),
    ] {
        let r = app.post("/fleet/jobs", &op, body.clone()).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {:?}",
            r.body
        );
        assert_eq!(r.body["error"]["field"], field, "{body}");
        assert!(!r.body["error"]["message"].as_str().unwrap().is_empty());
    }
    for (body, field) in [
        (json!({"waitMs": 40000}), "waitMs"),
        (json!({"leaseTtlSecs": 5}), "leaseTtlSecs"),
        (json!({"waitMs": "soon"}), "waitMs"),
    ] {
        let r = app.post("/fleet/claim", &ft, body).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(r.body["error"]["field"], field);
    }
    let r = app.get("/fleet/jobs?limit=0", &op).await;
    assert_eq!(r.body["error"]["field"], "limit");
    let r = app.get("/fleet/jobs?stage=sleeping", &op).await;
    assert_eq!(r.body["error"]["field"], "stage");

    let unknown = app
        .get("/fleet/jobs/01a21cba-24a8-70b3-b9f4-7c5ebf550537", &op)
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let nonsense = app.get("/fleet/jobs/not-an-id", &op).await;
    assert_eq!(nonsense.status, StatusCode::NOT_FOUND);
    let r = app
        .post(
            "/fleet/jobs/01a21cba-24a8-70b3-b9f4-7c5ebf550537/report",
            &ft,
            json!({"epoch": 1, "status": "running"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    let big = "x".repeat(2 * 1024 * 1024);
    let r = app
        .post(
            "/fleet/jobs",
            &op,
            json!({"productId": "p1", "title": "x", "payload": {"blob": big}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.code(), "too_large");

    // Negative or non-integer epochs name the field.
    let job = app
        .submit(&op, json!({"productId": "p1", "title": "ok"}))
        .await;
    let before_ok = before + 1;
    let id = job["id"].as_str().unwrap();
    let r = app
        .post(
            &format!("/fleet/jobs/{id}/lease/renew"),
            &ft,
            json!({"epoch": -1}),
        )
        .await;
    assert_eq!(r.body["error"]["field"], "epoch");
    let r = app
        .post(
            &format!("/fleet/jobs/{id}/report"),
            &ft,
            json!({"epoch": 2, "status": "done"}),
        )
        .await;
    assert_eq!(r.body["error"]["field"], "status");
    assert_eq!(
        app.event_count().await,
        before_ok,
        "only the valid submit appended"
    );
}

#[tokio::test]
async fn with_the_database_gone_requests_fail_fast_with_503() {
    let app = spawn_app().await;
    let op = app.operator(&["p1"]).await;
    assert_eq!(app.get("/fleet/jobs", &op).await.status, StatusCode::OK);
    let admin = sqlx::PgPool::connect(&gigafactory_tests::server_url())
        .await
        .unwrap();
    sqlx::query(&format!("DROP DATABASE {} WITH (FORCE)", app.db.name))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let started = std::time::Instant::now();
    let ready = app.call(reqwest::Method::GET, "/readyz", None, None).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    let r = app.get("/fleet/jobs", &app.admin_token).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    assert_eq!(r.code(), "unavailable");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    let health = app.call(reqwest::Method::GET, "/healthz", None, None).await;
    assert_eq!(health.status, StatusCode::OK, "the process itself is up");
}
