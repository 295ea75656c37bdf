//! Transactions that begin holding their advisory locks (`projections::turns`): the
//! hex-spliced keys lock exactly what the parameterised statements lock, whatever a
//! key holds, and the statements after `BEGIN` see what the previous holder
//! committed.

use gigafactory_projections::turns::{self, Turn};
use gigafactory_tests::TestDb;
use sqlx::PgPool;

/// Whether another session could take `key`'s lock right now with `try_lock`
/// (`pg_try_advisory_xact_lock` or its `_shared` twin).
async fn takes(pool: &PgPool, try_lock: &str, key: &str) -> bool {
    let mut tx = pool.begin().await.unwrap();
    let got: bool = sqlx::query_scalar(&format!("SELECT {try_lock}(hashtextextended($1, 0))"))
        .bind(key)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    got
}

async fn free(pool: &PgPool, key: &str) -> bool {
    takes(pool, "pg_try_advisory_xact_lock", key).await
}

async fn shareable(pool: &PgPool, key: &str) -> bool {
    takes(pool, "pg_try_advisory_xact_lock_shared", key).await
}

#[tokio::test]
async fn a_turn_holds_the_same_locks_as_the_parameterised_statements() {
    let db = TestDb::create().await;
    let pool = db.pool(4).await;
    // Quotes, backslashes, SQL and non-ASCII in a product id reach the lock intact.
    let odd = "job/p'); SELECT pg_sleep(10); --\\ö✓/0190b5c0-0000-7000-8000-000000000001";
    let plain = "job/p1/0190b5c0-0000-7000-8000-000000000002";
    let factory = "factory-claims/0190b5c0-0000-7000-8000-0000000000f1";
    assert!(free(&pool, odd).await && free(&pool, plain).await);

    let tx = turns::begin(
        &pool,
        &Turn::of_all(&[odd.into(), plain.into()]).sharing(factory),
    )
    .await
    .unwrap();
    assert!(!free(&pool, odd).await, "the odd key is held");
    assert!(!free(&pool, plain).await, "the plain key is held");
    assert!(!free(&pool, factory).await, "the shared key is held...");
    assert!(
        shareable(&pool, factory).await,
        "...shared, not exclusively"
    );
    assert!(free(&pool, "job/p1/other").await, "nothing else is held");
    tx.rollback().await.unwrap();
    assert!(
        free(&pool, odd).await && free(&pool, factory).await,
        "released at the end"
    );

    let tx = turns::begin(&pool, &Turn::of(odd)).await.unwrap();
    assert!(!free(&pool, odd).await, "one key alone is held too");
    tx.commit().await.unwrap();
    assert!(free(&pool, odd).await);
}

#[tokio::test]
async fn a_turn_waits_for_the_holder_and_then_sees_its_commit() {
    let db = TestDb::create().await;
    let pool = db.pool(4).await;
    sqlx::query("CREATE TABLE turn_probe (value int)")
        .execute(&pool)
        .await
        .unwrap();
    let key = "job/p1/0190b5c0-0000-7000-8000-000000000003";
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(key)
        .execute(&mut *holder)
        .await
        .unwrap();
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut tx = turns::begin(&pool, &Turn::of(key)).await.unwrap();
            let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM turn_probe")
                .fetch_one(&mut *tx)
                .await
                .unwrap();
            tx.rollback().await.unwrap();
            seen
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!waiter.is_finished(), "the turn waits for the holder");
    sqlx::query("INSERT INTO turn_probe VALUES (1)")
        .execute(&mut *holder)
        .await
        .unwrap();
    holder.commit().await.unwrap();
    assert_eq!(
        waiter.await.unwrap(),
        1,
        "the next statement sees the holder's commit"
    );
}
