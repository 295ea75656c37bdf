//! `gigafactory simulate` drives a real fleet to the end (a smoke run; speed is
//! measured by the benchmark, not here).

use gigafactory_api::simulate::{simulate, SimulateOptions};
use gigafactory_tests::spawn_app;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_fleet_runs_every_job_to_an_end() {
    runs_every_job_to_an_end(1, 2, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_fleet_reporting_and_claiming_in_one_call_runs_every_job_to_an_end() {
    runs_every_job_to_an_end(1, 1, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_fleet_on_the_batch_endpoints_runs_every_job_to_an_end() {
    runs_every_job_to_an_end(5, 6, false).await;
}

async fn runs_every_job_to_an_end(batch: usize, capacity: u32, chain: bool) {
    let app = spawn_app().await;
    let summary = simulate(SimulateOptions {
        url: app.base.clone(),
        token: app.admin_token.clone(),
        factories: 4,
        capacity,
        jobs: 40,
        products: vec!["p1".into(), "p2".into()],
        capabilities: vec!["rust".into(), "gpu".into()],
        priorities: [0.1, 0.2, 0.4, 0.3],
        failure_rate: 0.1,
        work: Duration::from_millis(5),
        artifacts: true,
        batch,
        chain,
        progress: false,
    })
    .await
    .unwrap();
    assert!(summary.errors.is_empty(), "{:?}", summary.errors);
    // Concurrent claims of several factories share a transaction (the claim
    // coalescer); one claim call is one factory's grants in one transaction.
    let most_grants_in_one_transaction: i64 = sqlx::query_scalar(
        "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM events
         WHERE event_type = 'LeaseGranted'
         GROUP BY txid, payload::jsonb->'LeaseGranted'->>'factoryId') t",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    if batch > 1 {
        assert!(most_grants_in_one_transaction > 1, "batch claims were used");
    } else {
        assert_eq!(most_grants_in_one_transaction, 1, "one lease per claim");
    }
    // A report and a lease in one transaction: only report-and-claim makes them.
    let reports_with_a_lease: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT txid FROM events GROUP BY txid
         HAVING bool_or(event_type = 'LeaseGranted')
            AND bool_or(event_type IN ('RunSucceeded', 'RunFailed'))) t",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    if chain {
        assert!(reports_with_a_lease > 0, "report-and-claim was used");
    } else {
        assert_eq!(reports_with_a_lease, 0, "reports and claims apart");
    }
    assert!(summary.runs_succeeded >= 30, "{summary:?}");
    assert!(summary.claim_latency_ms.p50 > 0.0);
    let op = app.operator(&["p1", "p2"]).await;
    let mut ended = 0;
    for stage in ["review", "failed"] {
        let r = app
            .get(&format!("/fleet/jobs?stage={stage}&limit=500"), &op)
            .await;
        ended += r.body["items"].as_array().unwrap().len();
    }
    assert_eq!(ended, 40, "every job ran to an end");
    assert_eq!(
        summary.runs_succeeded as usize,
        app.get("/fleet/jobs?stage=review&limit=500", &op)
            .await
            .body["items"]
            .as_array()
            .unwrap()
            .len()
    );
}
