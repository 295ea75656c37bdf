use super::*;
use crate::TokenId;
use chrono::{DateTime, TimeZone, Utc};
use cqrs_es::test::TestFramework;
use uuid::Uuid;

fn t(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
}

fn token(products: &[&str]) -> NewAccessToken {
    NewAccessToken {
        token_id: TokenId(Uuid::from_u128(3)),
        role: Role::Auditor,
        products: products.iter().map(|s| s.to_string()).collect(),
        name: "audit".into(),
        token_hash: "abc".into(),
    }
}

#[tokio::test]
async fn issue_accepts_star_or_products() {
    for products in [&["*"][..], &["p1", "p2"][..]] {
        TestFramework::<AccessToken>::with(())
            .given_no_previous_events()
            .when_async(AccessTokenCommand::Issue {
                token: token(products),
                now: t(0),
            })
            .await
            .then_expect_events(vec![AccessTokenEvent::AccessTokenIssued {
                token: token(products),
                at: t(0),
            }]);
    }
}

#[tokio::test]
async fn issue_rejects_bad_products() {
    let err = TestFramework::<AccessToken>::with(())
        .given_no_previous_events()
        .when_async(AccessTokenCommand::Issue {
            token: token(&["p1", "*"]),
            now: t(0),
        })
        .await
        .inspect_result()
        .unwrap_err();
    assert!(matches!(
        err,
        AccessTokenError::Invalid {
            field: "products",
            ..
        }
    ));
}

#[tokio::test]
async fn revoke_twice_appends_once() {
    let issued = AccessTokenEvent::AccessTokenIssued {
        token: token(&["*"]),
        at: t(0),
    };
    TestFramework::<AccessToken>::with(())
        .given(vec![
            issued.clone(),
            AccessTokenEvent::AccessTokenRevoked { at: t(1) },
        ])
        .when_async(AccessTokenCommand::Revoke { now: t(2) })
        .await
        .then_expect_events(vec![]);
}
