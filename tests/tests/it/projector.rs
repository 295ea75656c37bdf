//! The log's order and the projector: out-of-order commits, idempotence, rebuilds,
//! restart from checkpoint, append-only log, postgres-es compatibility.

use chrono::Utc;
use cqrs_es::persist::PersistedEventRepository;
use cqrs_es::EventEnvelope;
use gigafactory_domain::job::{Job, JobEvent, NewJob};
use gigafactory_domain::{JobId, Priority, ProductId};
use gigafactory_projections::log::{append, NewEvent};
use gigafactory_tests::{spawn_app, spawn_app_on, TestApp};
use serde_json::{json, Value};
use sqlx::Row;
use uuid::Uuid;

fn submitted(title: &str) -> (String, NewEvent) {
    let id = JobId(Uuid::now_v7());
    let product = ProductId("p1".into());
    let stream = id.stream_id(&product);
    let event = JobEvent::JobSubmitted {
        job: NewJob {
            job_id: id,
            product_id: product,
            title: title.into(),
            payload: json!({}),
            required_capabilities: vec![],
            priority: Priority::Normal,
            budget_usd: 0.0,
            max_attempts: 3,
            timeout_secs: None,
        },
        at: Utc::now(),
    };
    let row = NewEvent::of::<Job>(&stream, 1, &event, Some("p1"), &["p1".to_string()]);
    (stream, row)
}

async fn position_of(app: &TestApp, stream: &str) -> Option<i64> {
    sqlx::query_scalar(
        "SELECT p.position FROM events e LEFT JOIN event_positions p ON p.event_id = e.id
         WHERE e.aggregate_id = $1",
    )
    .bind(stream)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

async fn titles(app: &TestApp) -> Vec<String> {
    sqlx::query_scalar("SELECT title FROM job_view ORDER BY title")
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn an_event_committed_out_of_order_is_still_projected_in_one_order() {
    let app = spawn_app().await;
    // Transaction A starts first (takes its id) but appends and commits last.
    let mut a = app.pool.begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *a)
        .await
        .unwrap();
    let (stream_b, row_b) = submitted("b");
    let mut b = app.pool.begin().await.unwrap();
    append(&mut b, &[row_b]).await.unwrap();
    b.commit().await.unwrap();

    app.settle_once().await;
    assert_eq!(
        position_of(&app, &stream_b).await,
        None,
        "held back behind the older open transaction"
    );
    assert!(titles(&app).await.is_empty());

    let (stream_a, row_a) = submitted("a");
    append(&mut a, &[row_a]).await.unwrap();
    a.commit().await.unwrap();
    app.settle().await;
    let pa = position_of(&app, &stream_a).await.expect("a positioned");
    let pb = position_of(&app, &stream_b).await.expect("b positioned");
    assert!(pa < pb, "log order follows the transactions' order");
    assert_eq!(titles(&app).await, ["a", "b"], "the projector applied both");
}

/// `n` events of `stream` from `from_sequence` on: priority changes (any job event
/// does for the log's order).
fn followers(stream: &str, from_sequence: u64, n: usize) -> Vec<NewEvent> {
    (0..n)
        .map(|i| {
            let event = JobEvent::PriorityChanged {
                from: Priority::Normal,
                to: Priority::High,
                at: Utc::now(),
            };
            NewEvent::of::<Job>(
                stream,
                from_sequence + i as u64,
                &event,
                Some("p1"),
                &["p1".to_string()],
            )
        })
        .collect()
}

/// A transaction that has taken its id (so its events sort before those of any
/// transaction that takes one later, whenever it appends them).
async fn transaction_with_an_id(pool: &sqlx::PgPool) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx
}

