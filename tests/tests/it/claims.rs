//! Claiming: never two leases on one job, capacity, capabilities, order, long poll.

use futures::future::join_all;
use gigafactory_tests::{spawn_app, spawn_app_on};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::Row;
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_many_claimers_lease_every_job_exactly_once() {
    let a = spawn_app().await;
    let b = spawn_app_on(a.db.clone()).await;
    let op = a.operator(&["p1", "p2"]).await;
    const JOBS: usize = 500;
    const CLAIMERS: usize = 20;
    let mut submits = Vec::new();
    for i in 0..JOBS {
        let product = if i % 2 == 0 { "p1" } else { "p2" };
        let priority = ["critical", "high", "normal", "low"][i % 4];
        submits.push(a.submit(
            &op,
            json!({"productId": product, "title": format!("job {i}"), "priority": priority}),
        ));
        if submits.len() == 50 {
            join_all(submits.drain(..)).await;
        }
    }
    join_all(submits).await;

    let mut factories = Vec::new();
    for _ in 0..CLAIMERS {
        factories.push(a.enroll(&op, &["p1", "p2"], &[], 4).await.1);
    }
    let claimers = factories.iter().enumerate().map(|(i, ft)| {
        let app = if i % 2 == 0 { &a } else { &b };
        async move {
            let mut done = Vec::new();
            while let Some(c) = app.claim(ft).await {
                let id = c["job"]["id"].as_str().unwrap().to_string();
                let epoch = c["lease"]["epoch"].as_u64().unwrap();
                let r = app
                    .post(
                        &format!("/fleet/jobs/{id}/report"),
                        ft,
                        json!({"epoch": epoch, "status": "succeeded"}),
                    )
                    .await;
                assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
                done.push(id);
            }
            done
        }
    });
    let results = join_all(claimers).await;
    let claimed: usize = results.iter().map(Vec::len).sum();
    assert_eq!(claimed, JOBS, "every job claimed once through the API");
    assert!(
        results.iter().filter(|r| !r.is_empty()).count() > 1,
        "the work was spread"
    );

    // The log is the judge: exactly one LeaseGranted per job.
    let rows = sqlx::query(
        "SELECT aggregate_id, count(*) FILTER (WHERE event_type = 'LeaseGranted') AS grants
         FROM events WHERE aggregate_type = 'job' GROUP BY aggregate_id",
    )
    .fetch_all(&a.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), JOBS);
    for r in rows {
        assert_eq!(
            r.get::<i64, _>("grants"),
            1,
            "job {} leased more than once",
            r.get::<String, _>("aggregate_id")
        );
    }
}

#[tokio::test]
async fn capacity_capabilities_and_products_limit_claims() {
    let app = spawn_app().await;
    let op = app.operator(&["p1", "p2"]).await;
    let (_, rust1) = app.enroll(&op, &["p1"], &["rust"], 1).await;
    app.submit(
        &op,
        json!({"productId": "p1", "title": "gpu", "requiredCapabilities": ["gpu"]}),
    )
    .await;
    app.submit(&op, json!({"productId": "p2", "title": "other product"}))
        .await;
    assert!(
        app.claim(&rust1).await.is_none(),
        "neither a gpu job nor another product's"
    );

    app.submit(
        &op,
        json!({"productId": "p1", "title": "a", "requiredCapabilities": ["rust"]}),
    )
    .await;
    app.submit(&op, json!({"productId": "p1", "title": "b"}))
        .await;
    assert!(app.claim(&rust1).await.is_some());
    assert!(app.claim(&rust1).await.is_none(), "capacity 1 is full");
}

