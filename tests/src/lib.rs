//! Test harness: a fresh, uniquely named PostgreSQL database per test (created and
//! dropped here), the real router on a random port, and helpers that speak the HTTP
//! API like a client would.
//!
//! The server is `TEST_DATABASE_URL` (else `DATABASE_URL`, else
//! `postgres://postgres@127.0.0.1:5432/postgres`): any database on it works, tests
//! only create and drop their own.

use gigafactory_api::{App, AppState, Settings};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util_shim::CancelOnDrop;

mod tokio_util_shim {
    /// Cancels the server when the test's handle is dropped.
    pub struct CancelOnDrop(pub tokio::sync::watch::Sender<bool>);
    impl Drop for CancelOnDrop {
        fn drop(&mut self) {
            let _ = self.0.send(true);
        }
    }
}

/// The PostgreSQL server tests run against (its maintenance database URL):
/// `TEST_DATABASE_URL`, else `DATABASE_URL`, else a server on 127.0.0.1:5432, else a
/// private cluster the harness starts from the machine's PostgreSQL binaries (the
/// embedded default of `gigafactory serve`, in the system temp directory; it keeps
/// running for the next test run).
pub fn server_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("TEST_DATABASE_URL").or_else(|_| std::env::var("DATABASE_URL")) {
            return url;
        }
        let local = std::net::SocketAddr::from(([127, 0, 0, 1], 5432));
        if std::net::TcpStream::connect_timeout(&local, Duration::from_millis(300)).is_ok() {
            return "postgres://postgres@127.0.0.1:5432/postgres".to_string();
        }
        std::thread::spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let dir = std::env::temp_dir().join("gigafactory-test-postgres");
                let pg = gigafactory_api::embedded::EmbeddedPostgres::start(&dir)
                    .await
                    .expect("no PostgreSQL reachable and none could be started: install PostgreSQL or set TEST_DATABASE_URL");
                pg.url_for("postgres")
            })
        })
        .join()
        .expect("starting a private PostgreSQL")
    })
    .clone()
}

/// A fresh database, dropped (forcefully) when the last handle goes.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn create() -> Arc<Self> {
        let name = format!("gf_test_{}", uuid::Uuid::new_v4().simple());
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&server_url())
            .await
            .expect("cannot reach PostgreSQL for tests: start it or set TEST_DATABASE_URL");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .expect("create test database");
        admin.close().await;
        let url = gigafactory_api::db::with_database(&server_url(), &name);
        Arc::new(Self { name, url })
    }

    /// A pool on this database with migrations applied.
    pub async fn pool(&self, max: u32) -> PgPool {
        let pool = gigafactory_api::db::connect(&self.url, max)
            .await
            .expect("connect test database");
        gigafactory_api::db::migrate(&pool)
            .await
            .expect("migrate test database");
        pool
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop happens inside a runtime; do the async work on a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(admin) = PgPoolOptions::new()
                    .max_connections(1)
                    .connect(&server_url())
                    .await
                {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&admin)
                        .await;
                    admin.close().await;
                }
            });
        })
        .join();
    }
}

/// A running server on a random port.
pub struct TestApp {
    pub base: String,
    /// Where this server keeps artifact bytes (a fresh directory).
    pub artifact_dir: PathBuf,
    pub admin_token: String,
    pub pool: PgPool,
    pub state: AppState,
    pub db: Arc<TestDb>,
    pub http: reqwest::Client,
    _stop: CancelOnDrop,
    pub server: Option<JoinHandle<()>>,
}

/// Settings for tests: a fast sweeper.
pub fn test_settings() -> Settings {
    Settings {
        sweep_interval: Duration::from_millis(100),
        ..Settings::default()
    }
}

pub const ADMIN_TOKEN: &str = "gf_test_admin_token_for_integration_tests_only";

/// A fresh database and a server on it.
pub async fn spawn_app() -> TestApp {
    spawn_app_on(TestDb::create().await).await
}

/// Another server (own pool, own workers) on an existing database.
pub async fn spawn_app_on(db: Arc<TestDb>) -> TestApp {
    spawn_app_with(db, test_settings()).await
}

pub async fn spawn_app_with(db: Arc<TestDb>, settings: Settings) -> TestApp {
    let pool = db.pool(20).await;
    let artifact_dir =
        std::env::temp_dir().join(format!("gf-artifacts-{}", uuid::Uuid::new_v4().simple()));
    let store = gigafactory_api::artifacts::open(None, &artifact_dir).expect("artifact directory");
    let state = AppState::new(
        pool.clone(),
        Some(gigafactory_api::auth::hash_token(ADMIN_TOKEN)),
        settings,
    )
    .with_artifacts(store);
    let app = App::start(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, mut rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(async move {
        let stop = async move {
            let _ = rx.wait_for(|v| *v).await;
        };
        let _ = app.serve(listener, stop).await;
    });
    TestApp {
        base,
        artifact_dir,
        admin_token: ADMIN_TOKEN.to_string(),
        pool,
        state,
        db,
        http: reqwest::Client::new(),
        _stop: CancelOnDrop(tx),
        server: Some(server),
    }
}

/// A response: status and JSON body (Null when empty).
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: StatusCode,
    pub body: Value,
}

