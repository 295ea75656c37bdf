//! The platform surface: Prometheus metrics and the live event stream (SSE).

use futures::StreamExt;
use gigafactory_tests::{spawn_app, spawn_app_on, TestApp, TestDb};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::sync::mpsc;

/// Checks Prometheus text exposition line by line; returns (name{labels}, value).
fn parse_prometheus(text: &str) -> Vec<(String, f64)> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment: {line}");
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name: {line}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "unterminated labels: {line}");
        }
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
        };
        samples.push((series.to_string(), value));
    }
    samples
}

fn sample(samples: &[(String, f64)], series: &str) -> f64 {
    samples
        .iter()
        .filter(|(s, _)| s == series)
        .map(|(_, v)| *v)
        .sum()
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_claims_move_the_counter() {
    let app = spawn_app().await;
    let op = app.operator(&["p1"]).await;
    let (_, ft) = app.enroll(&op, &["p1"], &[], 1).await;
    app.submit(&op, json!({"productId": "p1", "title": "t"}))
        .await;
    let scrape = |app: &TestApp| {
        let url = format!("{}/metrics", app.base);
        let http = app.http.clone();
        async move {
            let r = http.get(url).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            assert!(r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain"));
            parse_prometheus(&r.text().await.unwrap())
        }
    };
    let before = scrape(&app).await;
    let granted = r#"gigafactory_claims_total{outcome="granted"}"#;
    assert!(app.claim(&ft).await.is_some());
    assert!(app.claim(&ft).await.is_none());
    let after = scrape(&app).await;
    // The recorder is process-wide (tests share it): the counter grows at least by ours.
    assert!(sample(&after, granted) >= sample(&before, granted) + 1.0);
    assert!(sample(&after, r#"gigafactory_claims_total{outcome="empty"}"#) >= 1.0);
    assert!(after
        .iter()
        .any(|(s, _)| s.starts_with("gigafactory_http_requests_total{")
            && s.contains(r#"route="/fleet/claim""#)));
    assert!(after
        .iter()
        .any(|(s, _)| s.starts_with("gigafactory_claim_duration_seconds_bucket")));
    assert!(after
        .iter()
        .any(|(s, _)| s.starts_with("gigafactory_events_appended_total{")
            && s.contains("LeaseGranted")));
    assert!(
        after
            .iter()
            .any(|(s, _)| s.starts_with("gigafactory_queue_depth{")
                && s.contains(r#"stage="leased""#))
    );
}

/// One server-sent message.
#[derive(Debug, Clone)]
struct Message {
    id: Option<i64>,
    event: Option<String>,
    data: Value,
}

/// Subscribes and forwards parsed messages until the connection ends.
async fn subscribe(
    app: &TestApp,
    token: &str,
    last_event_id: Option<i64>,
) -> mpsc::UnboundedReceiver<Message> {
    let mut req = app
        .http
        .get(format!("{}/fleet/stream", app.base))
        .bearer_auth(token);
    if let Some(id) = last_event_id {
        req = req.header("Last-Event-ID", id.to_string());
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut body = res.bytes_stream();
        let mut buf = String::new();
        while let Some(Ok(chunk)) = body.next().await {
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                let mut m = Message {
                    id: None,
                    event: None,
                    data: Value::Null,
                };
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        m.id = v.trim().parse().ok();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        m.event = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if m.event.is_none() && data.is_empty() {
                    continue; // keep-alive comment
                }
                m.data = serde_json::from_str(&data).unwrap_or(Value::String(data));
                if tx.send(m).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Message>) -> Message {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a message in time")
        .expect("stream open")
}

#[tokio::test]
async fn a_lone_process_sends_no_notify_and_a_second_one_is_told() {
    // A NOTIFY is a transaction with its own commit: a process alone on its database
    // sends none. Once another Gigafactory process connects, it is told about
    // commits (within the notifier's one-second look at who is connected).
    let app = spawn_app().await;
    let op = app.operator(&["p1"]).await;
    // Listening as no Gigafactory process (no `gigafactory-` application name).
    let mut heard = sqlx::postgres::PgListener::connect(&app.db.url)
        .await
        .unwrap();
    heard
        .listen(gigafactory_projections::log::EVENTS_CHANNEL)
        .await
        .unwrap();
    let ours = |n: &sqlx::postgres::PgNotification| {
        n.payload().starts_with(&format!("{}:", app.state.instance))
    };
    app.submit(&op, json!({"productId": "p1", "title": "alone"}))
        .await;
    let alone = tokio::time::timeout(Duration::from_millis(1500), heard.recv()).await;
    assert!(alone.is_err(), "a lone process notified: {alone:?}");

    let _other = spawn_app_on(app.db.clone()).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    app.submit(&op, json!({"productId": "p1", "title": "with company"}))
        .await;
    let told = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let n = heard.recv().await.unwrap();
            if ours(&n) {
                return n;
            }
        }
    })
    .await
    .expect("the first process notified once a second one was connected");
    assert!(
        told.payload().ends_with(":claims"),
        "a new job wakes claims: {}",
        told.payload()
    );
}

#[tokio::test]
async fn the_stream_is_ordered_scoped_resumable_and_spans_processes() {
    let app = spawn_app().await;
    let other = spawn_app_on(app.db.clone()).await;
    let op = app.operator(&["p1", "p2"]).await;
    let reader = app.operator(&["p1"]).await;
    app.settle().await;
    let mut rx = subscribe(&app, &reader, None).await;

    for i in 0..3 {
        app.submit(
            &op,
            json!({"productId": "p2", "title": format!("hidden {i}")}),
        )
        .await;
        app.submit(
            &op,
            json!({"productId": "p1", "title": format!("shown {i}")}),
        )
        .await;
    }
    let mut last = 0;
    for i in 0..3 {
        let m = next(&mut rx).await;
        assert_eq!(m.event.as_deref(), Some("JobSubmitted"));
        assert_eq!(
            m.data["productId"], "p1",
            "another product's events never appear"
        );
        assert_eq!(m.data["payload"]["title"], format!("shown {i}"));
        let id = m.id.expect("id is the position");
        assert_eq!(m.data["position"], id);
        assert!(id > last, "in position order");
        last = id;
    }
    drop(rx);

    // While disconnected: two more; reconnecting with Last-Event-ID gets exactly those.
    let a = app
        .submit(&op, json!({"productId": "p1", "title": "missed a"}))
        .await;
    let b = app
        .submit(&op, json!({"productId": "p1", "title": "missed b"}))
        .await;
    let mut rx = subscribe(&app, &reader, Some(last)).await;
    let m1 = next(&mut rx).await;
    let m2 = next(&mut rx).await;
    assert_eq!(
        m1.data["aggregateId"],
        format!("p1/{}", a["id"].as_str().unwrap())
    );
    assert_eq!(
        m2.data["aggregateId"],
        format!("p1/{}", b["id"].as_str().unwrap())
    );
    assert!(m1.id.unwrap() > last && m2.id.unwrap() > m1.id.unwrap());

    // An event appended through another process reaches this one's subscriber.
    let c = other
        .submit(
            &op,
            json!({"productId": "p1", "title": "from the other process"}),
        )
        .await;
    let m3 = next(&mut rx).await;
    assert_eq!(
        m3.data["aggregateId"],
        format!("p1/{}", c["id"].as_str().unwrap())
    );
    assert!(m3.id.unwrap() > m2.id.unwrap());
}

#[tokio::test]
async fn a_subscriber_that_falls_behind_gets_resync_and_is_closed() {
    use gigafactory_api::Settings;
    use gigafactory_domain::job::{Job, JobEvent, NewJob};
    use gigafactory_domain::{JobId, Priority, ProductId};
    use gigafactory_projections::log::{append, NewEvent};
    let settings = Settings {
        sse_buffer: 4,
        ..gigafactory_tests::test_settings()
    };
    let app =
        gigafactory_tests::spawn_app_with(gigafactory_tests::TestDb::create().await, settings)
            .await;
    let op = app.operator(&["p1"]).await;
    app.settle().await;
    // Subscribe, but do not read yet.
    let res = app
        .http
        .get(format!("{}/fleet/stream", app.base))
        .bearer_auth(&op)
        .send()
        .await
        .unwrap();
    // Far more than the buffer and the socket hold.
    let rows: Vec<NewEvent> = (0..3000)
        .map(|i| {
            let id = JobId(uuid::Uuid::now_v7());
            let product = ProductId("p1".into());
            let event = JobEvent::JobSubmitted {
                job: NewJob {
                    job_id: id,
                    product_id: product.clone(),
                    title: format!("bulk {i} {}", "x".repeat(200)),
                    payload: json!({}),
                    required_capabilities: vec![],
                    priority: Priority::Normal,
                    budget_usd: 0.0,
                    max_attempts: 3,
                    timeout_secs: None,
                },
                at: chrono::Utc::now(),
            };
            NewEvent::of::<Job>(
                &id.stream_id(&product),
                1,
                &event,
                Some("p1"),
                &["p1".to_string()],
            )
        })
        .collect();
    let mut tx = app.pool.begin().await.unwrap();
    append(&mut tx, &rows).await.unwrap();
    tx.commit().await.unwrap();
    app.settle().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Now read everything there is: it ends with `resync`, then the stream closes.
    let body = tokio::time::timeout(Duration::from_secs(20), res.text())
        .await
        .expect("the stream was closed")
        .unwrap();
    assert!(body.contains("event: resync"), "no resync message");
    let delivered = body.matches("event: JobSubmitted").count();
    assert!(
        delivered < 3000,
        "it was not buffered without bound ({delivered} delivered)"
    );
}

#[tokio::test]
async fn a_revoked_token_s_stream_ends() {
    let app = spawn_app().await;
    let issued = app
        .post(
            "/fleet/tokens",
            &app.admin_token,
            json!({"role": "auditor", "products": ["p1"], "name": "a"}),
        )
        .await;
    let token = issued.body["token"].as_str().unwrap().to_string();
    let token_id = issued.body["tokenId"].as_str().unwrap().to_string();
    let op = app.operator(&["p1"]).await;
    app.settle().await;
    let res = app
        .http
        .get(format!("{}/fleet/stream", app.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let reading = tokio::spawn(async move { res.text().await });
    assert_eq!(
        app.delete(&format!("/fleet/tokens/{token_id}"), &app.admin_token)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    app.submit(
        &op,
        json!({"productId": "p1", "title": "after the revocation"}),
    )
    .await;
    let body = tokio::time::timeout(Duration::from_secs(10), reading)
        .await
        .expect("the stream ended")
        .unwrap()
        .unwrap_or_default();
    assert!(
        !body.contains("after the revocation"),
        "nothing is delivered after the revocation"
    );
}

/// Adds `n` rows with `insert` (a statement of `generate_series(1, $1)`) and makes the
/// counts visible to the statistics views at once.
async fn grow(app: &TestApp, insert: &str, n: i64) {
    let mut conn = app.pool.acquire().await.unwrap();
    sqlx::query(insert)
        .bind(n)
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(&mut *conn)
        .await
        .unwrap();
}

/// `n` rows of `event_positions` (an append-only table), past any position the log
/// will give.
async fn grow_positions(app: &TestApp, n: i64) {
    grow(
        app,
        "INSERT INTO event_positions (position, event_id)
         SELECT 1000000000000 + c.n + g, 1000000000000 + c.n + g
         FROM (SELECT count(*) AS n FROM event_positions) c, generate_series(1, $1) g",
        n,
    )
    .await
}

/// `n` run rows (a read model analysed by autovacuum's tenth).
async fn grow_runs(app: &TestApp, n: i64) {
    grow(
        app,
        "INSERT INTO run_view (run_id, job_id, product_id, factory_id, epoch, outcome,
                               started_at, last_sequence)
         SELECT gen_random_uuid(), gen_random_uuid(), 'p1', gen_random_uuid(), 1, 'running',
                now(), 2
         FROM generate_series(1, $1)",
        n,
    )
    .await
}

/// How often `table` has been analysed, once the maintainer has had `settle`.
async fn analyses(app: &TestApp, table: &str, settle: Duration) -> i64 {
    tokio::time::sleep(settle).await;
    gigafactory_api::maintenance::refresh(&app.pool)
        .await
        .unwrap();
    sqlx::query_scalar(
        "SELECT analyze_count + autoanalyze_count FROM pg_stat_user_tables
         WHERE relname = $1 AND schemaname = current_schema()",
    )
    .bind(table)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

async fn position_analyses(app: &TestApp, settle: Duration) -> i64 {
    analyses(app, "event_positions", settle).await
}

async fn run_analyses(app: &TestApp, settle: Duration) -> i64 {
    analyses(app, "run_view", settle).await
}

#[tokio::test]
async fn append_only_tables_are_analysed_again_only_when_they_have_doubled() {
    let app = spawn_app().await;
    // Given a table of positions never analysed, 1,000 new rows make it due.
    grow_positions(&app, 1_000).await;
    assert_eq!(position_analyses(&app, Duration::from_millis(300)).await, 1);
    // 700 more (70 %: autovacuum's rule of a tenth would analyse again) do not,
    // even after the 5 s pause between analyses of one table,
    grow_positions(&app, 700).await;
    assert_eq!(
        position_analyses(&app, Duration::from_millis(5_200)).await,
        1
    );
    // but 1,700 since the last analysis of 1,000 rows do.
    grow_positions(&app, 1_000).await;
    assert_eq!(position_analyses(&app, Duration::from_millis(300)).await, 2);
}

/// Ends every session on `db` except the caller's (a restarted or failed-over server
/// looks like this to a pool).
async fn terminate_sessions(db: &TestDb) -> i64 {
    let admin = sqlx::PgPool::connect(&gigafactory_tests::server_url())
        .await
        .unwrap();
    let ended: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = $1 AND pid <> pg_backend_pid()) t",
    )
    .bind(&db.name)
    .fetch_one(&admin)
    .await
    .unwrap();
    admin.close().await;
    ended
}

/// Runs `n` statements at once on `pool`, each holding its connection a moment (so
/// they take `n` connections); how many succeeded.
async fn concurrent_sleeps(pool: &sqlx::PgPool, n: usize) -> usize {
    let calls = (0..n).map(|_| sqlx::query("SELECT pg_sleep(0.05)").execute(pool));
    futures::future::join_all(calls)
        .await
        .into_iter()
        .filter(Result::is_ok)
        .count()
}

#[tokio::test]
async fn pooled_connections_that_died_while_idle_are_replaced_before_use() {
    let db = TestDb::create().await;
    let pool = gigafactory_api::db::connect(&db.url, 6).await.unwrap();
    // Given six warm connections in the pool,
    assert_eq!(concurrent_sleeps(&pool, 6).await, 6);
    assert_eq!(pool.size(), 6);
    // when the server ends them all and they sit idle past the window in which a
    // pooled connection is trusted unchecked,
    assert_eq!(terminate_sessions(&db).await, 6);
    tokio::time::sleep(gigafactory_api::db::CHECK_IF_IDLE_FOR + Duration::from_millis(200)).await;
    // then every statement runs: each dead connection is found when it is acquired
    // and replaced, never handed out.
    assert_eq!(concurrent_sleeps(&pool, 6).await, 6);
    pool.close().await;
}

#[tokio::test]
async fn a_large_table_is_analysed_at_most_once_a_minute() {
    let app = spawn_app().await;
    // Given a small table analysed (600 new rows: due by a tenth's rule),
    grow_runs(&app, 600).await;
    assert_eq!(run_analyses(&app, Duration::from_millis(300)).await, 1);
    // when it grows past the large-table size and 5 s pass, it is analysed again
    // (a small table's pause),
    grow_runs(&app, gigafactory_api::maintenance::LARGE_TABLE_ROWS as i64).await;
    assert_eq!(run_analyses(&app, Duration::from_millis(5_200)).await, 2);
    // then, large, it is not analysed 5 s later though it changed by far more than
    // a tenth again.
    grow_runs(&app, 5_000).await;
    assert_eq!(run_analyses(&app, Duration::from_millis(5_200)).await, 2);
}
