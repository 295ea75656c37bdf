//! Reports decide on the job read model and append in one autocommit statement
//! (`commands::execute_many_optimistic`): the read model is the stream folded, and a
//! stream that moved since the read refuses the append and appends nothing, after
//! which the locked way decides. A submit of a new stream appends the same way
//! (`commands::execute_new_job`).

use gigafactory_api::commands::{execute_new_job, try_on_read_model};
use gigafactory_domain::job::{Job, JobCommand, Report, ReportStatus};
use gigafactory_domain::FactoryId;
use gigafactory_projections::{jobs, log};
use gigafactory_tests::{spawn_app, TestApp};
use reqwest::StatusCode;
use serde_json::json;

/// A factory holding a lease: (operator, factory id, factory token, job id, epoch).
async fn leased(app: &TestApp) -> (String, String, String, String, u64) {
    let op = app.operator(&["p1"]).await;
    let (factory_id, ft) = app.enroll(&op, &["p1"], &[], 2).await;
    app.submit(
        &op,
        json!({"productId": "p1", "title": "t", "maxAttempts": 3}),
    )
    .await;
    let c = app.claim(&ft).await.expect("a lease");
    let id = c["job"]["id"].as_str().unwrap().to_string();
    (
        op,
        factory_id,
        ft,
        id,
        c["lease"]["epoch"].as_u64().unwrap(),
    )
}

fn succeeded(factory_id: &str, epoch: u64, now: chrono::DateTime<chrono::Utc>) -> JobCommand {
    JobCommand::Report {
        factory_id: FactoryId(factory_id.parse().unwrap()),
        epoch,
        status: ReportStatus::Succeeded,
        report: Report {
            progress: None,
            checkpoint: None,
            cost_usd: Some(0.5),
            error: None,
        },
        jitter: 0.5,
        now,
    }
}

#[tokio::test]
async fn a_report_on_a_read_the_stream_has_moved_past_appends_nothing() {
    let app = spawn_app().await;
    let (op, factory_id, ft, id, epoch) = leased(&app).await;
    let stream = format!("p1/{id}");
    let mut conn = app.pool.acquire().await.unwrap();
    let (now, job) = jobs::state_at_clock(&mut conn, id.parse().unwrap(), 0.0)
        .await
        .unwrap();
    let read = job.expect("the job is in the read model");

    // Another write lands between the read and the append.
    let renewed = app
        .post(
            &format!("/fleet/jobs/{id}/lease/renew"),
            &ft,
            json!({"epoch": epoch}),
        )
        .await;
    assert_eq!(renewed.status, StatusCode::OK, "{:?}", renewed.body);
    let before = app.event_count().await;

    let outcome = try_on_read_model(&mut conn, &stream, read, succeeded(&factory_id, epoch, now))
        .await
        .unwrap();
    assert!(outcome.is_none(), "the stale read must not decide");
    assert_eq!(app.event_count().await, before, "nothing appended");

    // The report itself takes the locked way and lands once, after the renewal.
    let r = app
        .post(
            &format!("/fleet/jobs/{id}/report"),
            &ft,
            json!({"epoch": epoch, "status": "succeeded", "costUsd": 0.5}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["stage"], "review");
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
            "RunSucceeded"
        ],
        "{:?}",
        events.body
    );
}

