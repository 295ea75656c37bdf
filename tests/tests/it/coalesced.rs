//! Claims of many factories served together (`claim::claim_together`, what the
//! claim coalescer runs): each factory is dealt jobs as it would be alone — its
//! capacity, capabilities, products, affinity — and no job is leased twice.

use gigafactory_api::claim::{claim_together, ClaimRequest, Claimed};
use gigafactory_api::error::ApiError;
use gigafactory_domain::FactoryId;
use gigafactory_tests::{spawn_app, TestApp};
use reqwest::StatusCode;
use serde_json::json;
use std::collections::HashSet;
use std::time::Duration;

fn request(factory: &str, max: usize) -> ClaimRequest {
    ClaimRequest {
        factory_id: FactoryId(factory.parse().unwrap()),
        products: None,
        weights: None,
        ttl_secs: 60,
        max,
        finish: None,
    }
}

fn titles(outcome: &Result<Vec<Claimed>, ApiError>) -> Vec<String> {
    let claimed = outcome.as_ref().expect("served");
    let mut titles: Vec<String> = claimed
        .iter()
        .map(|c| c.job.spec.as_ref().unwrap().title.clone())
        .collect();
    titles.sort();
    titles
}

async fn submit(app: &TestApp, op: &str, product: &str, title: &str, caps: &[&str]) -> String {
    let job = app
        .submit(
            op,
            json!({"productId": product, "title": title, "requiredCapabilities": caps}),
        )
        .await;
    job["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn factories_of_different_profiles_claiming_together_get_what_each_would_alone() {
    let app = spawn_app().await;
    let op = app.operator(&["p1", "p2"]).await;
    let (a, _) = app.enroll(&op, &["p1"], &[], 1).await;
    let (b, _) = app.enroll(&op, &["p1"], &[], 1).await;
    let (gpu, _) = app.enroll(&op, &["p1"], &["gpu"], 2).await;
    let (other, _) = app.enroll(&op, &["p2"], &[], 1).await;
    for title in ["n1", "n2", "n3"] {
        submit(&app, &op, "p1", title, &[]).await;
    }
    submit(&app, &op, "p1", "needs gpu", &["gpu"]).await;
    submit(&app, &op, "p2", "p2 job", &[]).await;

    // `a` twice: its second claim waits for the first (one factory per transaction)
    // and finds its capacity of 1 full.
    let requests = [
        request(&a, 1),
        request(&b, 1),
        request(&gpu, 2),
        request(&other, 1),
        request(&a, 1),
    ];
    let outcomes = claim_together(&app.state, &requests).await;
    let dealt: Vec<Vec<String>> = outcomes.iter().map(titles).collect();
    assert_eq!(dealt[0].len(), 1, "{dealt:?}");
    assert_eq!(dealt[1].len(), 1, "{dealt:?}");
    assert_eq!(dealt[2].len(), 2, "{dealt:?}");
    assert!(
        dealt[2].contains(&"needs gpu".to_string()),
        "the gpu job goes to the one factory that may run it: {dealt:?}"
    );
    assert_eq!(dealt[3], vec!["p2 job".to_string()], "{dealt:?}");
    assert!(dealt[4].is_empty(), "capacity 1 is full: {dealt:?}");
    assert!(
        !dealt[0..2].concat().contains(&"needs gpu".to_string()),
        "{dealt:?}"
    );
    let all: Vec<String> = dealt.concat();
    let distinct: HashSet<&String> = all.iter().collect();
    assert_eq!(all.len(), 5, "every job leased: {dealt:?}");
    assert_eq!(distinct.len(), 5, "none twice: {dealt:?}");

    // The leases are in the log, one LeaseGranted per job, each to its factory.
    let granted: Vec<(String, String)> = sqlx::query_as(
        "SELECT aggregate_id, payload::jsonb->'LeaseGranted'->>'factoryId' FROM events
         WHERE event_type = 'LeaseGranted'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(granted.len(), 5, "{granted:?}");
    let streams: HashSet<&String> = granted.iter().map(|(s, _)| s).collect();
    assert_eq!(streams.len(), 5);
    let holders: HashSet<&String> = granted.iter().map(|(_, f)| f).collect();
    assert_eq!(
        holders,
        [&a, &b, &gpu, &other].into_iter().collect::<HashSet<_>>()
    );

    // And the read model agrees: each factory holds what it was dealt.
    for (factory, want) in [(&a, 1i64), (&b, 1), (&gpu, 2), (&other, 1)] {
        let held: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM job_view WHERE lease_factory_id = $1::text::uuid",
        )
        .bind(factory)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        assert_eq!(held, want, "{factory}");
    }
}

#[tokio::test]
async fn a_job_goes_to_the_factory_holding_its_checkpoint_when_both_claim_together() {
    let app = spawn_app().await;
    let op = app.operator(&["p1"]).await;
    let (a, _) = app.enroll(&op, &["p1"], &[], 1).await;
    let (b, b_token) = app.enroll(&op, &["p1"], &[], 1).await;
    let started = submit(&app, &op, "p1", "started", &[]).await;
    let c = app.claim(&b_token).await.expect("b claims");
    assert_eq!(c["job"]["id"], started.as_str());
    let epoch = c["lease"]["epoch"].as_u64().unwrap();
    let r = app
        .post(
            &format!("/fleet/jobs/{started}/lease/release"),
            &b_token,
            json!({"epoch": epoch, "checkpoint": {"step": 3}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    // Newer and otherwise equal: without affinity, `a` (first in line) would be
    // dealt the older job, which `b` holds the checkpoint of.
    tokio::time::sleep(Duration::from_millis(5)).await;
    submit(&app, &op, "p1", "fresh", &[]).await;

    let outcomes = claim_together(&app.state, &[request(&a, 1), request(&b, 1)]).await;
    assert_eq!(titles(&outcomes[0]), vec!["fresh".to_string()]);
    assert_eq!(titles(&outcomes[1]), vec!["started".to_string()]);
}

#[tokio::test]
async fn a_revoked_factory_among_claimers_is_refused_alone() {
    let app = spawn_app().await;
    let op = app.operator(&["p1"]).await;
    let (a, _) = app.enroll(&op, &["p1"], &[], 1).await;
    let (gone, _) = app.enroll(&op, &["p1"], &[], 1).await;
    let r = app
        .post(
            &format!("/fleet/factories/{gone}/token/revoke"),
            &op,
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
    submit(&app, &op, "p1", "only", &[]).await;
    let unknown = uuid::Uuid::now_v7().to_string();

    let outcomes = claim_together(
        &app.state,
        &[request(&gone, 1), request(&unknown, 1), request(&a, 1)],
    )
    .await;
    assert!(matches!(outcomes[0], Err(ApiError::Unauthorized)));
    assert!(matches!(outcomes[1], Err(ApiError::Unauthorized)));
    assert_eq!(titles(&outcomes[2]), vec!["only".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_factories_claiming_at_once_over_http_lease_every_job_once() {
    // Through the real router: 24 factories claim (and claim again) at once, so the
    // coalescer serves them in shared transactions.
    let app = spawn_app().await;
    let op = app.operator(&["p1"]).await;
    let mut tokens = Vec::new();
    for _ in 0..24 {
        tokens.push(app.enroll(&op, &["p1"], &[], 2).await.1);
    }
    for i in 0..40 {
        submit(&app, &op, "p1", &format!("job {i}"), &[]).await;
    }
    let claims = futures::future::join_all(tokens.iter().map(|t| {
        let app = &app;
        async move {
            let mut got = Vec::new();
            for _ in 0..3 {
                let r = app.post("/fleet/claim", t, json!({})).await;
                match r.status {
                    StatusCode::OK => got.push(r.body["job"]["id"].as_str().unwrap().to_string()),
                    StatusCode::NO_CONTENT => {}
                    s => panic!("claim answered {s}: {:?}", r.body),
                }
            }
            got
        }
    }))
    .await;
    assert!(
        claims.iter().all(|c| c.len() <= 2),
        "capacity 2 each: {claims:?}"
    );
    let all: Vec<&String> = claims.iter().flatten().collect();
    let distinct: HashSet<&&String> = all.iter().collect();
    assert_eq!(distinct.len(), all.len(), "no job leased twice");
    assert_eq!(all.len(), 40, "every job leased (48 slots for 40 jobs)");
}

/// Two factories' reports on one job in one round: the holder's is made, the other's
/// is refused as fenced (the job exists; it is not that factory's lease).
#[tokio::test]
async fn two_reports_on_one_job_in_one_round_make_the_holder_s_and_fence_the_other() {
    use gigafactory_api::claim::{serve_claims, Finish};
    use gigafactory_domain::job::{JobCommand, Report, ReportStatus};
    let app = spawn_app().await;
    let op = app.operator(&["p1"]).await;
    let job = submit(&app, &op, "p1", "contested", &[]).await;
    let (holder, holder_token) = app.enroll(&op, &["p1"], &[], 1).await;
    let (other, _) = app.enroll(&op, &["p1"], &[], 1).await;
    let claimed = app.claim(&holder_token).await.expect("leased");
    let epoch = claimed["lease"]["epoch"].as_u64().unwrap();
    let stream: String = sqlx::query_scalar(
        "SELECT aggregate_id FROM events WHERE aggregate_id LIKE '%' || $1 LIMIT 1",
    )
    .bind(&job)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let reporting = |factory: &str| {
        let factory_id = FactoryId(factory.parse().unwrap());
        ClaimRequest {
            finish: Some(Finish {
                stream: stream.clone(),
                command: std::sync::Arc::new(move |now| JobCommand::Report {
                    factory_id,
                    epoch,
                    status: ReportStatus::Succeeded,
                    report: Report::default(),
                    jitter: 0.5,
                    now,
                }),
            }),
            ..request(factory, 1)
        }
    };
    let outcomes = serve_claims(&app.state, &[reporting(&holder), reporting(&other)]).await;
    let made = outcomes[0].as_ref().expect("the holder's report");
    let finished = made.finished.as_ref().expect("made");
    assert_eq!(finished.events.len(), 1);
    match &outcomes[1] {
        Err(ApiError::Fenced { .. }) => {}
        other => panic!("the other factory's report: {other:?}"),
    }
    let reports: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'RunSucceeded'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(reports, 1);
}
