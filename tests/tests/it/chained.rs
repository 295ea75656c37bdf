//! `POST /fleet/jobs/:id/report-and-claim`: the report, then a claim of the next job,
//! in one transaction — each its own event, both durable in one commit; a refused
//! report or claim appends nothing.

use futures::future::join_all;
use gigafactory_tests::{spawn_app, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// An operator, a factory of `capacity` on p1, and `titles.len()` jobs submitted in
/// order of decreasing priority (the first is claimed first).
async fn scene(app: &TestApp, capacity: u32, titles: &[&str]) -> (String, String, Vec<String>) {
    let op = app.operator(&["p1"]).await;
    let priorities = ["critical", "high", "normal", "low"];
    let mut ids = Vec::new();
    for (i, title) in titles.iter().enumerate() {
        let job = app
            .submit(
                &op,
                json!({"productId": "p1", "title": title, "priority": priorities[i.min(3)]}),
            )
            .await;
        ids.push(job["id"].as_str().unwrap().to_string());
    }
    let (_, factory) = app.enroll(&op, &["p1"], &[], capacity).await;
    (op, factory, ids)
}

fn lease_of(claim: &Value) -> (String, u64) {
    (
        claim["job"]["id"].as_str().unwrap().to_string(),
        claim["lease"]["epoch"].as_u64().unwrap(),
    )
}

async fn report_and_claim(
    app: &TestApp,
    factory: &str,
    job: &str,
    body: Value,
) -> (StatusCode, Value) {
    let r = app
        .post(
            &format!("/fleet/jobs/{job}/report-and-claim"),
            factory,
            body,
        )
        .await;
    (r.status, r.body)
}

async fn events_of(app: &TestApp, job: &str) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT event_type, txid::text FROM events WHERE aggregate_id LIKE '%' || $1
         ORDER BY sequence",
    )
    .bind(job)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

/// The report (`reported`'s last event, of `report_type`) and the lease (`leased`'s
/// last event) are each their own event on their own stream, committed together.
async fn one_commit(app: &TestApp, reported: &str, report_type: &str, leased: &str) {
    let report = events_of(app, reported).await;
    let lease = events_of(app, leased).await;
    assert_eq!(report.last().unwrap().0, report_type, "{report:?}");
    assert_eq!(lease.last().unwrap().0, "LeaseGranted", "{lease:?}");
    assert_eq!(
        report.last().unwrap().1,
        lease.last().unwrap().1,
        "one transaction"
    );
}

