//! Leases and reports: fencing, expiry, attempts, idempotent re-sends, races.

use futures::future::join_all;
use gigafactory_api::Settings;
use gigafactory_tests::{spawn_app, spawn_app_with, test_settings, TestApp, TestDb};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

/// An app, an operator, a factory and one claimed job: (op, factory token, job id, epoch).
async fn claimed(app: &TestApp, spec: Value) -> (String, String, String, u64) {
    let op = app.operator(&["p1"]).await;
    let (_, ft) = app.enroll(&op, &["p1"], &[], 4).await;
    app.submit(&op, spec).await;
    let c = app.claim(&ft).await.expect("claim");
    let id = c["job"]["id"].as_str().unwrap().to_string();
    (op, ft, id, c["lease"]["epoch"].as_u64().unwrap())
}

#[tokio::test]
async fn stale_epoch_is_fenced_on_renew_release_and_report() {
    let app = spawn_app().await;
    let (_, ft, id, epoch) = claimed(&app, json!({"productId": "p1", "title": "t"})).await;
    let before = app.event_count().await;
    for (path, body) in [
        ("lease/renew", json!({"epoch": epoch + 1})),
        ("lease/release", json!({"epoch": epoch - 1})),
        ("report", json!({"epoch": 99, "status": "running"})),
        ("report", json!({"epoch": epoch + 5, "status": "succeeded"})),
    ] {
        let r = app
            .post(&format!("/fleet/jobs/{id}/{path}"), &ft, body)
            .await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{path}: {:?}", r.body);
        assert_eq!(r.code(), "fenced");
        assert_eq!(r.body["error"]["current"]["epoch"], epoch);
        assert_eq!(r.body["error"]["current"]["stage"], "leased");
    }
    assert_eq!(
        app.event_count().await,
        before,
        "fenced writes append nothing"
    );
}

