//! The whole lifecycle over HTTP, with read-your-writes checked after every command.

use gigafactory_tests::spawn_app;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn token_enroll_submit_claim_renew_succeed_ship() {
    let app = spawn_app().await;
    let op = app.operator(&["p1"]).await;
    let (factory_id, ft) = app.enroll(&op, &["p1"], &["rust"], 2).await;

    // The fleet map shows the factory at once.
    let fleet = app.get("/fleet/factories", &op).await;
    assert_eq!(fleet.body["items"][0]["factoryId"], factory_id.as_str());

    let job = app
        .submit(&op, json!({"productId": "p1", "title": "build", "requiredCapabilities": ["rust"], "budget": {"usd": 2.5}}))
        .await;
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(job["stage"], "queued");
    let seen = app.get(&format!("/fleet/jobs/{id}"), &op).await;
    assert_eq!(seen.body["stage"], "queued");
    let listed = app.get("/fleet/jobs?productId=p1&stage=queued", &op).await;
    assert_eq!(listed.body["items"][0]["id"], id.as_str());

    let claim = app.claim(&ft).await.expect("a job to claim");
    assert_eq!(claim["job"]["id"], id.as_str());
    let epoch = claim["lease"]["epoch"].as_u64().unwrap();
    assert_eq!(epoch, 2, "epoch is the job's version at the grant");
    assert!(claim["runId"].is_string());
    assert!(claim["breakdown"]["terms"].is_object());
    let seen = app.get(&format!("/fleet/jobs/{id}"), &op).await;
    assert_eq!(seen.body["stage"], "leased");
    assert_eq!(seen.body["lease"]["epoch"], epoch);
    let fleet = app.get("/fleet/factories", &op).await;
    assert_eq!(fleet.body["items"][0]["load"], 1);
    assert_eq!(fleet.body["items"][0]["leases"][0]["jobId"], id.as_str());

    let renew = app
        .post(
            &format!("/fleet/jobs/{id}/lease/renew"),
            &ft,
            json!({"epoch": epoch}),
        )
        .await;
    assert_eq!(renew.status, StatusCode::OK);
    assert!(
        renew.body["expiresAt"].as_str().unwrap() >= claim["lease"]["expiresAt"].as_str().unwrap()
    );

    let running = app
        .post(&format!("/fleet/jobs/{id}/report"), &ft, json!({"epoch": epoch, "status": "running", "progress": 0.5, "checkpoint": {"step": 1}}))
        .await;
    assert_eq!(running.status, StatusCode::OK);
    assert_eq!(running.body["stage"], "running");
    assert_eq!(
        app.get(&format!("/fleet/jobs/{id}"), &op).await.body["checkpoint"],
        json!({"step": 1})
    );

    let done = app
        .post(
            &format!("/fleet/jobs/{id}/report"),
            &ft,
            json!({"epoch": epoch, "status": "succeeded", "costUsd": 1.25}),
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{:?}", done.body);
    assert_eq!(done.body["stage"], "review");
    let runs = app.get(&format!("/fleet/jobs/{id}/runs"), &op).await;
    assert_eq!(runs.body["items"][0]["outcome"], "succeeded");
    assert_eq!(runs.body["items"][0]["costUsd"], 1.25);
    assert_eq!(runs.body["items"][0]["factoryId"], factory_id.as_str());

    let shipped = app
        .patch(
            &format!("/fleet/jobs/{id}"),
            &op,
            json!({"stage": "shipped"}),
        )
        .await;
    assert_eq!(shipped.status, StatusCode::OK);
    assert_eq!(shipped.body["stage"], "shipped");
    assert_eq!(
        app.get(&format!("/fleet/jobs/{id}"), &op).await.body["stage"],
        "shipped"
    );

    let events = app.get(&format!("/fleet/jobs/{id}/events"), &op).await;
    let types: Vec<&str> = events.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "JobSubmitted",
            "LeaseGranted",
            "LeaseRenewed",
            "RunProgressed",
            "RunSucceeded",
            "JobShipped"
        ]
    );
    let seqs: Vec<i64> = events.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["sequence"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);

    // The global log shows the same events, in position order, right away.
    let log = app.get("/fleet/events?after=0&limit=500", &op).await;
    let items = log.body["items"].as_array().unwrap();
    let positions: Vec<i64> = items
        .iter()
        .map(|e| e["position"].as_i64().unwrap())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]));
    let job_types: Vec<&str> = items
        .iter()
        .filter(|e| e["aggregateType"] == "job")
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(job_types, types);
}

#[tokio::test]
async fn operator_moves_are_checked_against_the_stage() {
    let app = spawn_app().await;
    let op = app.operator(&["p1"]).await;
    let job = app
        .submit(&op, json!({"productId": "p1", "title": "t"}))
        .await;
    let id = job["id"].as_str().unwrap();
    let before = app.event_count().await;
    let ship = app
        .patch(
            &format!("/fleet/jobs/{id}"),
            &op,
            json!({"stage": "shipped"}),
        )
        .await;
    assert_eq!(ship.status, StatusCode::CONFLICT);
    assert_eq!(ship.code(), "invalid_stage");
    assert_eq!(ship.body["error"]["current"]["stage"], "queued");
    assert_eq!(app.event_count().await, before);

    let re = app
        .patch(
            &format!("/fleet/jobs/{id}"),
            &op,
            json!({"priority": "critical"}),
        )
        .await;
    assert_eq!(re.body["priority"], "critical");
    let cancelled = app
        .patch(
            &format!("/fleet/jobs/{id}"),
            &op,
            json!({"stage": "cancelled"}),
        )
        .await;
    assert_eq!(cancelled.body["stage"], "cancelled");
    let again = app
        .patch(
            &format!("/fleet/jobs/{id}"),
            &op,
            json!({"stage": "cancelled"}),
        )
        .await;
    assert_eq!(again.code(), "invalid_stage");
}
