//! Fresh databases on one PostgreSQL server: every scenario gets its own, dropped at
//! the end (also when the scenario failed).

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

/// The server's URL with another database name.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map(|(b, q)| (b, Some(q)))
        .unwrap_or((url, None));
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = base[scheme_end..]
        .find('/')
        .map(|i| scheme_end + i)
        .unwrap_or(base.len());
    format!(
        "{}/{}{}",
        &base[..path_start],
        db,
        query.map(|q| format!("?{q}")).unwrap_or_default()
    )
}

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

    /// A new empty database; returns its URL.
    pub async fn fresh(&self, purpose: &str) -> anyhow::Result<String> {
        let name = format!("{}_{purpose}", self.prefix);
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&self.admin)
            .await?;
        self.created.lock().unwrap().push(name.clone());
        Ok(with_database(&self.server, &name))
    }

    /// A server setting (`SHOW`).
    pub async fn show(&self, setting: &str) -> anyhow::Result<String> {
        Ok(sqlx::query_scalar(&format!("SHOW {setting}"))
            .fetch_one(&self.admin)
            .await?)
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

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_the_database_and_keeps_the_query() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h:1/postgres?sslmode=disable", "x"),
            "postgres://u:p@h:1/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
    }
}