#[tokio::test]
async fn claims_follow_priority_then_age() {
    let app = spawn_app().await;
    let op = app.operator(&["p1"]).await;
    let (_, ft) = app.enroll(&op, &["p1"], &[], 10).await;
    let mut ids = HashMap::new();
    for (title, priority) in [
        ("low", "low"),
        ("normal-1", "normal"),
        ("critical", "critical"),
        ("normal-2", "normal"),
        ("high", "high"),
    ] {
        let j = app
            .submit(
                &op,
                json!({"productId": "p1", "title": title, "priority": priority}),
            )
            .await;
        ids.insert(j["id"].as_str().unwrap().to_string(), title);
    }
    let mut order = Vec::new();
    while let Some(c) = app.claim(&ft).await {
        order.push(ids[c["job"]["id"].as_str().unwrap()]);
    }
    assert_eq!(order, ["critical", "high", "normal-1", "normal-2", "low"]);
}

#[tokio::test]
async fn long_poll_answers_as_soon_as_a_job_arrives() {
    let app = spawn_app().await;
    let op = app.operator(&["p1"]).await;
    let (_, ft) = app.enroll(&op, &["p1"], &[], 1).await;
    let started = Instant::now();
    let empty = app.post("/fleet/claim", &ft, json!({"waitMs": 300})).await;
    assert_eq!(empty.status, StatusCode::NO_CONTENT);
    assert!(started.elapsed() >= Duration::from_millis(280));

    let waiting = app.post("/fleet/claim", &ft, json!({"waitMs": 20000}));
    let submit = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t = Instant::now();
        app.submit(&op, json!({"productId": "p1", "title": "late"}))
            .await;
        t
    };
    let started = Instant::now();
    let (claim, _) = tokio::join!(waiting, submit);
    assert_eq!(claim.status, StatusCode::OK);
    assert_eq!(claim.body["job"]["title"], "late");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "woken, not timed out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wake_up_reaches_the_one_idle_factory_that_can_run_the_job() {
    // A commit wakes every waiting claim: a job only one of many idle factories may
    // run reaches it at once (well before the 500 ms recheck), and a burst of jobs
    // reaches as many factories.
    let app = spawn_app().await;
    let op = app.operator(&["p1"]).await;
    let mut plain = Vec::new();
    for _ in 0..6 {
        plain.push(app.enroll(&op, &["p1"], &[], 1).await.1);
    }
    let (_, gpu) = app.enroll(&op, &["p1"], &["gpu"], 1).await;
    let wait = |token: String| {
        let app = &app;
        async move {
            let started = Instant::now();
            let r = app
                .post("/fleet/claim", &token, json!({"waitMs": 10000}))
                .await;
            (r, started.elapsed())
        }
    };
    let gpu_claim = wait(gpu.clone());
    let submit = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        app.submit(
            &op,
            json!({"productId": "p1", "title": "gpu only", "requiredCapabilities": ["gpu"]}),
        )
        .await;
    };
    let plain_claims = join_all(plain.iter().cloned().map(|t| {
        let app = &app;
        async move { app.post("/fleet/claim", &t, json!({"waitMs": 1500})).await }
    }));
    let ((gpu_r, gpu_waited), plain_rs, _) = tokio::join!(gpu_claim, plain_claims, submit);
    assert_eq!(gpu_r.status, StatusCode::OK, "{:?}", gpu_r.body);
    assert_eq!(gpu_r.body["job"]["title"], "gpu only");
    assert!(
        gpu_waited < Duration::from_millis(300 + 400),
        "reached the gpu factory through the wake-up, not the recheck: {gpu_waited:?}"
    );
    assert!(plain_rs.iter().all(|r| r.status == StatusCode::NO_CONTENT));

    // A burst: six jobs, six idle factories, each gets one promptly.
    let burst_started = Instant::now();
    let claims = join_all(plain.iter().cloned().map(|t| {
        let app = &app;
        async move { app.post("/fleet/claim", &t, json!({"waitMs": 10000})).await }
    }));
    let submits = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        for i in 0..6 {
            app.submit(
                &op,
                json!({"productId": "p1", "title": format!("burst {i}")}),
            )
            .await;
        }
    };
    let (claims, _) = tokio::join!(claims, submits);
    assert!(claims.iter().all(|r| r.status == StatusCode::OK));
    assert!(
        burst_started.elapsed() < Duration::from_secs(3),
        "{:?}",
        burst_started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_job_wakes_an_idle_fleet_into_a_few_shared_claim_transactions() {
    // Sixteen idle factories wait in long polls. One new job must cost a few claim
    // transactions shared by all of them, not one per waiting factory (as when each
    // woken claim handed the wake-up on to the next, one after the other).
    let app = spawn_app().await;
    let op = app.operator(&["p1"]).await;
    let mut tokens = Vec::new();
    for _ in 0..16 {
        tokens.push(app.enroll(&op, &["p1"], &[], 1).await.1);
    }
    let polls = join_all(tokens.iter().map(|t| {
        let app = &app;
        async move { app.post("/fleet/claim", t, json!({"waitMs": 1500})).await }
    }));
    let observe = async {
        // Every factory has looked once and now waits: no claim batch for 100 ms.
        let mut before = app.state.coalesced.claim_batches();
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = app.state.coalesced.claim_batches();
            if now == before && now > 0 {
                break;
            }
            before = now;
        }
        app.submit(&op, json!({"productId": "p1", "title": "one"}))
            .await;
        // Long enough for sixteen claims one after the other; shorter than the
        // 500 ms recheck of the woken claims.
        tokio::time::sleep(Duration::from_millis(300)).await;
        app.state.coalesced.claim_batches() - before
    };
    let (answers, batches) = tokio::join!(polls, observe);
    let granted = answers
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .count();
    assert_eq!(granted, 1, "one job, one lease");
    assert!(
        (1..=6).contains(&batches),
        "one job for 16 waiting factories took {batches} claim batches"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_of_one_factory_never_exceed_its_capacity() {
    // The factory's claims take turns on its row, and each counts the leases after
    // its turn came: a count read before the wait would miss the previous claim's.
    let app = spawn_app().await;
    let op = app.operator(&["p1"]).await;
    for i in 0..12 {
        app.submit(&op, json!({"productId": "p1", "title": format!("job {i}")}))
            .await;
    }
    for round in 0..3 {
        let (_, ft) = app.enroll(&op, &["p1"], &[], 2).await;
        let claims = join_all((0..6).map(|_| app.post("/fleet/claim", &ft, json!({})))).await;
        let granted = claims.iter().filter(|r| r.status == StatusCode::OK).count();
        assert_eq!(granted, 2, "round {round}: capacity 2, granted {granted}");
    }
}

/// Holds factory `id`'s claims lock as a claim in progress does, until the returned
/// transaction ends.
async fn hold_factory_claims(
    app: &gigafactory_tests::TestApp,
    id: &str,
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = app.pool.begin().await.unwrap();
    gigafactory_projections::factories::lock_for_claims(&mut tx, id.parse().unwrap())
        .await
        .unwrap();
    tx
}

/// POSTs from a task of its own: (status, body).
fn post_in_background(
    app: &gigafactory_tests::TestApp,
    path: &str,
    token: &str,
    body: serde_json::Value,
) -> tokio::task::JoinHandle<(StatusCode, serde_json::Value)> {
    let (http, url, token) = (
        app.http.clone(),
        format!("{}{path}", app.base),
        token.to_string(),
    );
    tokio::spawn(async move {
        let r = http
            .post(url)
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    })
}

#[tokio::test]
async fn a_renewal_waits_for_a_claim_counting_leases_and_judges_by_the_time_after_it() {
    let app = spawn_app().await;
    let op = app.operator(&["p1"]).await;
    app.submit(&op, json!({"productId": "p1", "title": "t"}))
        .await;
    let (factory, ft) = app.enroll(&op, &["p1"], &[], 1).await;
    let r = app
        .post("/fleet/claim", &ft, json!({"leaseTtlSecs": 10}))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let id = r.body["job"]["id"].as_str().unwrap().to_string();
    let epoch = r.body["lease"]["epoch"].as_u64().unwrap();

    // A claim of this factory is counting its leases...
    let claim_in_progress = hold_factory_claims(&app, &factory).await;
    let renewal = post_in_background(
        &app,
        &format!("/fleet/jobs/{id}/lease/renew"),
        &ft,
        json!({"epoch": epoch}),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!renewal.is_finished(), "the renewal waits for the claim");
    // ...and judges the lease expired (its clock is past the expiry).
    app.state.clock.advance(chrono::Duration::seconds(11));
    claim_in_progress.commit().await.unwrap();
    let (status, body) = renewal.await.unwrap();
    assert_eq!(status, StatusCode::CONFLICT, "{body:?}");
    assert_eq!(body["error"]["code"], "fenced");
}

#[tokio::test]
async fn a_claim_that_waited_for_its_factory_dates_the_lease_after_the_wait() {
    let app = spawn_app().await;
    let op = app.operator(&["p1"]).await;
    app.submit(&op, json!({"productId": "p1", "title": "t"}))
        .await;
    let (factory, ft) = app.enroll(&op, &["p1"], &[], 1).await;
    let other_claim = hold_factory_claims(&app, &factory).await;
    let asked = chrono::Utc::now();
    let claim = post_in_background(&app, "/fleet/claim", &ft, json!({"leaseTtlSecs": 60}));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!claim.is_finished(), "one factory's claims take turns");
    other_claim.commit().await.unwrap();
    let (status, body) = claim.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let expires: chrono::DateTime<chrono::Utc> = body["lease"]["expiresAt"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        expires >= asked + chrono::Duration::milliseconds(61_400),
        "the lease runs from the time the claim got its turn, not before: {expires}"
    );
}

/// A claim's candidate read can be older than another claimer's grant. Taking the
/// stream lock of a job granted meanwhile would make its holder's report and
/// renewals wait for that claim to commit: the lock step passes over it unlocked.
#[tokio::test]
async fn the_lock_step_passes_over_a_job_granted_since_the_read_without_locking_it() {
    use gigafactory_domain::scheduler::JobCandidate;
    use gigafactory_domain::{JobId, Priority, ProductId};
    let app = spawn_app().await;
    let op = app.operator(&["p1"]).await;
    let (_, ft) = app.enroll(&op, &["p1"], &[], 1).await;
    let first = app
        .submit(&op, json!({"productId": "p1", "title": "first"}))
        .await;
    let second = app
        .submit(&op, json!({"productId": "p1", "title": "second"}))
        .await;
    let granted = app.claim(&ft).await.expect("a lease");
    assert_eq!(granted["job"]["id"], first["id"]);
    // The candidates as a read from before that grant saw them: both queued.
    let candidate = |job: &serde_json::Value| JobCandidate {
        job_id: JobId(job["id"].as_str().unwrap().parse().unwrap()),
        product_id: ProductId("p1".into()),
        priority: Priority::Normal,
        created_at: chrono::Utc::now(),
        required_capabilities: vec![],
        checkpoint_factory: None,
    };
    let picks = [candidate(&first), candidate(&second)];

    let mut claiming = app.pool.begin().await.unwrap();
    let locked = gigafactory_api::claim::lock_free(&mut claiming, &picks, 1)
        .await
        .unwrap();
    assert_eq!(locked.indexes, vec![1], "the granted job is passed over");
    // The locked job comes loaded from its stream.
    let loaded = &locked.jobs[&format!("p1/{}", second["id"].as_str().unwrap())];
    assert_eq!(loaded.version, 1);
    assert_eq!(loaded.stage.as_str(), "queued");
    // The granted job's stream lock is free for its holder; the queued one is held.
    let mut other = app.pool.acquire().await.unwrap();
    let key = |job: &serde_json::Value| {
        gigafactory_api::commands::stream_lock_key::<gigafactory_domain::job::Job>(&format!(
            "p1/{}",
            job["id"].as_str().unwrap()
        ))
    };
    for (job, free) in [(&first, true), (&second, false)] {
        let got: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))")
                .bind(key(job))
                .fetch_one(&mut *other)
                .await
                .unwrap();
        assert_eq!(got, free, "{}", job["title"]);
    }
    claiming.rollback().await.unwrap();
}

