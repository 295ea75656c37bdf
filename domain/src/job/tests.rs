//! Given / when / then tests of the job aggregate (cqrs-es `TestFramework`).

use super::*;
use crate::{FactoryId, JobId, Priority, ProductId, RunId, Stage};
use chrono::{DateTime, Duration, TimeZone, Utc};
use cqrs_es::test::TestFramework;
use cqrs_es::Aggregate;
use serde_json::json;
use uuid::Uuid;

type JobTest = TestFramework<Job>;

fn t(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
}

fn new_job(max_attempts: u32) -> NewJob {
    NewJob {
        job_id: JobId(Uuid::from_u128(7)),
        product_id: ProductId("p1".into()),
        title: "build it".into(),
        payload: json!({"x": 1}),
        required_capabilities: vec!["rust".into()],
        priority: Priority::Normal,
        budget_usd: 1.5,
        max_attempts,
        timeout_secs: None,
    }
}

const FACTORY: FactoryId = FactoryId(Uuid::from_u128(99));
const RUN: RunId = RunId(Uuid::from_u128(5));

fn submitted(max_attempts: u32) -> JobEvent {
    JobEvent::JobSubmitted {
        job: new_job(max_attempts),
        at: t(0),
    }
}

fn granted(epoch: u64, at: i64) -> JobEvent {
    JobEvent::LeaseGranted {
        epoch,
        run_id: RUN,
        factory_id: FACTORY,
        ttl_secs: 60,
        expires_at: t(at + 60),
        at: t(at),
    }
}

fn grant(now: i64) -> JobCommand {
    JobCommand::GrantLease {
        run_id: RUN,
        factory_id: FACTORY,
        factory_capabilities: vec!["rust".into(), "gpu".into()],
        ttl_secs: 60,
        now: t(now),
    }
}

fn report(epoch: u64, status: ReportStatus, now: i64) -> JobCommand {
    JobCommand::Report {
        factory_id: FACTORY,
        epoch,
        status,
        report: Report::default(),
        jitter: 0.0,
        now: t(now),
    }
}

#[tokio::test]
async fn submit_queues_the_job() {
    JobTest::with(())
        .given_no_previous_events()
        .when_async(JobCommand::Submit {
            job: new_job(3),
            now: t(0),
        })
        .await
        .then_expect_events(vec![submitted(3)]);
}

#[tokio::test]
async fn submit_names_the_bad_field() {
    let mut job = new_job(3);
    job.max_attempts = 0;
    let err = JobTest::with(())
        .given_no_previous_events()
        .when_async(JobCommand::Submit { job, now: t(0) })
        .await
        .inspect_result()
        .unwrap_err();
    assert!(matches!(
        err,
        JobError::Invalid {
            field: "maxAttempts",
            ..
        }
    ));
}

#[tokio::test]
async fn lease_epoch_is_the_version_at_grant() {
    JobTest::with(())
        .given(vec![submitted(3)])
        .when_async(grant(1))
        .await
        .then_expect_events(vec![granted(2, 1)]);
}

#[tokio::test]
async fn incapable_factory_cannot_take_the_lease() {
    let err = JobTest::with(())
        .given(vec![submitted(3)])
        .when_async(JobCommand::GrantLease {
            run_id: RUN,
            factory_id: FACTORY,
            factory_capabilities: vec![],
            ttl_secs: 60,
            now: t(1),
        })
        .await
        .inspect_result()
        .unwrap_err();
    assert_eq!(err, JobError::NotCapable);
}

#[tokio::test]
async fn renew_keeps_the_epoch_and_moves_expiry() {
    JobTest::with(())
        .given(vec![submitted(3), granted(2, 1)])
        .when_async(JobCommand::RenewLease {
            factory_id: FACTORY,
            epoch: 2,
            ttl_secs: None,
            now: t(30),
        })
        .await
        .then_expect_events(vec![JobEvent::LeaseRenewed {
            epoch: 2,
            expires_at: t(90),
            at: t(30),
        }]);
}

#[tokio::test]
async fn stale_epoch_is_fenced() {
    let err = JobTest::with(())
        .given(vec![submitted(3), granted(2, 1)])
        .when_async(JobCommand::RenewLease {
            factory_id: FACTORY,
            epoch: 1,
            ttl_secs: None,
            now: t(30),
        })
        .await
        .inspect_result()
        .unwrap_err();
    assert!(matches!(
        err,
        JobError::Fenced {
            current: CurrentState {
                stage: Stage::Leased,
                epoch: Some(2)
            }
        }
    ));
}

#[tokio::test]
async fn expired_lease_is_fenced_before_the_sweeper_runs() {
    let err = JobTest::with(())
        .given(vec![submitted(3), granted(2, 1)])
        .when_async(report(2, ReportStatus::Running, 61))
        .await
        .inspect_result()
        .unwrap_err();
    assert!(matches!(err, JobError::Fenced { .. }));
}