async fn positions_of(app: &TestApp, stream: &str) -> Vec<Option<i64>> {
    sqlx::query_scalar(
        "SELECT p.position FROM events e LEFT JOIN event_positions p ON p.event_id = e.id
         WHERE e.aggregate_id = $1 ORDER BY e.sequence",
    )
    .bind(stream)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_stream_keeps_its_order_when_its_later_event_has_the_older_transaction() {
    let app = spawn_app().await;
    // Transaction L takes its id first, but appends the stream's second event after
    // transaction E appended (and committed) the first: txid(L) < txid(E).
    let mut later = transaction_with_an_id(&app.pool).await;
    let (stream, first) = submitted("s");
    let mut earlier = app.pool.begin().await.unwrap();
    append(&mut earlier, &[first]).await.unwrap();
    earlier.commit().await.unwrap();
    // L appends sequence 2 and 3 in one transaction, and another stream's event.
    let (other, other_row) = submitted("o");
    let mut rows = followers(&stream, 2, 2);
    rows.push(other_row);
    append(&mut later, &rows).await.unwrap();
    later.commit().await.unwrap();

    app.settle().await;
    let positions: Vec<i64> = positions_of(&app, &stream)
        .await
        .into_iter()
        .map(|p| p.expect("positioned"))
        .collect();
    assert_eq!(positions.len(), 3);
    assert!(
        positions[0] < positions[1] && positions[1] < positions[2],
        "each stream in sequence order: {positions:?}"
    );
    assert!(positions_of(&app, &other).await[0].is_some());
    let all: Vec<i64> =
        sqlx::query_scalar("SELECT position FROM positioned_events ORDER BY position")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert!(
        all.iter().enumerate().all(|(i, p)| *p == i as i64 + 1),
        "every event positioned, no gaps: {all:?}"
    );
    let head: i64 = sqlx::query_scalar("SELECT last_position FROM event_log_head")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(head, all.len() as i64);
}

#[tokio::test]
async fn events_that_become_visible_together_keep_their_transactions_order() {
    let app = spawn_app().await;
    // An older open transaction holds the horizon while three commit after it: a
    // stream's first and second event, then another stream's first.
    let mut holder = app.pool.begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *holder)
        .await
        .unwrap();
    let (a, a1) = submitted("a");
    let (b, b1) = submitted("b");
    for rows in [vec![a1], followers(&a, 2, 1), vec![b1]] {
        let mut tx = app.pool.begin().await.unwrap();
        append(&mut tx, &rows).await.unwrap();
        tx.commit().await.unwrap();
    }
    app.settle_once().await;
    assert_eq!(
        positions_of(&app, &a).await,
        [None, None],
        "held behind the horizon"
    );
    holder.rollback().await.unwrap();
    app.settle().await;
    let a_positions: Vec<i64> = positions_of(&app, &a).await.into_iter().flatten().collect();
    let b_position = positions_of(&app, &b).await[0].unwrap();
    assert_eq!(a_positions.len(), 2);
    assert!(
        a_positions[0] < a_positions[1] && a_positions[1] < b_position,
        "one round, the transactions' order: a#1 {} a#2 {} b#1 {b_position}",
        a_positions[0],
        a_positions[1]
    );
}

/// Every log-built read-model table, as text, in a stable order.
async fn snapshot(app: &TestApp) -> Vec<String> {
    let mut out = Vec::new();
    for (table, key) in [
        ("job_view", "job_id"),
        ("run_view", "run_id"),
        ("factory_view", "factory_id"),
        ("credential_view", "token_hash"),
        ("product_settings_view", "product_id"),
        ("flag_view", "flag"),
        ("artifact_view", "artifact_id"),
    ] {
        let rows = sqlx::query(&format!(
            "SELECT row_to_json(t)::text AS r FROM {table} t ORDER BY {key}"
        ))
        .fetch_all(&app.pool)
        .await
        .unwrap();
        out.extend(
            rows.iter()
                .map(|r| format!("{table}: {}", r.get::<String, _>("r"))),
        );
    }
    out
}