async fn stage_of(app: &TestApp, job: &str) -> String {
    sqlx::query_scalar("SELECT stage FROM job_view WHERE job_id = $1::text::uuid")
        .bind(job)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_report_ends_the_run_and_the_freed_slot_leases_the_next_job_in_one_commit() {
    let app = spawn_app().await;
    let (_, factory, ids) = scene(&app, 1, &["first", "second"]).await;
    let (job, epoch) = lease_of(&app.claim(&factory).await.unwrap());
    assert_eq!(job, ids[0]);

    let (status, body) = report_and_claim(
        &app,
        &factory,
        &job,
        json!({"report": {"epoch": epoch, "status": "succeeded", "costUsd": 0.25}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["job"]["id"], ids[0].as_str());
    assert_eq!(body["job"]["stage"], "review");
    let (next, next_epoch) = lease_of(&body["next"]);
    assert_eq!(next, ids[1], "capacity 1: the slot the report freed");
    assert!(body["next"]["runId"].is_string() && body["next"]["breakdown"]["total"].is_number());

    one_commit(&app, &ids[0], "RunSucceeded", &ids[1]).await;
    // And the read models have both at the answer.
    assert_eq!(stage_of(&app, &ids[0]).await, "review");
    assert_eq!(stage_of(&app, &ids[1]).await, "leased");
    let outcome: String =
        sqlx::query_scalar("SELECT outcome FROM run_view WHERE job_id = $1::text::uuid")
            .bind(&ids[0])
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(outcome, "succeeded");

    // The new lease is a lease like any: its holder reports on it.
    let r = app
        .post(
            &format!("/fleet/jobs/{next}/report"),
            &factory,
            json!({"epoch": next_epoch, "status": "succeeded"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}

#[tokio::test]
async fn with_nothing_left_to_claim_the_report_is_made_and_next_is_null() {
    let app = spawn_app().await;
    let (_, factory, ids) = scene(&app, 1, &["only"]).await;
    let (job, epoch) = lease_of(&app.claim(&factory).await.unwrap());
    let (status, body) = report_and_claim(
        &app,
        &factory,
        &job,
        json!({"report": {"epoch": epoch, "status": "failed", "error": "boom"}, "claim": {"waitMs": 50}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["next"].is_null(), "{body}");
    assert_eq!(body["job"]["id"], ids[0].as_str());
    let events = events_of(&app, &ids[0]).await;
    assert_eq!(events.last().unwrap().0, "RunFailed", "{events:?}");
}

#[tokio::test]
async fn a_failed_report_frees_the_slot_for_the_next_job() {
    let app = spawn_app().await;
    let (_, factory, ids) = scene(&app, 1, &["first", "second"]).await;
    let (job, epoch) = lease_of(&app.claim(&factory).await.unwrap());
    let (status, body) = report_and_claim(
        &app,
        &factory,
        &job,
        json!({"report": {"epoch": epoch, "status": "failed", "error": "boom", "costUsd": 0.5}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(lease_of(&body["next"]).0, ids[1], "{body}");
    one_commit(&app, &ids[0], "RunFailed", &ids[1]).await;
    assert_ne!(stage_of(&app, &ids[0]).await, "leased");
}

#[tokio::test]
async fn a_progress_report_frees_no_slot_so_a_full_factory_claims_nothing() {
    let app = spawn_app().await;
    let (_, factory, ids) = scene(&app, 1, &["first", "second"]).await;
    let (job, epoch) = lease_of(&app.claim(&factory).await.unwrap());
    let (status, body) = report_and_claim(
        &app,
        &factory,
        &job,
        json!({"report": {"epoch": epoch, "status": "running", "progress": 0.5}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["next"].is_null(), "capacity 1 is still full: {body}");
    assert_eq!(body["job"]["stage"], "running");
    assert_eq!(stage_of(&app, &ids[1]).await, "queued");
    assert_eq!(
        events_of(&app, &ids[0]).await.last().unwrap().0,
        "RunProgressed"
    );
}

#[tokio::test]
async fn a_fenced_or_invalid_report_appends_nothing_and_claims_nothing() {
    let app = spawn_app().await;
    let (_, factory, ids) = scene(&app, 1, &["first", "second"]).await;
    let (job, epoch) = lease_of(&app.claim(&factory).await.unwrap());
    let before = app.event_count().await;

    let (status, body) = report_and_claim(
        &app,
        &factory,
        &job,
        json!({"report": {"epoch": epoch + 1, "status": "succeeded"}}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "fenced");

    let (status, body) = report_and_claim(
        &app,
        &factory,
        &job,
        json!({"report": {"epoch": epoch, "status": "succeeded", "costUsd": -1.0}}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["field"], "report.costUsd");

    let (status, body) = report_and_claim(
        &app,
        &factory,
        &job,
        json!({"report": {"epoch": epoch, "status": "succeeded", "error": "x".repeat(10_001)}}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["field"], "report.error");

    // A bad claim is refused before the report is made.
    for (claim, field) in [
        (json!({"waitMs": 30_001}), "claim.waitMs"),
        (json!({"leaseTtlSecs": 1}), "claim.leaseTtlSecs"),
    ] {
        let (status, body) = report_and_claim(
            &app,
            &factory,
            &job,
            json!({"report": {"epoch": epoch, "status": "succeeded"}, "claim": claim}),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["error"]["field"], field, "{body}");
    }
    let r = app
        .post(
            &format!("/fleet/jobs/{job}/report-and-claim"),
            &factory,
            json!({"claim": {}}),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "no report: {:?}",
        r.body
    );

    assert_eq!(app.event_count().await, before, "nothing appended");
    assert_eq!(stage_of(&app, &ids[0]).await, "leased");
    assert_eq!(stage_of(&app, &ids[1]).await, "queued");
}

#[tokio::test]
async fn a_resent_report_appends_nothing_and_a_job_of_another_product_is_not_found() {
    let app = spawn_app().await;
    let (op, factory, ids) = scene(&app, 1, &["first", "second", "third"]).await;
    let (job, epoch) = lease_of(&app.claim(&factory).await.unwrap());
    let body = json!({"report": {"epoch": epoch, "status": "succeeded"}});
    let (status, first) = report_and_claim(&app, &factory, &job, body.clone()).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(lease_of(&first["next"]).0, ids[1]);
    let reports =
        |events: Vec<(String, String)>| events.iter().filter(|(t, _)| t == "RunSucceeded").count();

    // The answer was lost; the factory sends it again: the report is not made twice
    // (the run already ended), and it frees no slot — the one slot holds the job the
    // first call leased.
    let (status, again) = report_and_claim(&app, &factory, &job, body.clone()).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["job"]["stage"], "review");
    assert_eq!(reports(events_of(&app, &ids[0]).await), 1);
    assert!(again["next"].is_null(), "capacity 1 is full: {again}");
    assert_eq!(stage_of(&app, &ids[2]).await, "queued");

    // A factory of another product does not see the job.
    let op2 = app.operator(&["p2"]).await;
    let (_, other) = app.enroll(&op2, &["p2"], &[], 1).await;
    let (status, body) = report_and_claim(&app, &other, &ids[1], body).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let _ = op;
}

#[tokio::test]
async fn concurrent_factories_chaining_reports_and_claims_lease_every_job_once() {
    let app = spawn_app().await;
    let op = app.operator(&["p1"]).await;
    let jobs = 60;
    for i in 0..jobs {
        app.submit(&op, json!({"productId": "p1", "title": format!("job {i}")}))
            .await;
    }
    let mut factories = Vec::new();
    for _ in 0..8 {
        factories.push(app.enroll(&op, &["p1"], &[], 1).await.1);
    }
    let runs = join_all(factories.iter().map(|factory| {
        let app = &app;
        async move {
            let mut done = Vec::new();
            let mut held = app.claim(factory).await.map(|c| lease_of(&c));
            while let Some((job, epoch)) = held {
                let (status, body) = report_and_claim(
                    app,
                    factory,
                    &job,
                    json!({"report": {"epoch": epoch, "status": "succeeded"}}),
                )
                .await;
                assert_eq!(status, StatusCode::OK, "{body}");
                done.push(job);
                held = (!body["next"].is_null()).then(|| lease_of(&body["next"]));
                if held.is_none() {
                    // Others may have held the rest a moment: look once more.
                    held = app.claim(factory).await.map(|c| lease_of(&c));
                }
            }
            done
        }
    }))
    .await;
    let all: Vec<String> = runs.concat();
    let distinct: std::collections::HashSet<&String> = all.iter().collect();
    assert_eq!(all.len(), jobs, "every job run once");
    assert_eq!(distinct.len(), jobs, "none twice");
    let (granted, in_review): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM events WHERE event_type = 'LeaseGranted'),
                (SELECT count(*) FROM job_view WHERE stage = 'review')",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(granted, jobs as i64, "one lease per job");
    assert_eq!(in_review, jobs as i64);
    // No factory ever held two leases at once (capacity 1): its runs do not overlap.
    let overlapping: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM run_view a JOIN run_view b
           ON a.factory_id = b.factory_id AND a.run_id < b.run_id
          AND a.started_at < b.ended_at AND b.started_at < a.ended_at",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(overlapping, 0);
}

/// Holds `job`'s stream lock (as a claim granting it would) until the transaction
/// ends: claims step over the job meanwhile.
async fn hold_stream_lock(app: &TestApp, job: &str) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = app.pool.begin().await.unwrap();
    let locked: bool = sqlx::query_scalar(
        "SELECT pg_try_advisory_xact_lock(hashtextextended(aggregate_type || '/' || aggregate_id, 0))
         FROM events WHERE aggregate_id LIKE '%' || $1 LIMIT 1",
    )
    .bind(job)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert!(locked);
    tx
}

/// Until `job`'s stage reads `stage`.
async fn until_stage(app: &TestApp, job: &str, stage: &str) {
    for _ in 0..200 {
        if stage_of(app, job).await == stage {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("{job} never reached {stage}");
}

#[tokio::test]
async fn with_the_next_job_held_elsewhere_the_report_commits_and_the_claim_waits_alone() {
    let app = spawn_app().await;
    let (_, factory, ids) = scene(&app, 1, &["first", "second"]).await;
    let (job, epoch) = lease_of(&app.claim(&factory).await.unwrap());
    let held = hold_stream_lock(&app, &ids[1]).await;
    let release = async {
        // The report is durable while the next job is still out of reach.
        until_stage(&app, &ids[0], "review").await;
        assert_eq!(stage_of(&app, &ids[1]).await, "queued");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        held.commit().await.unwrap();
    };
    let ((status, body), ()) = tokio::join!(
        report_and_claim(
            &app,
            &factory,
            &job,
            json!({"report": {"epoch": epoch, "status": "succeeded"}, "claim": {"waitMs": 5000}}),
        ),
        release
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["job"]["stage"], "review");
    assert_eq!(lease_of(&body["next"]).0, ids[1], "{body}");
    // Two transactions: the report's, then the claim's alone.
    let report = events_of(&app, &ids[0]).await;
    let lease = events_of(&app, &ids[1]).await;
    assert_eq!(report.last().unwrap().0, "RunSucceeded");
    assert_eq!(lease.last().unwrap().0, "LeaseGranted");
    assert_ne!(report.last().unwrap().1, lease.last().unwrap().1);
    let reports = report.iter().filter(|(t, _)| t == "RunSucceeded").count();
    assert_eq!(reports, 1, "the retries did not report again: {report:?}");
}

#[tokio::test]
async fn a_claim_failing_after_its_report_committed_answers_the_report() {
    let app = spawn_app().await;
    let (op, _, ids) = scene(&app, 1, &["first", "second"]).await;
    let (factory_id, factory) = app.enroll(&op, &["p1"], &[], 1).await;
    let (job, epoch) = lease_of(&app.claim(&factory).await.unwrap());
    let held = hold_stream_lock(&app, &ids[1]).await;
    let revoke = async {
        // The report is committed and the claim waits: the factory is revoked, so its
        // next attempt is refused (401).
        until_stage(&app, &ids[0], "review").await;
        let r = app
            .post(
                &format!("/fleet/factories/{factory_id}/token/revoke"),
                &op,
                json!({}),
            )
            .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
    };
    let ((status, body), ()) = tokio::join!(
        report_and_claim(
            &app,
            &factory,
            &job,
            json!({"report": {"epoch": epoch, "status": "succeeded"}, "claim": {"waitMs": 5000}}),
        ),
        revoke
    );
    held.commit().await.unwrap();
    assert_eq!(status, StatusCode::OK, "the report is durable: {body}");
    assert_eq!(body["job"]["stage"], "review");
    assert!(body["next"].is_null(), "{body}");
    assert_eq!(stage_of(&app, &ids[1]).await, "queued");
}

#[tokio::test]
async fn a_report_that_cannot_be_appended_after_every_retry_answers_conflict_and_appends_nothing() {
    let app = spawn_app().await;
    let (_, factory, ids) = scene(&app, 1, &["first", "second"]).await;
    let (job, epoch) = lease_of(&app.claim(&factory).await.unwrap());
    // Every append of a run's success conflicts, as if another writer got there first.
    sqlx::raw_sql(
        "CREATE FUNCTION test_conflict() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.event_type = 'RunSucceeded' THEN
             RAISE unique_violation USING MESSAGE = 'test: a concurrent append';
           END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER test_conflict BEFORE INSERT ON events
           FOR EACH ROW EXECUTE FUNCTION test_conflict();",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let before = app.event_count().await;
    let body = json!({"report": {"epoch": epoch, "status": "succeeded"}});
    let (status, answer) = report_and_claim(&app, &factory, &job, body.clone()).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert_eq!(answer["error"]["code"], "conflict");
    assert_eq!(app.event_count().await, before, "nothing appended");
    assert_eq!(stage_of(&app, &ids[0]).await, "leased");
    assert_eq!(stage_of(&app, &ids[1]).await, "queued");

    // As the answer says: sent again (the conflict gone), it is made.
    sqlx::raw_sql("DROP TRIGGER test_conflict ON events")
        .execute(&app.pool)
        .await
        .unwrap();
    let (status, answer) = report_and_claim(&app, &factory, &job, body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(lease_of(&answer["next"]).0, ids[1]);
}