#[tokio::test]
async fn success_moves_to_review() {
    JobTest::with(())
        .given(vec![submitted(3), granted(2, 1)])
        .when_async(JobCommand::Report {
            factory_id: FACTORY,
            epoch: 2,
            status: ReportStatus::Succeeded,
            report: Report {
                cost_usd: Some(0.25),
                ..Default::default()
            },
            jitter: 0.0,
            now: t(10),
        })
        .await
        .then_expect_events(vec![JobEvent::RunSucceeded {
            epoch: 2,
            run_id: RUN,
            cost_usd: Some(0.25),
            checkpoint: None,
            at: t(10),
        }]);
}

#[tokio::test]
async fn resent_final_report_appends_nothing() {
    let success = JobEvent::RunSucceeded {
        epoch: 2,
        run_id: RUN,
        cost_usd: None,
        checkpoint: None,
        at: t(10),
    };
    JobTest::with(())
        .given(vec![submitted(3), granted(2, 1), success.clone()])
        .when_async(report(2, ReportStatus::Succeeded, 11))
        .await
        .then_expect_events(vec![]);
    // A different report on the ended run is fenced.
    let err = JobTest::with(())
        .given(vec![submitted(3), granted(2, 1), success])
        .when_async(report(2, ReportStatus::Failed, 11))
        .await
        .inspect_result()
        .unwrap_err();
    assert!(matches!(err, JobError::Fenced { .. }));
}

#[tokio::test]
async fn failure_with_attempts_left_requeues_with_backoff() {
    JobTest::with(())
        .given(vec![submitted(2), granted(2, 1)])
        .when_async(report(2, ReportStatus::Failed, 10))
        .await
        .then_expect_events(vec![JobEvent::RunFailed {
            epoch: 2,
            run_id: RUN,
            cost_usd: None,
            error: None,
            checkpoint: None,
            attempts: 1,
            retry_at: Some(t(10) + Duration::milliseconds(500)),
            at: t(10),
        }]);
}

#[tokio::test]
async fn expiry_with_no_attempts_left_fails_the_job() {
    JobTest::with(())
        .given(vec![submitted(1), granted(2, 1)])
        .when_async(JobCommand::ExpireLease {
            jitter: 0.0,
            now: t(61),
        })
        .await
        .then_expect_events(vec![JobEvent::LeaseExpired {
            epoch: 2,
            run_id: RUN,
            attempts: 1,
            retry_at: None,
            at: t(61),
        }]);
}

#[tokio::test]
async fn live_lease_is_not_expired() {
    let err = JobTest::with(())
        .given(vec![submitted(1), granted(2, 1)])
        .when_async(JobCommand::ExpireLease {
            jitter: 0.0,
            now: t(60),
        })
        .await
        .inspect_result()
        .unwrap_err();
    assert_eq!(err, JobError::NotExpired);
}

#[tokio::test]
async fn ship_only_from_review() {
    let err = JobTest::with(())
        .given(vec![submitted(1)])
        .when_async(JobCommand::Ship { now: t(5) })
        .await
        .inspect_result()
        .unwrap_err();
    assert!(matches!(
        err,
        JobError::InvalidStage {
            current: CurrentState {
                stage: Stage::Queued,
                ..
            },
            ..
        }
    ));
}

#[tokio::test]
async fn timeout_bounds_renewals() {
    let mut job = new_job(3);
    job.timeout_secs = Some(100);
    JobTest::with(())
        .given(vec![
            JobEvent::JobSubmitted { job, at: t(0) },
            granted(2, 1),
        ])
        .when_async(JobCommand::RenewLease {
            factory_id: FACTORY,
            epoch: 2,
            ttl_secs: None,
            now: t(59),
        })
        .await
        .then_expect_events(vec![JobEvent::LeaseRenewed {
            epoch: 2,
            expires_at: t(101),
            at: t(59),
        }]);
}

#[test]
fn release_requeues_at_once_and_keeps_the_checkpoint() {
    let mut job = Job::default();
    for e in [
        submitted(3),
        granted(2, 1),
        JobEvent::LeaseReleased {
            epoch: 2,
            run_id: RUN,
            checkpoint: Some(json!({"step": 4})),
            at: t(9),
        },
    ] {
        job.apply(e);
    }
    assert_eq!(job.stage, Stage::Queued);
    assert_eq!(job.attempts, 0);
    assert_eq!(job.checkpoint, Some(json!({"step": 4})));
    assert!(job.lease.is_none());
}

#[tokio::test]
async fn cancel_ends_a_held_lease() {
    JobTest::with(())
        .given(vec![submitted(3), granted(2, 1)])
        .when_async(JobCommand::Cancel {
            reason: None,
            now: t(3),
        })
        .await
        .then_expect_events(vec![JobEvent::JobCancelled {
            reason: None,
            at: t(3),
        }]);
}

