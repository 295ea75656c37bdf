//! Real `gigafactory` processes: kill -9 loses no acknowledged event; with no
//! DATABASE_URL the embedded PostgreSQL comes up.

use gigafactory_tests::{binary, free_port, wait_ready, TestDb, ADMIN_TOKEN};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn serve(db_url: &str, port: u16) -> Child {
    Command::new(binary())
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("DATABASE_URL", db_url)
        .env("GIGAFACTORY_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start gigafactory")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_event() {
    let db = TestDb::create().await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = serve(&db.url, port);
    assert!(
        wait_ready(&format!("{base}/readyz"), Duration::from_secs(60)).await,
        "server came up"
    );
    let http = reqwest::Client::new();
    let op: Value = http
        .post(format!("{base}/fleet/tokens"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"role": "operator", "products": ["p1"], "name": "o"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let op = op["token"].as_str().unwrap().to_string();

    // Submit in a loop; kill -9 the server in the middle of it.
    let writer = {
        let (http, base, op) = (http.clone(), base.clone(), op.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..100_000 {
                let r = http
                    .post(format!("{base}/fleet/jobs"))
                    .bearer_auth(&op)
                    .json(&json!({"productId": "p1", "title": format!("j{i}")}))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == StatusCode::CREATED => {
                        let v: Value = r.json().await.unwrap();
                        acked.push(v["id"].as_str().unwrap().to_string());
                    }
                    _ => break,
                }
            }
            acked
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    child.kill().expect("kill -9");
    child.wait().unwrap();
    let acked = writer.await.unwrap();
    assert!(
        acked.len() > 5,
        "some writes were acknowledged before the kill"
    );

    let mut child = serve(&db.url, port);
    assert!(
        wait_ready(&format!("{base}/readyz"), Duration::from_secs(60)).await,
        "server came back"
    );
    for id in &acked {
        let r = http
            .get(format!("{base}/fleet/jobs/{id}"))
            .bearer_auth(&op)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "acknowledged job {id} lost");
    }
    let pool = db.pool(1).await;
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'JobSubmitted'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(n as usize >= acked.len());
    pool.close().await;

    // SIGTERM: a waiting claim answers 204 at once and the process exits cleanly.
    let ft: Value = http
        .post(format!("{base}/fleet/factories/enroll"))
        .bearer_auth(&op)
        .json(&json!({"name": "f", "productIds": ["p1"], "capacity": 1}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ft = ft["token"].as_str().unwrap().to_string();
    // Fill its one slot, so the next claim has to wait.
    let first = http
        .post(format!("{base}/fleet/claim"))
        .bearer_auth(&ft)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let waiting = {
        let (http, base) = (http.clone(), base.clone());
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let r = http
                .post(format!("{base}/fleet/claim"))
                .bearer_auth(&ft)
                .json(&json!({"waitMs": 30000}))
                .send()
                .await
                .unwrap();
            (r.status(), started.elapsed())
        })
    };
    // And an open event stream.
    let stream = http
        .get(format!("{base}/fleet/stream"))
        .bearer_auth(&op)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let streaming = tokio::spawn(async move { stream.text().await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let (status, waited) = waiting.await.unwrap();
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(
        waited < Duration::from_secs(10),
        "the long poll ended on SIGTERM, not at waitMs"
    );
    let closed = tokio::time::timeout(Duration::from_secs(10), streaming).await;
    assert!(closed.is_ok(), "SIGTERM closed the stream");
    let mut exited = None;
    for _ in 0..100 {
        if let Some(s) = child.try_wait().unwrap() {
            exited = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(exited.expect("the server exited after SIGTERM").success());
}

#[tokio::test]
async fn serve_without_database_url_starts_the_embedded_postgres() {
    let dir = std::env::temp_dir().join(format!("gf-embedded-{}", uuid::Uuid::new_v4().simple()));
    let port = free_port();
    let mut child = Command::new(binary())
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env_remove("DATABASE_URL")
        .env_remove("GIGAFACTORY_ADMIN_TOKEN")
        .env("GIGAFACTORY_DATA_DIR", &dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start gigafactory");
    let ready = wait_ready(
        &format!("http://127.0.0.1:{port}/readyz"),
        Duration::from_secs(120),
    )
    .await;
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let pid_file_left = dir.join("pgdata/postmaster.pid").exists();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(ready, "/readyz answered 200 on the embedded PostgreSQL");
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    assert!(
        !pid_file_left,
        "the embedded PostgreSQL stopped with the server"
    );
}
