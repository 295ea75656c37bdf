//! Preemption behind FLEET_PREEMPTION, and the flags mechanism.

use gigafactory_api::flags::FlagSeeds;
use gigafactory_api::Settings;
use gigafactory_domain::flags::{Flag, FlagMode};
use gigafactory_tests::{spawn_app, spawn_app_on, spawn_app_with, test_settings, TestApp, TestDb};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

struct Scene {
    op: String,
    ft: String,
    low: String,
    low_epoch: u64,
    critical: String,
}

/// A full factory (capacity 1) runs a job of `running_priority` with a checkpoint;
/// then a critical job arrives and the coordinator gets a few rounds.
async fn scene(app: &TestApp, running_priority: &str) -> Scene {
    let op = app.operator(&["p1"]).await;
    let (_, ft) = app.enroll(&op, &["p1"], &[], 1).await;
    heartbeat(app, &ft).await;
    let low = app
        .submit(
            &op,
            json!({"productId": "p1", "title": "victim", "priority": running_priority}),
        )
        .await;
    let low = low["id"].as_str().unwrap().to_string();
    let c = app.claim(&ft).await.unwrap();
    assert_eq!(c["job"]["id"], low.as_str());
    let low_epoch = c["lease"]["epoch"].as_u64().unwrap();
    let r = app
        .post(
            &format!("/fleet/jobs/{low}/report"),
            &ft,
            json!({"epoch": low_epoch, "status": "running", "checkpoint": {"step": 7}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let critical = app
        .submit(
            &op,
            json!({"productId": "p1", "title": "urgent", "priority": "critical"}),
        )
        .await;
    let critical = critical["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(800)).await;
    Scene {
        op,
        ft,
        low,
        low_epoch,
        critical,
    }
}

async fn heartbeat(app: &TestApp, factory: &str) {
    let r = app
        .post(
            "/fleet/factories/heartbeat",
            factory,
            json!({"runningJobIds": []}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
}

async fn set_flag(app: &TestApp, mode: &str) {
    let r = app
        .call(
            Method::PUT,
            "/fleet/flags",
            Some(&app.admin_token),
            Some(&json!({"preemption": mode})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["preemption"], mode);
}

async fn count(app: &TestApp, event_type: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = $1")
        .bind(event_type)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn on_evicts_a_lower_priority_job_and_the_critical_job_lands_on_the_freed_slot() {
    let app = spawn_app().await;
    set_flag(&app, "on").await;
    let s = scene(&app, "low").await;

    let victim = app.get(&format!("/fleet/jobs/{}", s.low), &s.op).await.body;
    assert_eq!(victim["stage"], "queued", "evicted and queued again");
    assert_eq!(victim["attempts"], 0, "preemption uses no attempt");
    assert_eq!(victim["checkpoint"], json!({"step": 7}), "checkpoint kept");
    let runs = app.get(&format!("/fleet/jobs/{}/runs", s.low), &s.op).await;
    assert_eq!(runs.body["items"][0]["outcome"], "preempted");

    let hb = app
        .post(
            "/fleet/factories/heartbeat",
            &s.ft,
            json!({"runningJobIds": [s.low]}),
        )
        .await;
    assert_eq!(
        hb.body["directives"],
        json!([{"type": "stop", "jobId": s.low, "reason": "preempted"}])
    );
    assert_eq!(hb.body["flags"]["preemption"], "on");
    let late = app
        .post(
            &format!("/fleet/jobs/{}/report", s.low),
            &s.ft,
            json!({"epoch": s.low_epoch, "status": "succeeded"}),
        )
        .await;
    assert_eq!(late.code(), "fenced");

    // The freed slot is reserved: another factory does not get the critical job.
    let (_, other) = app.enroll(&s.op, &["p1"], &[], 1).await;
    if let Some(c) = app.claim(&other).await {
        assert_ne!(c["job"]["id"], s.critical.as_str());
        assert_eq!(c["job"]["id"], s.low.as_str());
        assert!(
            c["lease"]["epoch"].as_u64().unwrap() > s.low_epoch,
            "a new epoch"
        );
    }
    let c = app.claim(&s.ft).await.expect("the freed slot");
    assert_eq!(c["job"]["id"], s.critical.as_str());
    assert_eq!(count(&app, "LeasePreempted").await, 1);
}

#[tokio::test]
async fn an_equal_priority_job_is_never_evicted() {
    let app = spawn_app().await;
    set_flag(&app, "on").await;
    let s = scene(&app, "critical").await;
    assert_eq!(
        app.get(&format!("/fleet/jobs/{}", s.low), &s.op).await.body["stage"],
        "running"
    );
    assert_eq!(
        app.get(&format!("/fleet/jobs/{}", s.critical), &s.op)
            .await
            .body["stage"],
        "queued"
    );
    assert_eq!(count(&app, "LeasePreempted").await, 0);
    assert_eq!(count(&app, "JobNominated").await, 0);
}

#[tokio::test]
async fn shadow_records_the_decision_once_and_changes_nothing() {
    let app = spawn_app().await;
    set_flag(&app, "shadow").await;
    let s = scene(&app, "low").await;
    assert_eq!(
        app.get(&format!("/fleet/jobs/{}", s.low), &s.op).await.body["stage"],
        "running"
    );
    assert_eq!(
        app.get(&format!("/fleet/jobs/{}", s.critical), &s.op)
            .await
            .body["stage"],
        "queued"
    );
    assert_eq!(
        count(&app, "PreemptionShadowed").await,
        1,
        "recorded once over many rounds"
    );
    assert_eq!(count(&app, "LeasePreempted").await, 0);
    let events = app
        .get(&format!("/fleet/jobs/{}/events", s.critical), &s.op)
        .await;
    let shadow = &events.body["items"][1];
    assert_eq!(shadow["type"], "PreemptionShadowed");
    assert_eq!(shadow["payload"]["victim"], s.low.as_str());
    // The holder keeps writing on its lease.
    let r = app
        .post(
            &format!("/fleet/jobs/{}/lease/renew", s.low),
            &s.ft,
            json!({"epoch": s.low_epoch}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
}

/// The whole log with ids, hashes and times replaced by placeholders in order of
/// first appearance.
async fn normalised_log(app: &TestApp) -> Vec<String> {
    app.settle().await;
    let rows: Vec<(String, i64, String, String)> = sqlx::query_as(
        "SELECT aggregate_type, sequence, event_type, payload::text FROM positioned_events ORDER BY position",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let mut names: HashMap<String, String> = HashMap::new();
    let mut out = Vec::new();
    for (aggregate, seq, ty, payload) in rows {
        let payload: Value = serde_json::from_str(&payload).unwrap();
        out.push(format!(
            "{aggregate}#{seq} {ty} {}",
            normalise(&payload, &mut names)
        ));
    }
    out
}

fn normalise(v: &Value, names: &mut HashMap<String, String>) -> Value {
    match v {
        Value::String(s) => {
            let is_id = uuid::Uuid::parse_str(s).is_ok()
                || (s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit()));
            if is_id {
                let n = names.len();
                Value::String(
                    names
                        .entry(s.clone())
                        .or_insert_with(|| format!("<id{n}>"))
                        .clone(),
                )
            } else if chrono::DateTime::parse_from_rfc3339(s).is_ok() {
                Value::String("<time>".into())
            } else {
                v.clone()
            }
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| normalise(x, names)).collect()),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| (k.clone(), normalise(x, names)))
                .collect(),
        ),
        _ => v.clone(),
    }
}

#[tokio::test]
async fn off_behaves_exactly_like_a_server_without_preemption() {
    let with_flag_off = spawn_app().await;
    let without = spawn_app_with(
        TestDb::create().await,
        Settings {
            preemption_coordinator: false,
            ..test_settings()
        },
    )
    .await;
    for app in [&with_flag_off, &without] {
        let s = scene(app, "low").await;
        let c = app
            .post(
                &format!("/fleet/jobs/{}/report", s.low),
                &s.ft,
                json!({"epoch": s.low_epoch, "status": "succeeded"}),
            )
            .await;
        assert_eq!(c.status, StatusCode::OK);
        assert_eq!(
            app.claim(&s.ft).await.unwrap()["job"]["id"],
            s.critical.as_str()
        );
    }
    let a = normalised_log(&with_flag_off).await;
    let b = normalised_log(&without).await;
    assert!(a.len() >= 8, "{a:#?}");
    assert_eq!(a, b);
}

#[tokio::test]
async fn flags_are_seeded_by_the_environment_until_the_log_has_them_and_every_process_follows() {
    let seeded = Settings {
        flag_seeds: FlagSeeds(BTreeMap::from([(Flag::Preemption, FlagMode::Shadow)])),
        ..test_settings()
    };
    let a = spawn_app_with(TestDb::create().await, seeded).await;
    let b = spawn_app_on(a.db.clone()).await;
    assert_eq!(
        a.get("/fleet/flags", &a.admin_token).await.body,
        json!({"preemption": "shadow", "budgets": "off"})
    );
    assert_eq!(
        b.get("/fleet/flags", &b.admin_token).await.body["preemption"],
        "off",
        "b has no seed"
    );

    let r = a
        .call(
            Method::PUT,
            "/fleet/flags",
            Some(&a.admin_token),
            Some(&json!({"preemption": "on"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    for app in [&a, &b] {
        assert_eq!(
            app.get("/fleet/flags", &app.admin_token).await.body["preemption"],
            "on",
            "the log wins everywhere"
        );
    }
    let r = a
        .call(
            Method::PUT,
            "/fleet/flags",
            Some(&a.admin_token),
            Some(&json!({"preemption": "off"})),
        )
        .await;
    assert_eq!(r.body["preemption"], "off");
    assert_eq!(
        a.get("/fleet/flags", &a.admin_token).await.body["preemption"],
        "off",
        "no longer the seed"
    );

    // Input and access.
    let before = a.event_count().await;
    let bad = a
        .call(
            Method::PUT,
            "/fleet/flags",
            Some(&a.admin_token),
            Some(&json!({"preemption": "sometimes"})),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad.body["error"]["field"], "preemption");
    let bad = a
        .call(
            Method::PUT,
            "/fleet/flags",
            Some(&a.admin_token),
            Some(&json!({"turbo": "on"})),
        )
        .await;
    assert_eq!(bad.body["error"]["field"], "turbo");
    let star = a.operator(&["*"]).await;
    let narrow = a.operator(&["p1"]).await;
    assert_eq!(a.get("/fleet/flags", &star).await.status, StatusCode::OK);
    assert_eq!(
        a.get("/fleet/flags", &narrow).await.status,
        StatusCode::FORBIDDEN
    );
    let put = a
        .call(
            Method::PUT,
            "/fleet/flags",
            Some(&star),
            Some(&json!({"preemption": "on"})),
        )
        .await;
    assert_eq!(put.status, StatusCode::FORBIDDEN);
    assert_eq!(
        a.event_count().await,
        before + 2,
        "only the two operator tokens were added"
    );
}

#[tokio::test]
async fn shadow_records_what_on_would_do_one_victim_per_critical_job() {
    let app = spawn_app().await;
    set_flag(&app, "shadow").await;
    let op = app.operator(&["p1"]).await;
    for _ in 0..3 {
        let (_, ft) = app.enroll(&op, &["p1"], &[], 1).await;
        heartbeat(&app, &ft).await;
        app.submit(
            &op,
            json!({"productId": "p1", "title": "low", "priority": "low"}),
        )
        .await;
        app.claim(&ft).await.expect("each factory runs a low job");
    }
    app.submit(
        &op,
        json!({"productId": "p1", "title": "urgent", "priority": "critical"}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        count(&app, "PreemptionShadowed").await,
        1,
        "one critical job, one eviction"
    );
    assert_eq!(count(&app, "LeasePreempted").await, 0);
}

#[tokio::test]
async fn an_offline_factory_s_free_slot_does_not_stop_a_preemption() {
    let app = spawn_app().await;
    set_flag(&app, "on").await;
    let op = app.operator(&["p1"]).await;
    // Enrolled, free, but never heard from: offline.
    let (_, silent) = app.enroll(&op, &["p1"], &[], 1).await;
    let s = scene(&app, "low").await;
    assert_eq!(
        app.get(&format!("/fleet/jobs/{}", s.low), &s.op).await.body["stage"],
        "queued",
        "preempted anyway"
    );
    assert_eq!(count(&app, "LeasePreempted").await, 1);
    let _ = silent;
}

#[tokio::test]
async fn a_reserved_slot_holds_when_its_factory_claims_together_with_others() {
    use gigafactory_api::claim::{claim_together, ClaimRequest};
    let app = spawn_app().await;
    set_flag(&app, "on").await;
    let s = scene(&app, "low").await;
    let (other, _) = app.enroll(&s.op, &["p1"], &[], 1).await;
    let ft: String = sqlx::query_scalar(
        "SELECT factory_id::text FROM factory_view WHERE factory_id <> $1::text::uuid",
    )
    .bind(&other)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let request = |factory: &str| ClaimRequest {
        factory_id: gigafactory_domain::FactoryId(factory.parse().unwrap()),
        products: None,
        weights: None,
        ttl_secs: 60,
        max: 1,
        finish: None,
    };
    // The other factory first in line: it still may not take the reserved job.
    let outcomes = claim_together(&app.state, &[request(&other), request(&ft)]).await;
    let job_of = |n: usize| -> Vec<String> {
        outcomes[n]
            .as_ref()
            .expect("served")
            .iter()
            .map(|c| c.job.spec.as_ref().unwrap().job_id.to_string())
            .collect()
    };
    assert_eq!(job_of(1), vec![s.critical.clone()], "the freed slot's job");
    assert!(!job_of(0).contains(&s.critical), "{:?}", job_of(0));
    assert_eq!(
        job_of(0),
        vec![s.low.clone()],
        "the evicted job, queued again"
    );
}