#[tokio::test]
async fn another_factory_cannot_write_on_the_lease() {
    let err = JobTest::with(())
        .given(vec![submitted(3), granted(2, 1)])
        .when_async(JobCommand::RenewLease {
            factory_id: FactoryId(Uuid::from_u128(1234)),
            epoch: 2,
            ttl_secs: None,
            now: t(5),
        })
        .await
        .inspect_result()
        .unwrap_err();
    assert!(matches!(err, JobError::Fenced { .. }));
}

#[tokio::test]
async fn a_job_in_review_can_be_cancelled_but_not_a_shipped_one() {
    let success = JobEvent::RunSucceeded {
        epoch: 2,
        run_id: RUN,
        cost_usd: None,
        checkpoint: None,
        at: t(10),
    };
    JobTest::with(())
        .given(vec![submitted(3), granted(2, 1), success.clone()])
        .when_async(JobCommand::Cancel {
            reason: Some("rejected".into()),
            now: t(20),
        })
        .await
        .then_expect_events(vec![JobEvent::JobCancelled {
            reason: Some("rejected".into()),
            at: t(20),
        }]);
    let err = JobTest::with(())
        .given(vec![
            submitted(3),
            granted(2, 1),
            success,
            JobEvent::JobShipped { at: t(30) },
        ])
        .when_async(JobCommand::Cancel {
            reason: None,
            now: t(40),
        })
        .await
        .inspect_result()
        .unwrap_err();
    assert!(matches!(err, JobError::InvalidStage { .. }));
}

#[tokio::test]
async fn preemption_ends_the_lease_without_using_an_attempt_and_keeps_the_checkpoint() {
    let victim_for = JobId(Uuid::from_u128(77));
    let mut job = Job::default();
    for e in [
        submitted(1),
        granted(2, 1),
        JobEvent::RunProgressed {
            epoch: 2,
            progress: None,
            checkpoint: Some(json!({"k": 1})),
            at: t(2),
        },
    ] {
        job.apply(e);
    }
    JobTest::with(())
        .given(vec![
            submitted(1),
            granted(2, 1),
            JobEvent::RunProgressed {
                epoch: 2,
                progress: None,
                checkpoint: Some(json!({"k": 1})),
                at: t(2),
            },
        ])
        .when_async(JobCommand::PreemptLease {
            for_job: victim_for,
            for_priority: Priority::Critical,
            holder: FACTORY,
            reason: "r".into(),
            now: t(3),
        })
        .await
        .then_expect_events(vec![JobEvent::LeasePreempted {
            epoch: 2,
            run_id: RUN,
            for_job: victim_for,
            reason: "r".into(),
            at: t(3),
        }]);
    job.apply(JobEvent::LeasePreempted {
        epoch: 2,
        run_id: RUN,
        for_job: victim_for,
        reason: "r".into(),
        at: t(3),
    });
    assert_eq!(job.stage, Stage::Queued);
    assert_eq!(job.attempts, 0);
    assert_eq!(job.checkpoint, Some(json!({"k": 1})));
    // Its late report is fenced.
    let (_, r) = (0, job.clone());
    assert!(r.lease.is_none());
}

#[tokio::test]
async fn a_nominated_job_goes_only_to_its_factory_until_the_nomination_expires() {
    let nominated = JobEvent::JobNominated {
        factory_id: FactoryId(Uuid::from_u128(5)),
        victim: JobId(Uuid::from_u128(6)),
        until: t(30),
        at: t(1),
    };
    let err = JobTest::with(())
        .given(vec![submitted(3), nominated.clone()])
        .when_async(grant(10))
        .await
        .inspect_result()
        .unwrap_err();
    assert!(matches!(err, JobError::InvalidStage { .. }));
    JobTest::with(())
        .given(vec![submitted(3), nominated])
        .when_async(grant(31))
        .await
        .then_expect_events(vec![granted(3, 31)]);
}

#[tokio::test]
async fn shadow_preemption_is_recorded_once_per_victim() {
    let victim = JobId(Uuid::from_u128(6));
    let shadowed = JobEvent::PreemptionShadowed {
        victim,
        factory_id: FACTORY,
        reason: "r".into(),
        at: t(1),
    };
    JobTest::with(())
        .given(vec![submitted(3), shadowed])
        .when_async(JobCommand::RecordShadowPreemption {
            victim,
            factory_id: FACTORY,
            reason: "r".into(),
            now: t(2),
        })
        .await
        .then_expect_events(vec![]);
}

#[tokio::test]
async fn a_stale_preemption_decision_is_refused() {
    let given = vec![submitted(3), granted(2, 1)];
    // Another holder by now, or a priority no longer strictly lower.
    for (holder, for_priority) in [
        (FactoryId(Uuid::from_u128(4242)), Priority::Critical),
        (FACTORY, Priority::Normal),
    ] {
        let err = JobTest::with(())
            .given(given.clone())
            .when_async(JobCommand::PreemptLease {
                for_job: JobId(Uuid::from_u128(1)),
                for_priority,
                holder,
                reason: "r".into(),
                now: t(3),
            })
            .await
            .inspect_result()
            .unwrap_err();
        assert!(matches!(err, JobError::InvalidStage { .. }));
    }
}