impl Resp {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.artifact_dir);
    }
}

impl TestApp {
    /// Files under the artifact directory.
    pub fn artifact_files(&self) -> usize {
        fn walk(p: &std::path::Path) -> usize {
            std::fs::read_dir(p)
                .map(|rd| {
                    rd.flatten()
                        .map(|e| {
                            if e.path().is_dir() {
                                walk(&e.path())
                            } else {
                                1
                            }
                        })
                        .sum()
                })
                .unwrap_or(0)
        }
        walk(&self.artifact_dir)
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Resp {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let res = req.send().await.expect("request");
        let status = res.status();
        let text = res.text().await.unwrap_or_default();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Resp { status, body }
    }

    pub async fn get(&self, path: &str, token: &str) -> Resp {
        self.call(reqwest::Method::GET, path, Some(token), None)
            .await
    }
    pub async fn post(&self, path: &str, token: &str, body: Value) -> Resp {
        self.call(reqwest::Method::POST, path, Some(token), Some(&body))
            .await
    }
    pub async fn patch(&self, path: &str, token: &str, body: Value) -> Resp {
        self.call(reqwest::Method::PATCH, path, Some(token), Some(&body))
            .await
    }
    pub async fn delete(&self, path: &str, token: &str) -> Resp {
        self.call(reqwest::Method::DELETE, path, Some(token), None)
            .await
    }

    /// A new token of `role` for `products`.
    pub async fn token(&self, role: &str, products: &[&str]) -> String {
        let r = self
            .post(
                "/fleet/tokens",
                &self.admin_token,
                json!({"role": role, "products": products, "name": role}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        r.body["token"].as_str().unwrap().to_string()
    }

    pub async fn operator(&self, products: &[&str]) -> String {
        self.token("operator", products).await
    }

    /// Enrolls a factory: (factoryId, token).
    pub async fn enroll(
        &self,
        op: &str,
        products: &[&str],
        caps: &[&str],
        capacity: u32,
    ) -> (String, String) {
        let r = self
            .post(
                "/fleet/factories/enroll",
                op,
                json!({"name": "factory", "productIds": products, "capabilities": caps, "capacity": capacity}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        (
            r.body["factoryId"].as_str().unwrap().to_string(),
            r.body["token"].as_str().unwrap().to_string(),
        )
    }

    /// Submits a job and returns it.
    pub async fn submit(&self, op: &str, spec: Value) -> Value {
        let r = self.post("/fleet/jobs", op, spec).await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        r.body
    }

    /// Claims once: the claim body, or None on 204.
    pub async fn claim(&self, factory: &str) -> Option<Value> {
        let r = self.post("/fleet/claim", factory, json!({})).await;
        match r.status {
            StatusCode::OK => Some(r.body),
            StatusCode::NO_CONTENT => None,
            s => panic!("claim answered {s}: {:?}", r.body),
        }
    }

    /// Number of events in the log (positioned or not).
    pub async fn event_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// One round of sequencer + projector: projects what can be positioned now.
    pub async fn settle_once(&self) {
        gigafactory_api::background::catch_up(&self.state)
            .await
            .expect("catch up");
    }

    /// Waits until every committed event is positioned and projected. (Other tests'
    /// open transactions on the same server can hold positions back for a moment.)
    pub async fn settle(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            self.settle_once().await;
            let pending = gigafactory_projections::log::newest_unpositioned(&self.pool)
                .await
                .unwrap();
            if pending.is_none() {
                self.settle_once().await;
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "events stayed unpositioned for 30 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The `gigafactory` binary, built on first use (tests that run real processes).
pub fn binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let status = std::process::Command::new(env!("CARGO"))
            .args([
                "build",
                "--quiet",
                "-p",
                "gigafactory-api",
                "--bin",
                "gigafactory",
            ])
            .current_dir(&root)
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the gigafactory binary failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        let target = if target.is_absolute() {
            target
        } else {
            root.join(target)
        };
        target.join("debug").join("gigafactory")
    })
    .clone()
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `url` until it answers 200 or `timeout` passes.
pub async fn wait_ready(url: &str, timeout: Duration) -> bool {
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if let Ok(r) = client.get(url).send().await {
            if r.status() == StatusCode::OK {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
