//! Property test: random command sequences through the job aggregate keep the
//! invariants of SPEC §4 on every step:
//! (1) at most one lease, held only in `leased`/`running`, epoch = grant version;
//! (2) a write with a stale epoch changes nothing;
//! (8) a rejected command changes nothing (no events).

use super::*;
use crate::{FactoryId, JobId, Priority, ProductId, RunId, Stage};
use chrono::{DateTime, TimeZone, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use proptest::prelude::*;
use uuid::Uuid;

fn t(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
}

#[derive(Debug, Clone)]
enum Step {
    Grant(u8),
    Renew(bool),
    Release(bool),
    Report(bool, u8),
    Expire,
    Ship,
    Cancel,
    Reprioritise(u8),
    Wait(u16),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0u8..3).prop_map(Step::Grant),
        any::<bool>().prop_map(Step::Renew),
        any::<bool>().prop_map(Step::Release),
        (any::<bool>(), 0u8..3).prop_map(|(s, r)| Step::Report(s, r)),
        Just(Step::Expire),
        Just(Step::Ship),
        Just(Step::Cancel),
        (0u8..4).prop_map(Step::Reprioritise),
        (0u16..120).prop_map(Step::Wait),
    ]
}

fn execute(job: &Job, cmd: JobCommand) -> (Job, Result<Vec<JobEvent>, JobError>) {
    let mut next = job.clone();
    let sink = EventSink::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let result = rt.block_on(async {
        let r = next.handle(cmd, &(), &sink).await;
        r.map(|_| ())
    });
    let events = rt.block_on(sink.collect());
    (next, result.map(|_| events))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn job_invariants_hold_on_every_step(steps in proptest::collection::vec(step(), 1..40), max_attempts in 1u32..4) {
        let mut job = Job::default();
        job.apply(JobEvent::JobSubmitted {
            job: NewJob {
                job_id: JobId(Uuid::from_u128(1)),
                product_id: ProductId("p".into()),
                title: "t".into(),
                payload: serde_json::Value::Null,
                required_capabilities: vec![],
                priority: Priority::Normal,
                budget_usd: 0.0,
                max_attempts,
                timeout_secs: None,
            },
            at: t(0),
        });
        let mut clock = 0i64;
        let mut run = 0u128;
        for s in steps {
            let epoch_now = job.lease.as_ref().map(|l| l.epoch);
            // A "stale" epoch: anything that is not the current lease's.
            let pick = |fresh: bool| if fresh { epoch_now.unwrap_or(1) } else { epoch_now.map(|e| e + 1).unwrap_or(1) + 7 };
            let now = t(clock);
            let holder = job.lease.as_ref().map(|l| l.factory_id).unwrap_or_default();
            let cmd = match s {
                Step::Wait(d) => { clock += i64::from(d); continue; }
                Step::Grant(f) => { run += 1; JobCommand::GrantLease { run_id: RunId(Uuid::from_u128(run)), factory_id: FactoryId(Uuid::from_u128(u128::from(f))), factory_capabilities: vec![], ttl_secs: 30, now } }
                Step::Renew(fresh) => JobCommand::RenewLease { factory_id: holder, epoch: pick(fresh), ttl_secs: Some(30), now },
                Step::Release(fresh) => JobCommand::ReleaseLease { factory_id: holder, epoch: pick(fresh), checkpoint: None, now },
                Step::Report(fresh, st) => JobCommand::Report { factory_id: holder, epoch: pick(fresh), status: [ReportStatus::Running, ReportStatus::Succeeded, ReportStatus::Failed][st as usize], report: Report::default(), jitter: 0.5, now },
                Step::Expire => JobCommand::ExpireLease { jitter: 0.5, now },
                Step::Ship => JobCommand::Ship { now },
                Step::Cancel => JobCommand::Cancel { reason: None, now },
                Step::Reprioritise(p) => JobCommand::Reprioritise { priority: Priority::ALL[p as usize], now },
            };
            let stale_write = match &cmd {
                JobCommand::RenewLease { epoch, .. } | JobCommand::ReleaseLease { epoch, .. } | JobCommand::Report { epoch, .. } => {
                    Some(*epoch) != epoch_now || job.lease.as_ref().is_some_and(|l| l.expires_at <= now)
                }
                _ => false,
            };
            let is_grant = matches!(cmd, JobCommand::GrantLease { .. });
            let version_before = job.version;
            let (next, result) = execute(&job, cmd);
            match &result {
                // (8) and (2): a refused command leaves the state as it was.
                Err(_) => prop_assert_eq!(&next, &job),
                // (2): a stale write may only be the idempotent re-send (no events).
                Ok(events) if stale_write => {
                    prop_assert!(events.is_empty(), "stale write appended {:?}", events);
                    prop_assert_eq!(&next, &job);
                }
                Ok(events) => prop_assert_eq!(next.version, version_before + events.len() as u64),
            }
            // (1): a lease exists exactly in the leasing stages; its epoch is the version of its grant.
            prop_assert_eq!(next.lease.is_some(), next.stage.holds_lease());
            if is_grant && result.as_ref().is_ok_and(|e| !e.is_empty()) {
                prop_assert_eq!(next.lease.as_ref().unwrap().epoch, version_before + 1);
                prop_assert!(job.lease.is_none(), "granted a second lease");
            }
            prop_assert!(next.attempts <= max_attempts);
            if next.stage == Stage::Failed { prop_assert_eq!(next.attempts, max_attempts); }
            job = next;
        }
    }
}