#[tokio::test]
async fn expired_lease_is_fenced_before_the_sweeper_runs() {
    // A sweeper that never runs during the test.
    let settings = Settings {
        sweep_interval: Duration::from_secs(3600),
        ..test_settings()
    };
    let app = spawn_app_with(TestDb::create().await, settings).await;
    let (op, ft, id, epoch) = claimed(
        &app,
        json!({"productId": "p1", "title": "t", "timeoutSecs": 1}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let before = app.event_count().await;
    let r = app
        .post(
            &format!("/fleet/jobs/{id}/report"),
            &ft,
            json!({"epoch": epoch, "status": "succeeded"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.code(), "fenced");
    let r = app
        .post(
            &format!("/fleet/jobs/{id}/lease/renew"),
            &ft,
            json!({"epoch": epoch}),
        )
        .await;
    assert_eq!(r.code(), "fenced");
    assert_eq!(app.event_count().await, before);
    // Not swept yet: still shown leased, but dead.
    assert_eq!(
        app.get(&format!("/fleet/jobs/{id}"), &op).await.body["stage"],
        "leased"
    );
}

async fn wait_for_stage(app: &TestApp, op: &str, id: &str, stage: &str) -> Value {
    for _ in 0..100 {
        let j = app.get(&format!("/fleet/jobs/{id}"), op).await.body;
        if j["stage"] == stage {
            return j;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("job {id} never reached {stage}");
}

#[tokio::test]
async fn expiry_requeues_counts_the_attempt_and_fails_at_max_attempts() {
    let app = spawn_app().await;
    let (op, ft, id, _) = claimed(
        &app,
        json!({"productId": "p1", "title": "t", "timeoutSecs": 1, "maxAttempts": 2}),
    )
    .await;
    let j = wait_for_stage(&app, &op, &id, "queued").await;
    assert_eq!(j["attempts"], 1);
    assert!(j["lease"].is_null());
    let runs = app.get(&format!("/fleet/jobs/{id}/runs"), &op).await;
    assert_eq!(runs.body["items"][0]["outcome"], "expired");

    // After its backoff the job can be claimed again, with a new epoch.
    let mut again = None;
    for _ in 0..50 {
        again = app.claim(&ft).await;
        if again.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let again = again.expect("claimable again after backoff");
    assert!(again["lease"]["epoch"].as_u64().unwrap() > 2);
    let j = wait_for_stage(&app, &op, &id, "failed").await;
    assert_eq!(j["attempts"], 2);
}

#[tokio::test]
async fn failures_requeue_until_attempts_are_used_up() {
    let app = spawn_app().await;
    let (op, ft, id, epoch) = claimed(
        &app,
        json!({"productId": "p1", "title": "t", "maxAttempts": 1}),
    )
    .await;
    let r = app
        .post(
            &format!("/fleet/jobs/{id}/report"),
            &ft,
            json!({"epoch": epoch, "status": "failed", "error": "boom", "costUsd": 0.5}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["stage"], "failed");
    assert_eq!(r.body["attempts"], 1);
    assert_eq!(
        app.get(&format!("/fleet/jobs/{id}"), &op).await.body["lastError"],
        "boom"
    );
}

#[tokio::test]
async fn resent_final_report_answers_200_and_appends_nothing() {
    let app = spawn_app().await;
    let (_, ft, id, epoch) = claimed(&app, json!({"productId": "p1", "title": "t"})).await;
    let body = json!({"epoch": epoch, "status": "succeeded", "costUsd": 0.2});
    let first = app
        .post(&format!("/fleet/jobs/{id}/report"), &ft, body.clone())
        .await;
    assert_eq!(first.status, StatusCode::OK);
    let before = app.event_count().await;
    let again = app
        .post(&format!("/fleet/jobs/{id}/report"), &ft, body)
        .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["stage"], "review");
    assert_eq!(app.event_count().await, before);
    // A different write on the ended lease is fenced.
    let other = app
        .post(
            &format!("/fleet/jobs/{id}/report"),
            &ft,
            json!({"epoch": epoch, "status": "failed"}),
        )
        .await;
    assert_eq!(other.code(), "fenced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn renewals_racing_reports_never_surface_a_conflict() {
    let app = spawn_app().await;
    let (_, ft, id, epoch) = claimed(&app, json!({"productId": "p1", "title": "t"})).await;
    let calls = (0..40).map(|i| {
        let (path, body) = if i % 2 == 0 {
            ("lease/renew", json!({"epoch": epoch}))
        } else {
            (
                "report",
                json!({"epoch": epoch, "status": "running", "progress": (i as f64) / 100.0}),
            )
        };
        let app = &app;
        let ft = &ft;
        let id = &id;
        async move {
            app.post(&format!("/fleet/jobs/{id}/{path}"), ft, body)
                .await
        }
    });
    for r in join_all(calls).await {
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    }
    // And a final report racing renewals: the report wins or the renewals are fenced.
    let report_path = format!("/fleet/jobs/{id}/report");
    let renew_path = format!("/fleet/jobs/{id}/lease/renew");
    let mut calls = vec![app.post(
        &report_path,
        &ft,
        json!({"epoch": epoch, "status": "succeeded"}),
    )];
    for _ in 0..10 {
        calls.push(app.post(&renew_path, &ft, json!({"epoch": epoch})));
    }
    for r in join_all(calls).await {
        assert!(
            r.status == StatusCode::OK || r.code() == "fenced",
            "{:?}",
            r.body
        );
    }
}

#[tokio::test]
async fn release_requeues_with_the_checkpoint_and_no_attempt_used() {
    let app = spawn_app().await;
    let (op, ft, id, epoch) = claimed(&app, json!({"productId": "p1", "title": "t"})).await;
    let r = app
        .post(
            &format!("/fleet/jobs/{id}/lease/release"),
            &ft,
            json!({"epoch": epoch, "checkpoint": {"done": 3}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let j = app.get(&format!("/fleet/jobs/{id}"), &op).await.body;
    assert_eq!(j["stage"], "queued");
    assert_eq!(j["attempts"], 0);
    assert_eq!(j["checkpoint"], json!({"done": 3}));
    let c = app.claim(&ft).await.expect("claimable again at once");
    assert_eq!(c["job"]["checkpoint"], json!({"done": 3}));
}

#[tokio::test]
async fn cancel_ends_the_lease_and_the_heartbeat_says_stop() {
    let app = spawn_app().await;
    let (op, ft, id, epoch) = claimed(&app, json!({"productId": "p1", "title": "t"})).await;
    let hb = app
        .post(
            "/fleet/factories/heartbeat",
            &ft,
            json!({"runningJobIds": [id]}),
        )
        .await;
    assert_eq!(hb.body["directives"], json!([]));
    let c = app
        .patch(
            &format!("/fleet/jobs/{id}"),
            &op,
            json!({"stage": "cancelled"}),
        )
        .await;
    assert_eq!(c.body["stage"], "cancelled");
    for _ in 0..2 {
        let hb = app
            .post(
                "/fleet/factories/heartbeat",
                &ft,
                json!({"runningJobIds": [id]}),
            )
            .await;
        assert_eq!(
            hb.body["directives"],
            json!([{"type": "stop", "jobId": id, "reason": "cancelled"}])
        );
    }
    let hb = app
        .post(
            "/fleet/factories/heartbeat",
            &ft,
            json!({"runningJobIds": []}),
        )
        .await;
    assert_eq!(hb.body["directives"], json!([]));
    let late = app
        .post(
            &format!("/fleet/jobs/{id}/report"),
            &ft,
            json!({"epoch": epoch, "status": "succeeded"}),
        )
        .await;
    assert_eq!(late.code(), "fenced");
    let runs = app.get(&format!("/fleet/jobs/{id}/runs"), &op).await;
    assert_eq!(runs.body["items"][0]["outcome"], "cancelled");
}

/// A process remembers the products of the jobs it leased (no lookup before a
/// report); another process looks the job up. Either way a factory only reaches
/// the jobs of its own products.
#[tokio::test]
async fn reports_reach_a_job_through_any_process_and_only_from_its_products() {
    let a = spawn_app().await;
    let b = gigafactory_tests::spawn_app_on(a.db.clone()).await;
    let op = a.operator(&["p1", "p2"]).await;
    let (_, p1_factory) = a.enroll(&op, &["p1"], &[], 2).await;
    let (_, p2_factory) = a.enroll(&op, &["p2"], &[], 2).await;
    let mut leased = Vec::new();
    for _ in 0..2 {
        a.submit(&op, json!({"productId": "p1", "title": "t"}))
            .await;
        let c = a.claim(&p1_factory).await.expect("a lease");
        leased.push((
            c["job"]["id"].as_str().unwrap().to_string(),
            c["lease"]["epoch"].as_u64().unwrap(),
        ));
    }
    for app in [&a, &b] {
        let r = app
            .post(
                &format!("/fleet/jobs/{}/report", leased[0].0),
                &p2_factory,
                json!({"epoch": leased[0].1, "status": "running"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{:?}", r.body);
    }
    // The leasing process and the other one each take a report.
    for (app, (id, epoch)) in [&a, &b].into_iter().zip(&leased) {
        let r = app
            .post(
                &format!("/fleet/jobs/{id}/report"),
                &p1_factory,
                json!({"epoch": epoch, "status": "succeeded"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        assert_eq!(r.body["stage"], "review");
    }
}