#[tokio::test]
async fn an_optimistic_report_on_a_current_read_appends_once_with_its_read_models() {
    let app = spawn_app().await;
    let (op, factory_id, _ft, id, epoch) = leased(&app).await;
    let stream = format!("p1/{id}");
    let mut conn = app.pool.acquire().await.unwrap();
    let (now, job) = jobs::state_at_clock(&mut conn, id.parse().unwrap(), 0.0)
        .await
        .unwrap();
    let stale = job.clone().unwrap();
    let before = app.event_count().await;
    let done = try_on_read_model(
        &mut conn,
        &stream,
        job.unwrap(),
        succeeded(&factory_id, epoch, now),
    )
    .await
    .unwrap()
    .expect("a current read decides");
    assert_eq!(done.events.len(), 1);
    assert_eq!(app.event_count().await, before + 1);
    // Its read models were written by the same (autocommit) statement.
    let got = app.get(&format!("/fleet/jobs/{id}"), &op).await;
    assert_eq!(got.body["stage"], "review", "{:?}", got.body);
    let runs = app.get(&format!("/fleet/jobs/{id}/runs"), &op).await;
    assert_eq!(
        runs.body["items"][0]["outcome"], "succeeded",
        "{:?}",
        runs.body
    );
    assert_eq!(runs.body["items"][0]["costUsd"], 0.5);
    // A second try on the same read, now stale, conflicts and appends nothing.
    let before = app.event_count().await;
    let refused = try_on_read_model(
        &mut conn,
        &stream,
        stale,
        succeeded(&factory_id, epoch, now),
    )
    .await;
    assert!(
        matches!(refused, Ok(None)),
        "a read one version behind conflicts: {refused:?}"
    );
    assert_eq!(app.event_count().await, before);
}

#[tokio::test]
async fn the_job_read_model_is_the_stream_folded_after_a_whole_lifecycle() {
    let app = spawn_app().await;
    let (op, _factory_id, ft, id, epoch) = leased(&app).await;
    // Renew, fail (back to the queue after a backoff), claim again, succeed, ship.
    let renew = app
        .post(
            &format!("/fleet/jobs/{id}/lease/renew"),
            &ft,
            json!({"epoch": epoch}),
        )
        .await;
    assert_eq!(renew.status, StatusCode::OK);
    let failed = app
        .post(
            &format!("/fleet/jobs/{id}/report"),
            &ft,
            json!({"epoch": epoch, "status": "failed", "error": "boom", "costUsd": 0.1}),
        )
        .await;
    assert_eq!(failed.status, StatusCode::OK, "{:?}", failed.body);
    app.state.clock.advance(chrono::Duration::minutes(10));
    let again = app
        .claim(&ft)
        .await
        .expect("claimed again after the backoff");
    let epoch = again["lease"]["epoch"].as_u64().unwrap();
    for body in [
        json!({"epoch": epoch, "status": "running", "progress": 0.5, "checkpoint": {"step": 2}}),
        json!({"epoch": epoch, "status": "succeeded", "costUsd": 0.2}),
    ] {
        let r = app
            .post(&format!("/fleet/jobs/{id}/report"), &ft, body)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    }
    let shipped = app
        .patch(
            &format!("/fleet/jobs/{id}"),
            &op,
            json!({"stage": "shipped"}),
        )
        .await;
    assert_eq!(shipped.status, StatusCode::OK, "{:?}", shipped.body);

    let mut conn = app.pool.acquire().await.unwrap();
    let stream = format!("p1/{id}");
    let folded = log::load_many::<Job>(&mut conn, std::slice::from_ref(&stream))
        .await
        .unwrap()
        .remove(&stream)
        .unwrap();
    let (_, read) = jobs::state_at_clock(&mut conn, id.parse().unwrap(), 0.0)
        .await
        .unwrap();
    assert!(folded.version >= 7, "the whole lifecycle is in the stream");
    assert_eq!(
        serde_json::to_value(read.unwrap()).unwrap(),
        serde_json::to_value(folded).unwrap()
    );
}

