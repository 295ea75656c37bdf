//! Auditors: the tamper-evident log, verify, export, replay, time travel.

use gigafactory_projections::replay;
use gigafactory_tests::{binary, spawn_app, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Jobs through their lifecycle in two products, a factory per product.
async fn workload(app: &TestApp) -> String {
    let op = app.operator(&["p1", "p2"]).await;
    for product in ["p1", "p2"] {
        let (_, ft) = app.enroll(&op, &[product], &[], 2).await;
        for i in 0..4 {
            app.submit(
                &op,
                // Not only ASCII: the hash covers UTF-8 bytes, not characters.
                json!({"productId": product, "title": format!("{product}-{i} — ünï ✓ 日本"), "maxAttempts": 1}),
            )
            .await;
        }
        for status in ["succeeded", "failed", "running"] {
            let c = app.claim(&ft).await.unwrap();
            let id = c["job"]["id"].as_str().unwrap().to_string();
            let epoch = c["lease"]["epoch"].clone();
            app.post(
                &format!("/fleet/jobs/{id}/report"),
                &ft,
                json!({"epoch": epoch, "status": status, "costUsd": 0.1}),
            )
            .await;
            if status == "succeeded" {
                app.patch(
                    &format!("/fleet/jobs/{id}"),
                    &op,
                    json!({"stage": "shipped"}),
                )
                .await;
            }
            if status == "running" {
                app.post(
                    &format!("/fleet/jobs/{id}/lease/release"),
                    &ft,
                    json!({"epoch": epoch, "checkpoint": {"k": 1}}),
                )
                .await;
            }
        }
    }
    // An expiry: a lease that runs out and is swept.
    let (_, ft) = app.enroll(&op, &["p1"], &[], 1).await;
    let short = app
        .submit(
            &op,
            json!({"productId": "p1", "title": "short", "timeoutSecs": 1, "priority": "critical"}),
        )
        .await;
    let id = short["id"].as_str().unwrap().to_string();
    let c = app.claim(&ft).await.unwrap();
    assert_eq!(c["job"]["id"], id.as_str());
    let mut expired = false;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if app.get(&format!("/fleet/jobs/{id}"), &op).await.body["attempts"] == 1 {
            expired = true;
            break;
        }
    }
    assert!(expired, "the short lease expired");
    // A cancellation while a run is open ends that run.
    let (_, ft) = app.enroll(&op, &["p2"], &[], 1).await;
    let doomed = app
        .submit(
            &op,
            json!({"productId": "p2", "title": "doomed", "priority": "critical"}),
        )
        .await;
    let id = doomed["id"].as_str().unwrap().to_string();
    let c = app.claim(&ft).await.unwrap();
    assert_eq!(c["job"]["id"], id.as_str());
    let r = app
        .patch(
            &format!("/fleet/jobs/{id}"),
            &op,
            json!({"stage": "cancelled"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let runs = app.get(&format!("/fleet/jobs/{id}/runs"), &op).await.body;
    assert_eq!(runs["items"][0]["outcome"], "cancelled", "{runs}");
    op
}

async fn verify(app: &TestApp, expect: Option<&str>) -> Value {
    let path = match expect {
        Some(e) => format!("/fleet/audit/verify?expect={e}"),
        None => "/fleet/audit/verify".to_string(),
    };
    let r = app.get(&path, &app.admin_token).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    r.body
}

/// Runs `sql` with the append-only trigger lifted, as a superuser would.
async fn tamper(app: &TestApp, sql: &str) {
    let mut tx = app.pool.begin().await.unwrap();
    sqlx::query("ALTER TABLE events DISABLE TRIGGER events_append_only")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(sql).execute(&mut *tx).await.unwrap();
    sqlx::query("ALTER TABLE events ENABLE TRIGGER events_append_only")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

fn kinds_at(report: &Value) -> Vec<(String, Option<i64>)> {
    report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["kind"].as_str().unwrap().to_string(),
                p["position"].as_i64(),
            )
        })
        .collect()
}

#[tokio::test]
async fn verify_catches_an_edited_event_a_deleted_event_and_a_deleted_stream() {
    for case in ["edit", "delete_one", "delete_stream"] {
        let app = spawn_app().await;
        workload(&app).await;
        app.settle().await;
        let clean = verify(&app, None).await;
        assert_eq!(clean["ok"], true, "{clean}");
        let noted = format!(
            "{}:{}",
            clean["position"],
            clean["digest"].as_str().unwrap()
        );
        assert_eq!(verify(&app, Some(&noted)).await["ok"], true);

        // A job's third event, somewhere in the middle of the log.
        let (target, stream): (i64, String) = sqlx::query_as(
            "SELECT position, aggregate_id FROM positioned_events WHERE aggregate_type = 'job' AND sequence = 3 ORDER BY position LIMIT 1",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        let expected_position = match case {
            "edit" => {
                tamper(&app, &format!(
                    "UPDATE events SET payload = replace(payload::text, '\"epoch\"', '\"epoch\" ')::json WHERE id = (SELECT event_id FROM event_positions WHERE position = {target})"
                ))
                .await;
                target
            }
            "delete_one" => {
                tamper(
                    &app,
                    &format!("DELETE FROM events WHERE id = (SELECT event_id FROM event_positions WHERE position = {target})"),
                )
                .await;
                target
            }
            _ => {
                let first: i64 = sqlx::query_scalar(
                    "SELECT min(position) FROM positioned_events WHERE aggregate_id = $1",
                )
                .bind(&stream)
                .fetch_one(&app.pool)
                .await
                .unwrap();
                tamper(
                    &app,
                    &format!("DELETE FROM events WHERE aggregate_id = '{stream}'"),
                )
                .await;
                first
            }
        };
        let report = verify(&app, None).await;
        assert_eq!(report["ok"], false, "{case}: {report}");
        let problems = kinds_at(&report);
        let expected_kind = if case == "edit" {
            "hash_mismatch"
        } else {
            "position_gap"
        };
        assert!(
            problems.contains(&(expected_kind.to_string(), Some(expected_position))),
            "{case}: expected {expected_kind} at {expected_position}, got {problems:?}"
        );
        let with_note = verify(&app, Some(&noted)).await;
        assert!(
            kinds_at(&with_note)
                .iter()
                .any(|(k, _)| k == "digest_mismatch"),
            "{case}: the noted digest no longer verifies"
        );
    }
}

#[tokio::test]
async fn a_cut_tail_fails_the_noted_digest_and_the_cli_exits_non_zero() {
    let app = spawn_app().await;
    workload(&app).await;
    app.settle().await;
    let clean = verify(&app, None).await;
    let noted = format!(
        "{}:{}",
        clean["position"],
        clean["digest"].as_str().unwrap()
    );
    let status = std::process::Command::new(binary())
        .args(["verify", "--expect", &noted])
        .env("DATABASE_URL", &app.db.url)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    tamper(
        &app,
        "DELETE FROM events WHERE id = (SELECT event_id FROM event_positions ORDER BY position DESC LIMIT 1)",
    )
    .await;
    assert_eq!(
        verify(&app, None).await["ok"],
        true,
        "a cut tail alone leaves no gap…"
    );
    let r = verify(&app, Some(&noted)).await;
    assert!(
        kinds_at(&r).iter().any(|(k, _)| k == "digest_mismatch"),
        "…but the noted digest catches it"
    );
    let status = std::process::Command::new(binary())
        .args(["verify", "--expect", &noted])
        .env("DATABASE_URL", &app.db.url)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "verify exits non-zero when not ok");
}

#[tokio::test]
async fn export_round_trips_through_offline_verify_and_is_product_scoped() {
    let app = spawn_app().await;
    workload(&app).await;
    app.settle().await;
    let clean = verify(&app, None).await;
    let dir = std::env::temp_dir().join(format!("gf-export-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let all = dir.join("all.jsonl");
    let p1 = dir.join("p1.jsonl");
    let run = |args: &[&str]| {
        std::process::Command::new(binary())
            .args(args)
            .env("DATABASE_URL", &app.db.url)
            .output()
            .unwrap()
    };
    assert!(run(&["events", "export", "--out", all.to_str().unwrap()])
        .status
        .success());
    assert!(run(&[
        "events",
        "export",
        "--product",
        "p1",
        "--out",
        p1.to_str().unwrap()
    ])
    .status
    .success());

    let noted = format!(
        "{}:{}",
        clean["position"],
        clean["digest"].as_str().unwrap()
    );
    let offline = std::process::Command::new(binary())
        .args([
            "verify",
            "--from-file",
            all.to_str().unwrap(),
            "--expect",
            &noted,
        ])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(
        offline.status.success(),
        "{}",
        String::from_utf8_lossy(&offline.stdout)
    );
    let report: Value = serde_json::from_slice(&offline.stdout).unwrap();
    assert_eq!(
        report["digest"], clean["digest"],
        "the copy reproduces the server's digest"
    );

    let lines: Vec<Value> = std::fs::read_to_string(&p1)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.iter().any(|l| l["aggregateType"] == "job"));
    assert!(
        lines.iter().any(|l| l["aggregateType"] == "factory"),
        "its factories' events are included"
    );
    for l in &lines {
        assert_ne!(l["productId"], "p2");
        assert!(
            !l.to_string().contains("p2-"),
            "no other product's job: {l}"
        );
    }
    assert!(run(&["verify", "--from-file", p1.to_str().unwrap()])
        .status
        .success());

    // An edited copy fails offline.
    let text = std::fs::read_to_string(&all)
        .unwrap()
        .replacen("p1-0", "p1-X", 1);
    std::fs::write(&all, text).unwrap();
    assert!(!run(&["verify", "--from-file", all.to_str().unwrap()])
        .status
        .success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn replay_proves_the_read_models_and_names_a_corrupted_row() {
    let app = spawn_app().await;
    workload(&app).await;
    app.settle().await;
    let schema = format!("gf_replay_{}", uuid::Uuid::new_v4().simple());
    let applied = replay::rebuild_into(&app.pool, &schema, 7, |_, _| {})
        .await
        .unwrap();
    assert!(applied >= 27, "{applied}");
    let diffs = replay::compare(&app.pool, &schema).await.unwrap();
    assert!(diffs.is_empty(), "{diffs:#?}");
    // One batch for the whole log: runs start and end inside the batch.
    let whole = format!("{schema}_whole");
    replay::rebuild_into(&app.pool, &whole, 10_000, |_, _| {})
        .await
        .unwrap();
    let diffs = replay::compare(&app.pool, &whole).await.unwrap();
    assert!(diffs.is_empty(), "{diffs:#?}");

    let job_id: uuid::Uuid = sqlx::query_scalar("SELECT job_id FROM job_view LIMIT 1")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE job_view SET title = 'corrupted' WHERE job_id = $1")
        .bind(job_id)
        .execute(&app.pool)
        .await
        .unwrap();
    let diffs = replay::compare(&app.pool, &schema).await.unwrap();
    assert_eq!(diffs.len(), 1, "{diffs:#?}");
    assert_eq!(diffs[0].table, "job_view");
    assert_eq!(diffs[0].key["job_id"], job_id.to_string());
    assert_eq!(diffs[0].column.as_deref(), Some("title"));
    assert_eq!(diffs[0].live, "corrupted");

    // --swap puts the log's truth back, with every index and key of the live table.
    let indexes = "SELECT string_agg(indexname || ' ' || indexdef, '; ' ORDER BY indexname)
                   FROM pg_indexes WHERE schemaname = 'public' AND tablename = 'job_view'";
    let before: String = sqlx::query_scalar(indexes)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    replay::swap(&app.pool, &schema).await.unwrap();
    let after: String = sqlx::query_scalar(indexes)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(before, after);
    let primary_key = |table: &'static str| {
        sqlx::query_scalar::<_, String>(
            "SELECT conname::text FROM pg_constraint
             WHERE conrelid = ('public.' || $1)::regclass AND contype = 'p'",
        )
        .bind(table)
        .fetch_one(&app.pool)
    };
    assert_eq!(primary_key("job_view").await.unwrap(), "job_view_pkey");
    assert_eq!(primary_key("run_view").await.unwrap(), "run_view_pkey");
    // The rebuild was unlogged scratch; what went live is logged like every table.
    let unlogged: Vec<String> = sqlx::query_scalar(
        "SELECT relname::text FROM pg_class
         WHERE relnamespace = 'public'::regnamespace AND relkind = 'r' AND relpersistence <> 'p'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(unlogged.is_empty(), "unlogged after the swap: {unlogged:?}");
    let title: String = sqlx::query_scalar("SELECT title FROM job_view WHERE job_id = $1")
        .bind(job_id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_ne!(title, "corrupted");
    let out = std::process::Command::new(binary())
        .args(["replay"])
        .env("DATABASE_URL", &app.db.url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn as_of_shows_every_version_as_it_was() {
    let app = spawn_app().await;
    let op = app.operator(&["p1"]).await;
    let auditor = app.token("auditor", &["p1"]).await;
    let (_, ft) = app.enroll(&op, &["p1"], &[], 1).await;
    let job = app
        .submit(&op, json!({"productId": "p1", "title": "t"}))
        .await;
    let id = job["id"].as_str().unwrap().to_string();
    let mut seen: BTreeMap<u64, Value> = BTreeMap::new();
    let mut record = |v: Value| {
        seen.insert(v["version"].as_u64().unwrap(), v);
    };
    record(app.get(&format!("/fleet/jobs/{id}"), &op).await.body);
    let c = app.claim(&ft).await.unwrap();
    let epoch = c["lease"]["epoch"].clone();
    record(app.get(&format!("/fleet/jobs/{id}"), &op).await.body);
    for body in [
        json!({"epoch": epoch, "status": "running", "progress": 0.5}),
        json!({"epoch": epoch, "status": "running", "checkpoint": {"s": 2}}),
        json!({"epoch": epoch, "status": "succeeded", "costUsd": 1.0}),
    ] {
        app.post(&format!("/fleet/jobs/{id}/report"), &ft, body)
            .await;
        record(app.get(&format!("/fleet/jobs/{id}"), &op).await.body);
    }
    app.patch(
        &format!("/fleet/jobs/{id}"),
        &op,
        json!({"stage": "shipped"}),
    )
    .await;
    record(app.get(&format!("/fleet/jobs/{id}"), &op).await.body);
    assert_eq!(seen.len(), 6);
    for (version, then) in &seen {
        let r = app
            .get(&format!("/fleet/jobs/{id}?asOf={version}"), &auditor)
            .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(&r.body, then, "version {version}");
    }
    assert_eq!(
        app.get(&format!("/fleet/jobs/{id}?asOf=7"), &auditor)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    for bad in ["0", "-1", "abc"] {
        let r = app
            .get(&format!("/fleet/jobs/{id}?asOf={bad}"), &auditor)
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(r.body["error"]["field"], "asOf");
    }
}

#[tokio::test]
async fn auditors_read_everything_of_theirs_and_write_nothing() {
    let app = spawn_app().await;
    let op = workload(&app).await;
    let auditor = app.token("auditor", &["p1"]).await;
    let job = app.get("/fleet/jobs?productId=p1", &op).await.body["items"][0].clone();
    let id = job["id"].as_str().unwrap();
    for path in [
        "/fleet/audit/verify".to_string(),
        "/fleet/events?after=0".to_string(),
        format!("/fleet/jobs/{id}?asOf=1"),
        format!("/fleet/jobs/{id}/events"),
        format!("/fleet/jobs/{id}/runs"),
        "/fleet/factories".to_string(),
        "/fleet/weights/p1".to_string(),
    ] {
        let r = app.get(&path, &auditor).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {:?}", r.body);
    }
    let before = app.event_count().await;
    for (method, path) in [
        (reqwest::Method::POST, "/fleet/jobs".to_string()),
        (reqwest::Method::PATCH, format!("/fleet/jobs/{id}")),
        (reqwest::Method::PUT, "/fleet/weights/p1".to_string()),
        (reqwest::Method::PUT, "/fleet/flags".to_string()),
        (reqwest::Method::POST, "/fleet/factories/enroll".to_string()),
        (reqwest::Method::POST, "/fleet/tokens".to_string()),
        (reqwest::Method::POST, "/fleet/claim".to_string()),
        (reqwest::Method::POST, format!("/fleet/jobs/{id}/report")),
    ] {
        let r = app
            .call(
                method.clone(),
                &path,
                Some(&auditor),
                Some(&json!({"x": 1})),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::FORBIDDEN,
            "{method} {path}: {:?}",
            r.body
        );
    }
    assert_eq!(app.event_count().await, before);
}