async fn workload(app: &TestApp) {
    let op = app.operator(&["p1"]).await;
    let (factory_id, ft) = app.enroll(&op, &["p1"], &[], 3).await;
    for i in 0..6 {
        app.submit(
            &op,
            json!({"productId": "p1", "title": format!("w{i}"), "maxAttempts": 1}),
        )
        .await;
    }
    for status in ["succeeded", "failed", "running"] {
        let c = app.claim(&ft).await.unwrap();
        let id = c["job"]["id"].as_str().unwrap();
        let epoch = c["lease"]["epoch"].clone();
        app.post(
            &format!("/fleet/jobs/{id}/report"),
            &ft,
            json!({"epoch": epoch, "status": status, "costUsd": 0.3, "checkpoint": {"s": 1}}),
        )
        .await;
        if status == "succeeded" {
            app.patch(
                &format!("/fleet/jobs/{id}"),
                &op,
                json!({"stage": "shipped"}),
            )
            .await;
        }
    }
    app.post(
        &format!("/fleet/factories/{factory_id}/token/rotate"),
        &op,
        json!({}),
    )
    .await;
    let put = |path: &str, token: &str, body: Value| {
        let (path, token) = (path.to_string(), token.to_string());
        async move {
            app.call(reqwest::Method::PUT, &path, Some(&token), Some(&body))
                .await
        }
    };
    assert_eq!(
        put("/fleet/weights/p1", &op, json!({"weights": {"age": 0.3}}))
            .await
            .status,
        200
    );
    assert_eq!(
        put(
            "/fleet/flags",
            &app.admin_token,
            json!({"preemption": "shadow"})
        )
        .await
        .status,
        200
    );
}

#[tokio::test]
async fn applying_events_again_or_rebuilding_changes_nothing() {
    let app = spawn_app().await;
    workload(&app).await;
    app.settle().await;
    let live = snapshot(&app).await;
    // 6 jobs, 3 runs, the factory, the credentials, the settings…
    assert!(live.len() > 12, "{}", live.len());

    // Every event applied a second time.
    sqlx::query("UPDATE projection_checkpoints SET position = 0")
        .execute(&app.pool)
        .await
        .unwrap();
    app.settle().await;
    assert_eq!(snapshot(&app).await, live);

    // Rebuilt from the log alone.
    sqlx::query("TRUNCATE job_view, run_view, factory_view, credential_view, product_settings_view, flag_view, artifact_view")
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE projection_checkpoints SET position = 0")
        .execute(&app.pool)
        .await
        .unwrap();
    app.settle().await;
    assert_eq!(snapshot(&app).await, live);
}

#[tokio::test]
async fn a_restarted_projector_resumes_from_its_checkpoint() {
    let app = spawn_app().await;
    let op = app.operator(&["p1"]).await;
    app.submit(&op, json!({"productId": "p1", "title": "before"}))
        .await;
    app.settle().await;
    let mark: i64 = sqlx::query_scalar("SELECT min(position) FROM projection_checkpoints")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(mark > 0);
    // A marker only a replay from zero would overwrite.
    sqlx::query("UPDATE job_view SET title = 'marker'")
        .execute(&app.pool)
        .await
        .unwrap();
    let db = app.db.clone();
    drop(app);

    let app = spawn_app_on(db).await;
    let op = app.operator(&["p1"]).await;
    let (stream, row) = submitted("after");
    let mut tx = app.pool.begin().await.unwrap();
    append(&mut tx, &[row]).await.unwrap();
    tx.commit().await.unwrap();
    app.settle().await;
    assert_eq!(titles(&app).await, ["after", "marker"]);
    let now: i64 = sqlx::query_scalar("SELECT min(position) FROM projection_checkpoints")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(now > mark && position_of(&app, &stream).await <= Some(now));
    let _ = op;
}