#[tokio::test]
async fn a_batch_with_one_stale_read_appends_nothing_for_any_of_its_jobs() {
    let app = spawn_app().await;
    let (op, factory_id, ft, first, first_epoch) = leased(&app).await;
    app.submit(&op, json!({"productId": "p1", "title": "second"}))
        .await;
    let c = app.claim(&ft).await.expect("a second lease");
    let second = c["job"]["id"].as_str().unwrap().to_string();
    let second_epoch = c["lease"]["epoch"].as_u64().unwrap();
    let ids: Vec<uuid::Uuid> = [&first, &second]
        .iter()
        .map(|i| i.parse().unwrap())
        .collect();
    let mut conn = app.pool.acquire().await.unwrap();
    let (now, mut read) = jobs::states_at_clock(&mut conn, &ids, 0.0).await.unwrap();
    assert_eq!(read.len(), 2);
    // The second job moves on after the read.
    let renewed = app
        .post(
            &format!("/fleet/jobs/{second}/lease/renew"),
            &ft,
            json!({"epoch": second_epoch}),
        )
        .await;
    assert_eq!(renewed.status, StatusCode::OK);
    let before = app.event_count().await;
    let streams = [format!("p1/{first}"), format!("p1/{second}")];
    let commands = vec![
        (streams[0].clone(), succeeded(&factory_id, first_epoch, now)),
        (
            streams[1].clone(),
            succeeded(&factory_id, second_epoch, now),
        ),
    ];
    let jobs = [
        (streams[0].clone(), read.remove(&ids[0]).unwrap()),
        (streams[1].clone(), read.remove(&ids[1]).unwrap()),
    ]
    .into();
    let outcome = gigafactory_api::commands::try_on_read_models(&mut conn, commands, jobs)
        .await
        .unwrap();
    assert!(
        outcome.is_none(),
        "one stale read sends the batch the locked way"
    );
    assert_eq!(
        app.event_count().await,
        before,
        "nothing appended for either job"
    );

    // Through the endpoint, both land.
    let r = app
        .post(
            "/fleet/batch/report",
            &ft,
            json!({"reports": [
                {"jobId": first, "epoch": first_epoch, "status": "succeeded"},
                {"jobId": second, "epoch": second_epoch, "status": "succeeded"}
            ]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(app.event_count().await, before + 2);
}

fn new_job(id: uuid::Uuid, title: &str) -> gigafactory_domain::job::NewJob {
    gigafactory_domain::job::NewJob {
        job_id: gigafactory_domain::JobId(id),
        product_id: gigafactory_domain::ProductId::parse("p1").unwrap(),
        title: title.into(),
        payload: json!({}),
        required_capabilities: vec![],
        priority: gigafactory_domain::Priority::Normal,
        budget_usd: 0.0,
        max_attempts: 3,
        timeout_secs: None,
    }
}

#[tokio::test]
async fn a_submit_appends_with_its_read_models_and_a_stream_that_exists_is_refused() {
    let app = spawn_app().await;
    let op = app.operator(&["p1"]).await;
    let id = uuid::Uuid::now_v7();
    let stream = format!("p1/{id}");
    // Given a new job submitted with no lock, load or transaction,
    let before = app.event_count().await;
    let done = execute_new_job(&app.state, &stream, |now| JobCommand::Submit {
        job: new_job(id, "first"),
        now,
    })
    .await
    .unwrap();
    assert_eq!(done.events.len(), 1);
    assert_eq!(app.event_count().await, before + 1);
    // its read models were written by the append's own statement,
    let got = app.get(&format!("/fleet/jobs/{id}"), &op).await;
    assert_eq!(got.body["stage"], "queued", "{:?}", got.body);
    assert_eq!(got.body["title"], "first");
    let events = app.get(&format!("/fleet/jobs/{id}/events"), &op).await;
    assert_eq!(
        events.body["items"].as_array().unwrap().len(),
        1,
        "{:?}",
        events.body
    );
    // when the same stream is submitted again, the append is refused, the locked way
    // finds the job and refuses it, and nothing is appended or changed.
    let again = execute_new_job(&app.state, &stream, |now| JobCommand::Submit {
        job: new_job(id, "second"),
        now,
    })
    .await;
    assert!(
        matches!(
            again,
            Err(gigafactory_api::commands::ExecError::Domain(
                gigafactory_domain::job::JobError::AlreadyExists
            ))
        ),
        "{again:?}"
    );
    assert_eq!(app.event_count().await, before + 1);
    let got = app.get(&format!("/fleet/jobs/{id}"), &op).await;
    assert_eq!(got.body["title"], "first");
}
