//! Artifacts: streamed upload/download, fencing, limits, names, scoping, delete,
//! orphan sweeping.

use gigafactory_api::Settings;
use gigafactory_tests::{spawn_app, spawn_app_with, test_settings, TestApp, TestDb};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

async fn upload(
    app: &TestApp,
    token: &str,
    job: &str,
    query: &str,
    body: Vec<u8>,
    content_type: &str,
) -> (StatusCode, Value) {
    let r = app
        .http
        .post(format!("{}/fleet/jobs/{job}/artifacts?{query}", app.base))
        .bearer_auth(token)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// An operator, a factory holding a lease on a p1 job: (op, factory token, job id, epoch).
async fn leased(app: &TestApp) -> (String, String, String, u64) {
    let op = app.operator(&["p1"]).await;
    let (_, ft) = app.enroll(&op, &["p1"], &[], 1).await;
    let job = app
        .submit(&op, json!({"productId": "p1", "title": "t"}))
        .await;
    let c = app.claim(&ft).await.unwrap();
    (
        op,
        ft,
        job["id"].as_str().unwrap().to_string(),
        c["lease"]["epoch"].as_u64().unwrap(),
    )
}

#[tokio::test]
async fn a_20_mb_artifact_streams_through_a_1_mib_request_limit_and_round_trips() {
    let app = spawn_app().await; // requests are limited to 1 MiB: uploads must stream
    let (op, ft, job, epoch) = leased(&app).await;
    let body: Vec<u8> = (0..20 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let sha = hex::encode(Sha256::digest(&body));
    let (status, created) = upload(
        &app,
        &ft,
        &job,
        &format!("name=model.bin&epoch={epoch}"),
        body.clone(),
        "application/x-model",
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["sha256"], sha);
    assert_eq!(created["size"], body.len() as u64);
    assert_eq!(created["contentType"], "application/x-model");

    let list = app.get(&format!("/fleet/jobs/{job}/artifacts"), &op).await;
    assert_eq!(list.body["items"].as_array().unwrap().len(), 1);
    let id = created["artifactId"].as_str().unwrap();
    let r = app
        .http
        .get(format!("{}/fleet/jobs/{job}/artifacts/{id}", app.base))
        .bearer_auth(&op)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/x-model");
    assert_eq!(r.headers()["etag"], format!("\"{sha}\""));
    assert_eq!(r.headers()["content-length"], body.len().to_string());
    let bytes = r.bytes().await.unwrap();
    assert_eq!(hex::encode(Sha256::digest(&bytes)), sha);
    assert_eq!(bytes.len(), body.len());
    // The event carries the metadata.
    let events = app.get(&format!("/fleet/jobs/{job}/events"), &op).await;
    assert!(events.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["type"] == "ArtifactAdded" && e["payload"]["sha256"] == sha));
}

#[tokio::test]
async fn stale_epochs_bad_names_other_products_and_oversize_store_nothing() {
    let settings = Settings {
        artifact_max_bytes: 64 * 1024,
        ..test_settings()
    };
    let app = spawn_app_with(TestDb::create().await, settings).await;
    let (op, ft, job, epoch) = leased(&app).await;
    let before = app.event_count().await;

    let (s, b) = upload(
        &app,
        &ft,
        &job,
        &format!("name=a.txt&epoch={}", epoch + 1),
        b"hello".to_vec(),
        "text/plain",
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(b["error"]["code"], "fenced");
    for name in ["../etc/passwd", "a/b", "..", ""] {
        let (s, b) = upload(
            &app,
            &ft,
            &job,
            &format!("name={}&epoch={epoch}", urlencode(name)),
            b"x".to_vec(),
            "text/plain",
        )
        .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{name}");
        assert_eq!(b["error"]["field"], "name");
    }
    let (s, b) = upload(
        &app,
        &ft,
        &job,
        &format!("name=big&epoch={epoch}"),
        vec![7u8; 200 * 1024],
        "application/octet-stream",
    )
    .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{b}");
    let other = app.operator(&["p2"]).await;
    let (s, _) = upload(&app, &other, &job, "name=x", b"x".to_vec(), "text/plain").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let auditor = app.token("auditor", &["p1"]).await;
    let (s, _) = upload(&app, &auditor, &job, "name=x", b"x".to_vec(), "text/plain").await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    assert_eq!(
        app.event_count().await,
        before + 2,
        "only the two tokens were added"
    );
    assert_eq!(
        app.get(&format!("/fleet/jobs/{job}/artifacts"), &op)
            .await
            .body["items"],
        json!([])
    );
    assert_eq!(app.artifact_files(), 0, "no bytes left behind");

    // An operator uploads without an epoch; another product cannot read it.
    let (s, created) = upload(
        &app,
        &op,
        &job,
        "name=notes.md",
        b"# notes".to_vec(),
        "text/markdown",
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let id = created["artifactId"].as_str().unwrap();
    assert_eq!(
        app.get(&format!("/fleet/jobs/{job}/artifacts/{id}"), &other)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'.' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn delete_removes_the_bytes_and_the_sweeper_removes_orphans() {
    let settings = Settings {
        artifact_orphan_grace: std::time::Duration::ZERO,
        ..test_settings()
    };
    let app = spawn_app_with(TestDb::create().await, settings).await;
    let (op, ft, job, epoch) = leased(&app).await;
    let (_, kept) = upload(
        &app,
        &ft,
        &job,
        &format!("name=keep&epoch={epoch}"),
        b"keep".to_vec(),
        "text/plain",
    )
    .await;
    let (_, gone) = upload(
        &app,
        &ft,
        &job,
        &format!("name=gone&epoch={epoch}"),
        b"gone".to_vec(),
        "text/plain",
    )
    .await;
    assert_eq!(app.artifact_files(), 2);
    let gone_id = gone["artifactId"].as_str().unwrap();
    let auditor = app.token("auditor", &["p1"]).await;
    assert_eq!(
        app.delete(&format!("/fleet/jobs/{job}/artifacts/{gone_id}"), &auditor)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.delete(&format!("/fleet/jobs/{job}/artifacts/{gone_id}"), &op)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(app.artifact_files(), 1);
    let items = app
        .get(&format!("/fleet/jobs/{job}/artifacts"), &op)
        .await
        .body["items"]
        .clone();
    assert_eq!(items.as_array().unwrap().len(), 1);
    assert_eq!(items[0]["artifactId"], kept["artifactId"]);
    assert_eq!(
        app.delete(&format!("/fleet/jobs/{job}/artifacts/{gone_id}"), &op)
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    // A blob no event points to (a crash between the write and the append).
    let orphan =
        object_store::path::Path::from(format!("artifacts/p1/{job}/{}", uuid::Uuid::now_v7()));
    app.state
        .artifacts
        .put(&orphan, b"orphan".to_vec().into())
        .await
        .unwrap();
    assert_eq!(app.artifact_files(), 2);
    let removed = gigafactory_api::artifacts::sweep_orphans(&app.state)
        .await
        .unwrap();
    assert_eq!(removed, 1);
    assert_eq!(app.artifact_files(), 1, "the live artifact stays");
}
