//! Every token case: none, wrong, revoked, rotated-out, other product, auditor write.

use gigafactory_tests::spawn_app;
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn missing_wrong_and_revoked_tokens_get_401() {
    let app = spawn_app().await;
    let none = app.call(Method::GET, "/fleet/jobs", None, None).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert_eq!(none.code(), "unauthorized");
    let wrong = app.get("/fleet/jobs", "gf_0000").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);

    let issued = app
        .post(
            "/fleet/tokens",
            &app.admin_token,
            json!({"role": "operator", "products": ["p1"], "name": "o"}),
        )
        .await;
    let token = issued.body["token"].as_str().unwrap();
    let token_id = issued.body["tokenId"].as_str().unwrap();
    assert_eq!(app.get("/fleet/jobs", token).await.status, StatusCode::OK);
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE payload::text LIKE '%' || $1 || '%'")
            .bind(token)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(stored, 0, "the token itself is never stored");
    assert_eq!(
        app.delete(&format!("/fleet/tokens/{token_id}"), &app.admin_token)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.get("/fleet/jobs", token).await.status,
        StatusCode::UNAUTHORIZED
    );
    // Only the admin issues tokens.
    let op = app.operator(&["*"]).await;
    let r = app
        .post(
            "/fleet/tokens",
            &op,
            json!({"role": "operator", "products": ["*"], "name": "x"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn other_products_are_404_and_auditors_cannot_write() {
    let app = spawn_app().await;
    let op1 = app.operator(&["p1"]).await;
    let op2 = app.operator(&["p2"]).await;
    let auditor = app.token("auditor", &["p1"]).await;
    let job = app
        .submit(&op1, json!({"productId": "p1", "title": "secret"}))
        .await;
    let id = job["id"].as_str().unwrap();

    let other = app.get(&format!("/fleet/jobs/{id}"), &op2).await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
    let other = app
        .patch(
            &format!("/fleet/jobs/{id}"),
            &op2,
            json!({"stage": "cancelled"}),
        )
        .await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
    let listed = app.get("/fleet/jobs", &op2).await;
    assert_eq!(listed.body["items"], json!([]));
    let submit = app
        .post(
            "/fleet/jobs",
            &op2,
            json!({"productId": "p1", "title": "x"}),
        )
        .await;
    assert_eq!(submit.status, StatusCode::NOT_FOUND);
    let log = app.get("/fleet/events?after=0", &op2).await;
    assert!(log.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["productId"] != "p1"));

    assert_eq!(
        app.get(&format!("/fleet/jobs/{id}"), &auditor).await.status,
        StatusCode::OK
    );
    assert_eq!(
        app.get("/fleet/events?after=0", &auditor).await.status,
        StatusCode::OK
    );
    let before = app.event_count().await;
    for r in [
        app.post(
            "/fleet/jobs",
            &auditor,
            json!({"productId": "p1", "title": "x"}),
        )
        .await,
        app.patch(
            &format!("/fleet/jobs/{id}"),
            &auditor,
            json!({"stage": "cancelled"}),
        )
        .await,
        app.post(
            "/fleet/factories/enroll",
            &auditor,
            json!({"name": "f", "productIds": ["p1"]}),
        )
        .await,
        app.post("/fleet/claim", &auditor, json!({})).await,
        app.post(
            "/fleet/tokens",
            &auditor,
            json!({"role": "operator", "products": ["p1"], "name": "x"}),
        )
        .await,
    ] {
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{:?}", r.body);
    }
    assert_eq!(app.event_count().await, before);

    // A factory of p2 cannot see or touch p1's job.
    let (_, f2) = app.enroll(&op2, &["p2"], &[], 1).await;
    let r = app
        .post(
            &format!("/fleet/jobs/{id}/report"),
            &f2,
            json!({"epoch": 2, "status": "running"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn rotation_keeps_the_old_token_until_the_new_one_is_used() {
    let app = spawn_app().await;
    let op = app.operator(&["p1"]).await;
    let (factory_id, old) = app.enroll(&op, &["p1"], &[], 1).await;
    let rotated = app
        .post(
            &format!("/fleet/factories/{factory_id}/token/rotate"),
            &old,
            json!({}),
        )
        .await;
    assert_eq!(rotated.status, StatusCode::OK);
    let new = rotated.body["token"].as_str().unwrap().to_string();
    let hb = json!({"runningJobIds": []});
    assert_eq!(
        app.post("/fleet/factories/heartbeat", &old, hb.clone())
            .await
            .status,
        StatusCode::OK,
        "old still works"
    );
    assert_eq!(
        app.post("/fleet/factories/heartbeat", &new, hb.clone())
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        app.post("/fleet/factories/heartbeat", &old, hb.clone())
            .await
            .status,
        StatusCode::UNAUTHORIZED,
        "rotated out"
    );
    assert_eq!(
        app.post("/fleet/factories/heartbeat", &new, hb.clone())
            .await
            .status,
        StatusCode::OK
    );

    // A rotated-out token also dies after the grace period when the new one is unused.
    let (factory_id, old) = app.enroll(&op, &["p1"], &[], 1).await;
    app.post(
        &format!("/fleet/factories/{factory_id}/token/rotate"),
        &op,
        json!({}),
    )
    .await;
    sqlx::query("UPDATE credential_view SET valid_until = now() - interval '1 second' WHERE valid_until IS NOT NULL")
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        app.post("/fleet/factories/heartbeat", &old, hb)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn revoking_a_factory_refuses_its_token_and_releases_its_leases() {
    let app = spawn_app().await;
    let op = app.operator(&["p1"]).await;
    let (factory_id, ft) = app.enroll(&op, &["p1"], &[], 1).await;
    let job = app
        .submit(&op, json!({"productId": "p1", "title": "t"}))
        .await;
    let id = job["id"].as_str().unwrap();
    let c = app.claim(&ft).await.unwrap();
    let r = app
        .post(
            &format!("/fleet/factories/{factory_id}/token/revoke"),
            &op,
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = app
        .post(
            &format!("/fleet/jobs/{id}/lease/renew"),
            &ft,
            json!({"epoch": c["lease"]["epoch"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let j = app.get(&format!("/fleet/jobs/{id}"), &op).await.body;
    assert_eq!(j["stage"], "queued");
    assert_eq!(j["attempts"], 0, "revocation uses no attempt");
    let runs = app.get(&format!("/fleet/jobs/{id}/runs"), &op).await;
    assert_eq!(runs.body["items"][0]["outcome"], "revoked");
    tokio::time::sleep(Duration::from_millis(10)).await;
}
