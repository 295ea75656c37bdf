//! Fresh databases on one PostgreSQL server: every scenario gets its own, dropped at
//! the end (also when the scenario failed).

use gigafactory_api::db::with_database;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

/// Creates and drops the benchmark's databases through one admin connection.
pub struct Databases {
    server: String,
    admin: PgPool,
    prefix: String,
    created: std::sync::Mutex<Vec<String>>,
}

impl Databases {
    pub async fn connect(server: &str) -> anyhow::Result<Self> {
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(server)
            .await
            .map_err(|e| anyhow::anyhow!("connecting to PostgreSQL at the given URL: {e}"))?;
        Ok(Self {
            server: server.to_string(),
            admin,
            prefix: format!(
                "gf_bench_{}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
            created: Default::default(),
        })
    }

    /// A new empty database; returns its URL. Both sides get the same transport:
    /// without TLS unless the given URL names an `sslmode` (graphile-worker's driver
    /// does not use TLS unless asked; ours would by default when the server offers
    /// it, as Debian's does, and pay for it on every round trip).
    pub async fn fresh(&self, purpose: &str) -> anyhow::Result<String> {
        let name = format!("{}_{purpose}", self.prefix);
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&self.admin)
            .await?;
        self.created.lock().unwrap().push(name.clone());
        let url = with_database(&self.server, &name);
        Ok(if url.contains("sslmode=") {
            url
        } else if url.contains('?') {
            format!("{url}&sslmode=disable")
        } else {
            format!("{url}?sslmode=disable")
        })
    }

    /// A server setting (`SHOW`).
    pub async fn show(&self, setting: &str) -> anyhow::Result<String> {
        Ok(sqlx::query_scalar(&format!("SHOW {setting}"))
            .fetch_one(&self.admin)
            .await?)
    }

    /// Writes every dirty page out (`CHECKPOINT`): before a timed drain, so that no
    /// drain pays for the writes of the set-up or of the scenario before it (the
    /// graphile-worker drain does the same after adding its jobs).
    pub async fn checkpoint(&self) -> anyhow::Result<()> {
        sqlx::query("CHECKPOINT").execute(&self.admin).await?;
        Ok(())
    }

    /// Drops every database this run created.
    pub async fn drop_all(&self) {
        let names = std::mem::take(&mut *self.created.lock().unwrap());
        for name in names {
            if let Err(e) = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&self.admin)
                .await
            {
                tracing::warn!(database = %name, error = %e, "could not drop a benchmark database");
            }
        }
    }
}