/// The sequencer positions nothing past a transaction id still running. A claim
/// holds its factory's turn through ranking and lock rounds, and takes a
/// transaction id only at its INSERT: meanwhile the log goes on.
#[tokio::test]
async fn a_claim_holding_its_factory_s_turn_does_not_hold_the_log_back() {
    let app = spawn_app().await;
    let op = app.operator(&["p1"]).await;
    let (factory, _) = app.enroll(&op, &["p1"], &[], 1).await;
    app.settle().await;
    let mut claiming = app.pool.begin().await.unwrap();
    let id: uuid::Uuid = factory.parse().unwrap();
    let turn = gigafactory_projections::factories::for_claim_many(&mut claiming, &[id], 0.0)
        .await
        .unwrap();
    assert!(turn.contains_key(&id));
    let xid: Option<String> = sqlx::query_scalar("SELECT pg_current_xact_id_if_assigned()::text")
        .fetch_one(&mut *claiming)
        .await
        .unwrap();
    assert_eq!(xid, None, "no transaction id yet");
    let job = app
        .submit(&op, json!({"productId": "p1", "title": "t"}))
        .await;
    app.settle().await;
    let positioned: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM positioned_events WHERE aggregate_id = $1)",
    )
    .bind(format!("p1/{}", job["id"].as_str().unwrap()))
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(
        positioned,
        "the submit is positioned while the claim is under way"
    );
    claiming.rollback().await.unwrap();
}