/// The command path writes every read model its events touch in their own
/// transaction; the projector then only moves its checkpoints past them. Events
/// appended any other way are still applied. (The rows of the command's job are
/// removed behind the projector's back to tell the two apart: re-applied, its event
/// would write them again.)
#[tokio::test]
async fn the_projector_passes_over_events_whose_own_transaction_wrote_their_read_models() {
    let app = spawn_app().await;
    let op = app.operator(&["p1"]).await;
    let by_command = app
        .submit(&op, json!({"productId": "p1", "title": "by the command"}))
        .await;
    let (stream, row) = submitted("by the projector");
    let mut tx = app.pool.begin().await.unwrap();
    append(&mut tx, &[row]).await.unwrap();
    tx.commit().await.unwrap();
    let marks: Vec<(String, bool)> =
        sqlx::query_as("SELECT event_type, read_models_written FROM events ORDER BY id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        marks
            .iter()
            .filter(|(t, _)| t == "JobSubmitted")
            .map(|(_, m)| *m)
            .collect::<Vec<_>>(),
        [true, false],
        "{marks:?}"
    );
    assert_eq!(titles(&app).await, ["by the command"]);
    let job_id: Uuid = by_command["id"].as_str().unwrap().parse().unwrap();
    sqlx::query("DELETE FROM job_view WHERE job_id = $1")
        .bind(job_id)
        .execute(&app.pool)
        .await
        .unwrap();

    app.settle().await;

    assert_eq!(
        titles(&app).await,
        ["by the projector"],
        "the command's event was not applied again"
    );
    let (low, head): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT min(position) FROM projection_checkpoints),
                (SELECT last_position FROM event_log_head)",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(low, head, "every checkpoint moved past both events");
    assert!(position_of(&app, &stream).await <= Some(low));
}

#[tokio::test]
async fn the_log_worker_projects_what_commands_did_not_though_it_projects_at_most_every_50_ms() {
    // The log worker runs the projector at most every 50 ms: an event appended right
    // after a pass that projected (left to the projector, as tools append) is still
    // applied by the worker on its own, with no one calling `settle`.
    let app = spawn_app().await;
    let op = app.operator(&["p1"]).await;
    app.submit(&op, json!({"productId": "p1", "title": "by the command"}))
        .await;
    let (_, row) = submitted("by the worker");
    let mut tx = app.pool.begin().await.unwrap();
    append(&mut tx, &[row]).await.unwrap();
    tx.commit().await.unwrap();
    app.state.wake_all();
    let started = std::time::Instant::now();
    while titles(&app).await != ["by the command", "by the worker"] {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "the worker never projected it: {:?}",
            titles(&app).await
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// A projection that did not exist when the command path wrote its events' read
/// models (its checkpoint is created later) applies every event up to the log's head
/// then, the ones the command path wrote included.
#[tokio::test]
async fn a_projection_added_later_applies_every_event_before_it() {
    let app = spawn_app().await;
    let op = app.operator(&["p1"]).await;
    for title in ["a", "b"] {
        app.submit(&op, json!({"productId": "p1", "title": title}))
            .await;
    }
    app.settle().await;
    // The job table as if it were new: no rows, no checkpoint.
    sqlx::query("TRUNCATE job_view")
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM projection_checkpoints WHERE projection = 'jobs'")
        .execute(&app.pool)
        .await
        .unwrap();

    app.settle().await;

    assert_eq!(titles(&app).await, ["a", "b"]);
}

#[tokio::test]
async fn the_database_refuses_to_change_the_log() {
    let app = spawn_app().await;
    let op = app.operator(&["p1"]).await;
    app.submit(&op, json!({"productId": "p1", "title": "t"}))
        .await;
    app.settle().await;
    for sql in [
        "UPDATE events SET payload = '{}'",
        "UPDATE events SET recorded_at = recorded_at",
        "UPDATE events SET read_models_written = NOT read_models_written",
        "DELETE FROM events",
        "TRUNCATE events",
        "UPDATE event_positions SET position = position + 100",
        "DELETE FROM event_positions",
        "TRUNCATE event_positions",
    ] {
        let err = sqlx::query(sql).execute(&app.pool).await.expect_err(sql);
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
}

#[tokio::test]
async fn postgres_es_reads_the_streams_we_write() {
    let app = spawn_app().await;
    let op = app.operator(&["p1"]).await;
    let (_, ft) = app.enroll(&op, &["p1"], &[], 1).await;
    let job = app
        .submit(&op, json!({"productId": "p1", "title": "t"}))
        .await;
    app.claim(&ft).await.unwrap();
    let stream = format!("p1/{}", job["id"].as_str().unwrap());
    let repo = postgres_es::PostgresEventRepository::new(app.pool.clone());
    let events = repo.get_events::<Job>(&stream).await.unwrap();
    let envelopes: Vec<EventEnvelope<Job>> =
        events.into_iter().map(|e| e.try_into().unwrap()).collect();
    assert_eq!(envelopes.len(), 2);
    assert!(matches!(
        envelopes[0].payload,
        JobEvent::JobSubmitted { .. }
    ));
    assert!(matches!(
        envelopes[1].payload,
        JobEvent::LeaseGranted { epoch: 2, .. }
    ));
}

#[tokio::test]
async fn the_projector_reapplying_a_grant_does_not_hold_up_its_report() {
    let app = spawn_app().await;
    let op = app.operator(&["p1"]).await;
    let (_, ft) = app.enroll(&op, &["p1"], &[], 1).await;
    app.submit(&op, json!({"productId": "p1", "title": "t"}))
        .await;
    let claim = app.claim(&ft).await.expect("a lease");
    let id = claim["job"]["id"].as_str().unwrap().to_string();
    let epoch = claim["lease"]["epoch"].as_u64().unwrap();
    app.settle().await;
    let grant: Vec<gigafactory_projections::EventRecord> =
        gigafactory_projections::log::read_after(
            &mut *app.pool.acquire().await.unwrap(),
            0,
            100,
            None,
        )
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.event_type == "LeaseGranted")
        .collect();
    assert_eq!(grant.len(), 1);

    // Given a projector transaction that re-applied the grant and has not committed,
    let mut projecting = app.pool.begin().await.unwrap();
    gigafactory_projections::projector::Projection::Runs
        .apply_batch(&mut projecting, &grant)
        .await
        .unwrap();
    // when the holder reports, the report does not wait for that transaction.
    let report = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        app.post(
            &format!("/fleet/jobs/{id}/report"),
            &ft,
            json!({"epoch": epoch, "status": "succeeded", "costUsd": 0.5}),
        ),
    )
    .await
    .expect("the report waited for the projector's transaction");
    assert_eq!(report.status, reqwest::StatusCode::OK, "{:?}", report.body);
    projecting.commit().await.unwrap();
    let outcome: String = sqlx::query_scalar("SELECT outcome FROM run_view")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(outcome, "succeeded");
}

/// Runs the sequencer until it has given `n` positions (other tests' open
/// transactions on the same server can hold it back for a moment).
async fn position(pool: &sqlx::PgPool, n: i64) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut given = 0;
    while given < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "events stayed unpositioned"
        );
        given += gigafactory_projections::log::assign_positions(pool, 100)
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(given, n);
}

