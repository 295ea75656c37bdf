use super::*;
use crate::{FactoryId, ProductId};
use chrono::{DateTime, TimeZone, Utc};
use cqrs_es::test::TestFramework;
use uuid::Uuid;

fn t(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
}

fn new_factory() -> NewFactory {
    NewFactory {
        factory_id: FactoryId(Uuid::from_u128(1)),
        name: "f1".into(),
        product_ids: vec![ProductId("p1".into())],
        capabilities: vec!["rust".into()],
        capacity: 2,
        token_hash: "h1".into(),
    }
}

fn enrolled() -> FactoryEvent {
    FactoryEvent::FactoryEnrolled {
        factory: new_factory(),
        at: t(0),
    }
}

#[tokio::test]
async fn enroll_checks_capacity() {
    let mut f = new_factory();
    f.capacity = 0;
    let err = TestFramework::<Factory>::with(())
        .given_no_previous_events()
        .when_async(FactoryCommand::Enroll {
            factory: f,
            now: t(0),
        })
        .await
        .inspect_result()
        .unwrap_err();
    assert!(matches!(
        err,
        FactoryError::Invalid {
            field: "capacity",
            ..
        }
    ));
}

#[tokio::test]
async fn rotation_keeps_the_old_token_for_the_grace_period() {
    TestFramework::<Factory>::with(())
        .given(vec![enrolled()])
        .when_async(FactoryCommand::RotateToken {
            new_token_hash: "h2".into(),
            now: t(10),
        })
        .await
        .then_expect_events(vec![FactoryEvent::FactoryTokenRotated {
            token_hash: "h2".into(),
            previous_token_hash: "h1".into(),
            previous_valid_until: t(70),
            at: t(10),
        }]);
}

#[tokio::test]
async fn first_use_of_the_new_token_retires_the_old_one_once() {
    let rotated = FactoryEvent::FactoryTokenRotated {
        token_hash: "h2".into(),
        previous_token_hash: "h1".into(),
        previous_valid_until: t(70),
        at: t(10),
    };
    let confirmed = FactoryEvent::FactoryTokenConfirmed {
        token_hash: "h2".into(),
        retired_token_hash: "h1".into(),
        at: t(20),
    };
    TestFramework::<Factory>::with(())
        .given(vec![enrolled(), rotated.clone()])
        .when_async(FactoryCommand::ConfirmToken {
            token_hash: "h2".into(),
            now: t(20),
        })
        .await
        .then_expect_events(vec![confirmed.clone()]);
    TestFramework::<Factory>::with(())
        .given(vec![enrolled(), rotated, confirmed])
        .when_async(FactoryCommand::ConfirmToken {
            token_hash: "h2".into(),
            now: t(21),
        })
        .await
        .then_expect_events(vec![]);
}

#[tokio::test]
async fn revoked_factory_cannot_rotate() {
    let err = TestFramework::<Factory>::with(())
        .given(vec![enrolled(), FactoryEvent::FactoryRevoked { at: t(1) }])
        .when_async(FactoryCommand::RotateToken {
            new_token_hash: "h3".into(),
            now: t(2),
        })
        .await
        .inspect_result()
        .unwrap_err();
    assert_eq!(err, FactoryError::Revoked);
}