/// A claim that found its factory active may still be granting when the factory is
/// revoked: the revocation waits for that claim's turn, so the lease it grants is
/// released with the others.
#[tokio::test]
async fn a_revocation_waits_for_a_claim_under_way_before_releasing_leases() {
    let app = spawn_app().await;
    let op = app.operator(&["p1"]).await;
    let (factory, _) = app.enroll(&op, &["p1"], &[], 1).await;
    let claim_in_progress = hold_factory_claims(&app, &factory).await;
    let revocation = post_in_background(
        &app,
        &format!("/fleet/factories/{factory}/token/revoke"),
        &op,
        json!({}),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !revocation.is_finished(),
        "the revocation waits for the claim"
    );
    claim_in_progress.commit().await.unwrap();
    let (status, body) = revocation.await.unwrap();
    assert_eq!(status, StatusCode::NO_CONTENT, "{body:?}");
}

#[tokio::test]
async fn capabilities_with_quotes_commas_and_braces_are_kept_and_matched_exactly() {
    let app = spawn_app().await;
    let op = app.operator(&["p1"]).await;
    // Written to job_view as an array literal: each character that means something
    // there must come back as it was sent.
    let odd = [r#"say "hi""#, r"back\slash", "a,b", "{braces}", "NULL"];
    let (_, wrong) = app.enroll(&op, &["p1"], &["a"], 1).await;
    let (_, right) = app.enroll(&op, &["p1"], &odd, 1).await;
    let job = app
        .submit(
            &op,
            json!({"productId": "p1", "title": "odd", "requiredCapabilities": odd}),
        )
        .await;
    let id = job["id"].as_str().unwrap();
    let shown = app.get(&format!("/fleet/jobs/{id}"), &op).await;
    assert_eq!(shown.status, StatusCode::OK, "{:?}", shown.body);
    assert_eq!(shown.body["requiredCapabilities"], json!(odd));
    let stored: Vec<String> = sqlx::query_scalar(
        "SELECT unnest(required_capabilities) FROM job_view WHERE job_id = $1::uuid",
    )
    .bind(id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(stored, odd, "the column the claim matches on");
    assert!(app.claim(&wrong).await.is_none(), "\"a\" is not \"a,b\"");
    let claimed = app
        .claim(&right)
        .await
        .expect("the factory with all of them");
    assert_eq!(claimed["job"]["id"], job["id"], "{claimed:?}");
}