#[tokio::test]
async fn upgrading_moves_positions_beside_the_log_and_goes_on_from_them() {
    // Given a database at migration 10 (positions in the events' rows), with three
    // positioned events and two not yet positioned,
    let db = gigafactory_tests::TestDb::create().await;
    let pool = gigafactory_api::db::connect(&db.url, 4).await.unwrap();
    let old = std::env::temp_dir().join(format!("gf-migrations-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&old).unwrap();
    let all = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    for entry in std::fs::read_dir(&all).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if name.as_str() < "20261127000011" {
            std::fs::copy(&path, old.join(&name)).unwrap();
        }
    }
    sqlx::migrate::Migrator::new(old.as_path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    std::fs::remove_dir_all(&old).unwrap();
    let append_one = |title: &'static str| {
        let pool = pool.clone();
        async move {
            let mut tx = pool.begin().await.unwrap();
            let (_, row) = submitted(title);
            let id = append(&mut tx, &[row]).await.unwrap()[0].id;
            tx.commit().await.unwrap();
            id
        }
    };
    let mut ids = Vec::new();
    for title in ["a", "b", "c"] {
        ids.push(append_one(title).await);
    }
    position(&pool, 3).await;
    for title in ["d", "e"] {
        ids.push(append_one(title).await);
    }

    // when the last migration runs,
    gigafactory_api::db::migrate(&pool).await.unwrap();

    // the positions given stay, the sequencer gives the others the next ones, and
    // the log reads in one order.
    let pending = gigafactory_projections::log::newest_unpositioned(&pool)
        .await
        .unwrap();
    assert_eq!(pending, Some(ids[4]));
    position(&pool, 2).await;
    let log: Vec<(i64, i64)> =
        sqlx::query_as("SELECT position, id FROM positioned_events ORDER BY position")
            .fetch_all(&pool)
            .await
            .unwrap();
    let expected: Vec<(i64, i64)> = (1..=5).zip(ids.iter().copied()).collect();
    assert_eq!(log, expected);
    assert_eq!(
        gigafactory_projections::log::newest_unpositioned(&pool)
            .await
            .unwrap(),
        None
    );
    pool.close().await;
}

#[tokio::test]
async fn a_window_held_back_behind_later_predecessors_does_not_stall_the_log() {
    // No server: this test alone calls the sequencer, with a batch of 3.
    let db = gigafactory_tests::TestDb::create().await;
    let pool = db.pool(4).await;
    // L takes its transaction id first; E then appends the first event of three
    // streams and commits; L appends each stream's second event. In (txid, id) order
    // L's three events come first, and each waits for E's event of its stream.
    let mut later = transaction_with_an_id(&pool).await;
    let firsts: Vec<(String, NewEvent)> = (0..3).map(|i| submitted(&format!("s{i}"))).collect();
    let mut earlier = pool.begin().await.unwrap();
    let rows: Vec<NewEvent> = firsts.iter().map(|(_, row)| row.clone()).collect();
    append(&mut earlier, &rows).await.unwrap();
    earlier.commit().await.unwrap();
    let seconds: Vec<NewEvent> = firsts
        .iter()
        .flat_map(|(stream, _)| followers(stream, 2, 1))
        .collect();
    append(&mut later, &seconds).await.unwrap();
    later.commit().await.unwrap();

    // The first window of a batch of 3 is exactly L's events, all held back: the
    // sequencer must look past it (other tests' transactions may hold it back for a
    // moment; `position` waits for them, and fails if the log stays stalled).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut given = 0;
    while given < 6 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sequencer stalled with {given} of 6 positioned"
        );
        given += gigafactory_projections::log::assign_positions(&pool, 3)
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(given, 6);
    for (stream, _) in &firsts {
        let positions: Vec<Option<i64>> = sqlx::query_scalar(
            "SELECT p.position FROM events e LEFT JOIN event_positions p ON p.event_id = e.id
             WHERE e.aggregate_id = $1 ORDER BY e.sequence",
        )
        .bind(stream)
        .fetch_all(&pool)
        .await
        .unwrap();
        assert!(
            matches!(positions[..], [Some(a), Some(b)] if a < b),
            "{stream} in sequence order: {positions:?}"
        );
    }
}

#[tokio::test]
async fn one_sequencer_call_positions_a_stream_whose_later_event_has_the_older_transaction() {
    // No server: this test alone calls the sequencer.
    let db = gigafactory_tests::TestDb::create().await;
    let pool = db.pool(4).await;
    // L takes its transaction id first; E appends the stream's first event and
    // commits; L appends its second and third events and another stream's first.
    let mut later = transaction_with_an_id(&pool).await;
    let (stream, first) = submitted("s");
    let mut earlier = pool.begin().await.unwrap();
    append(&mut earlier, &[first]).await.unwrap();
    earlier.commit().await.unwrap();
    let (_, other) = submitted("o");
    let mut rows = followers(&stream, 2, 2);
    rows.push(other);
    append(&mut later, &rows).await.unwrap();
    later.commit().await.unwrap();
    // Once no older transaction anywhere on the server holds the log back (other
    // tests' may, for a moment),
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let past: bool = sqlx::query_scalar(
            "SELECT pg_snapshot_xmin(pg_current_snapshot()) > (SELECT max(txid) FROM events)",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if past {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the horizon never passed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // one call positions all four: the second and third events, held back in its
    // first round (their predecessor came later in transaction order), are ready in
    // the next round of the same call.
    let given = gigafactory_projections::log::assign_positions(&pool, 1000)
        .await
        .unwrap();
    assert_eq!(given, 4);
    pool.close().await;
}

/// What a reader paging the log saw: (position, stream, sequence) in the order read.
type Seen = Vec<(i64, String, i64)>;

/// Reads positioned events after the last one seen until `stop`, asserting each page
/// goes on exactly where the last ended (no position appears below one already seen).
async fn page_the_log(pool: sqlx::PgPool, stop: tokio::sync::watch::Receiver<bool>) -> Seen {
    let mut seen: Seen = Vec::new();
    loop {
        let done = *stop.borrow();
        let after = seen.last().map(|s| s.0).unwrap_or(0);
        let page: Vec<(i64, String, i64)> = sqlx::query_as(
            "SELECT position, aggregate_id, sequence FROM positioned_events
             WHERE position > $1 ORDER BY position",
        )
        .bind(after)
        .fetch_all(&pool)
        .await
        .unwrap();
        for (i, row) in page.iter().enumerate() {
            assert_eq!(
                row.0,
                after + 1 + i as i64,
                "a position was skipped or came late"
            );
        }
        seen.extend(page);
        if done {
            return seen;
        }
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
}

#[tokio::test]
async fn writers_committing_out_of_order_while_the_sequencer_runs_lose_no_event_and_keep_each_stream_in_order(
) {
    // No server: this test alone calls the sequencer, with batches of 1 to 40.
    let db = gigafactory_tests::TestDb::create().await;
    let pool = db.pool(16).await;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let reader = tokio::spawn(page_the_log(pool.clone(), stop.clone()));
    let sequencer = {
        let pool = pool.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut calls = 0u32;
            while !*stop.borrow() {
                let batch = 1 + (calls * 7 % 40) as i32;
                gigafactory_projections::log::assign_positions(&pool, batch)
                    .await
                    .unwrap();
                calls += 1;
                tokio::time::sleep(std::time::Duration::from_millis((calls % 3) as u64)).await;
            }
        })
    };
    // Given six writers, each round appending to a stream of its own in two
    // transactions that took their ids in the opposite order of their commits (the
    // stream's later event has the older transaction id), with pauses in between,
    let writers: Vec<_> = (0..6u64)
        .map(|w| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut appended = 0i64;
                for round in 0..25u64 {
                    let pause = std::time::Duration::from_millis((w + round) % 4);
                    let mut older = transaction_with_an_id(&pool).await;
                    let mut younger = transaction_with_an_id(&pool).await;
                    let (stream, first) = submitted(&format!("w{w}r{round}"));
                    let extra = ((w + round) % 3) as usize;
                    let mut rows = vec![first];
                    rows.extend(followers(&stream, 2, extra));
                    append(&mut younger, &rows).await.unwrap();
                    tokio::time::sleep(pause).await;
                    younger.commit().await.unwrap();
                    let later = followers(&stream, 2 + extra as u64, 1 + (round % 2) as usize);
                    appended += (rows.len() + later.len()) as i64;
                    append(&mut older, &later).await.unwrap();
                    tokio::time::sleep(pause).await;
                    older.commit().await.unwrap();
                }
                appended
            })
        })
        .collect();
    let mut appended = 0;
    for writer in writers {
        appended += writer.await.unwrap();
    }
    // when every event has had time to be positioned (other tests' transactions may
    // hold the horizon back for a moment),
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let positioned: i64 = sqlx::query_scalar("SELECT count(*) FROM event_positions")
            .fetch_one(&pool)
            .await
            .unwrap();
        if positioned == appended {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{positioned} of {appended} events positioned"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    stop_tx.send(true).unwrap();
    sequencer.await.unwrap();
    let seen = reader.await.unwrap();

    // then the reader saw every event once, at positions 1..n without a gap, and
    // each stream's events in sequence order from 1.
    assert_eq!(seen.len() as i64, appended);
    let mut next_sequence: std::collections::HashMap<&str, i64> = Default::default();
    for (position, stream, sequence) in &seen {
        let expected = next_sequence.entry(stream.as_str()).or_insert(1);
        assert_eq!(
            sequence, expected,
            "{stream} out of order at position {position}"
        );
        *expected += 1;
    }
    assert_eq!(next_sequence.len(), 6 * 25);
    pool.close().await;
}
