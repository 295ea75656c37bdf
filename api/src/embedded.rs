//! The embedded default: with no DATABASE_URL, `serve` runs a private PostgreSQL
//! from the machine's own binaries, on a unix socket in its data directory.
//!
//! - binaries: `pg_config --bindir`, else the highest `/usr/lib/postgresql/*/bin`;
//! - as root, PostgreSQL refuses to run: the directory is given to the `postgres`
//!   user and `initdb`/`pg_ctl` run as that user (the default directory,
//!   /var/lib/gigafactory, is not under root's 0700 home);
//! - a cluster left running (a killed `serve`) is adopted; a second `serve` on the
//!   same directory shares it; it is stopped when the last `serve` using it stops.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The socket's port number (only names the socket file: no TCP is opened).
const PORT: u16 = 5432;
const DATABASE: &str = "gigafactory";

pub struct EmbeddedPostgres {
    base: PathBuf,
    bin: PathBuf,
    run_as: Option<String>,
}

impl EmbeddedPostgres {
    /// /var/lib/gigafactory as root, else $XDG_DATA_HOME/gigafactory.
    pub fn default_dir() -> PathBuf {
        if is_root() {
            return PathBuf::from("/var/lib/gigafactory");
        }
        std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
            .unwrap_or_else(|| PathBuf::from("."))
            .join("gigafactory")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.base.join("pgdata")
    }

    pub fn socket_dir(&self) -> PathBuf {
        self.base.clone()
    }

    /// sqlx URL of the project's database on the socket.
    pub fn url(&self) -> String {
        self.url_for(DATABASE)
    }

    /// sqlx URL of database `db` on the socket.
    pub fn url_for(&self, db: &str) -> String {
        format!(
            "postgres:///{db}?host={}&port={PORT}&user=postgres",
            self.base.display()
        )
    }

    /// Finds the binaries, creates the cluster if needed, starts it unless it runs,
    /// and creates the database.
    pub async fn start(base: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(base).with_context(|| format!("creating {}", base.display()))?;
        let base = base.canonicalize()?;
        let bin = find_binaries()?;
        let run_as = is_root().then(|| "postgres".to_string());
        let pg = Self { base, bin, run_as };
        if let Some(user) = &pg.run_as {
            let status = Command::new("chown")
                .args(["-R", user])
                .arg(&pg.base)
                .status()?;
            if !status.success() {
                bail!(
                    "could not give {} to user {user} (is PostgreSQL installed?)",
                    pg.base.display()
                );
            }
        }
        if !pg.data_dir().join("PG_VERSION").exists() {
            pg.run(
                "initdb",
                &[
                    "-D",
                    &pg.data_dir().to_string_lossy(),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                ],
            )
            .context("initdb")?;
        }
        if !pg.running() {
            let opts = format!("-k {} -p {PORT} -c listen_addresses=''", pg.base.display());
            let log = pg.base.join("postgres.log");
            let started = pg.run(
                "pg_ctl",
                &[
                    "-D",
                    &pg.data_dir().to_string_lossy(),
                    "-w",
                    "-t",
                    "60",
                    "-l",
                    &log.to_string_lossy(),
                    "-o",
                    &opts,
                    "start",
                ],
            );
            // Another `serve` may have started it at the same moment.
            if started.is_err() && !pg.running() {
                started.with_context(|| format!("pg_ctl start (see {})", log.display()))?;
            }
        }
        pg.create_database().await?;
        Ok(pg)
    }

    fn running(&self) -> bool {
        self.run(
            "pg_ctl",
            &["-D", &self.data_dir().to_string_lossy(), "status"],
        )
        .is_ok()
    }

    fn run(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        let exe = self.bin.join(tool);
        let output = match &self.run_as {
            Some(user) => Command::new("runuser")
                .args(["-u", user, "--"])
                .arg(&exe)
                .args(args)
                .current_dir("/")
                .output(),
            None => Command::new(&exe).args(args).output(),
        }
        .with_context(|| format!("running {}", exe.display()))?;
        if !output.status.success() {
            bail!(
                "{tool} failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    async fn create_database(&self) -> anyhow::Result<()> {
        let admin_url = format!(
            "postgres:///postgres?host={}&port={PORT}&user=postgres",
            self.base.display()
        );
        let pool = crate::db::connect(&admin_url, 1)
            .await
            .context("connecting to the embedded PostgreSQL")?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(DATABASE)
                .fetch_one(&pool)
                .await?;
        if !exists {
            if let Err(e) = sqlx::query(&format!("CREATE DATABASE {DATABASE}"))
                .execute(&pool)
                .await
            {
                // A concurrent `serve` may have created it.
                let exists: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
                )
                .bind(DATABASE)
                .fetch_one(&pool)
                .await?;
                if !exists {
                    return Err(e.into());
                }
            }
        }
        pool.close().await;
        Ok(())
    }

    /// Stops the cluster unless another `serve` process still uses it.
    pub async fn stop_if_unused(self) {
        let others = async {
            let url = format!("postgres:///postgres?host={}&port={PORT}&user=postgres", self.base.display());
            let pool = crate::db::connect(&url, 1).await?;
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'gigafactory-%' AND application_name NOT LIKE $1 || '%'",
            )
            .bind(crate::db::process_prefix())
            .fetch_one(&pool)
            .await?;
            pool.close().await;
            Ok::<_, sqlx::Error>(n)
        }
        .await;
        match others {
            Ok(n) if n > 0 => tracing::info!(
                others = n,
                "embedded PostgreSQL left running for other serve processes"
            ),
            _ => {
                if let Err(e) = self.run(
                    "pg_ctl",
                    &[
                        "-D",
                        &self.data_dir().to_string_lossy(),
                        "-m",
                        "fast",
                        "-w",
                        "stop",
                    ],
                ) {
                    tracing::warn!(error = %e, "stopping the embedded PostgreSQL failed");
                }
            }
        }
    }
}

fn is_root() -> bool {
    // SAFETY-free check: root's uid is 0; `id -u` avoids a libc dependency.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `pg_config --bindir` if it holds `initdb`, else the highest
/// `/usr/lib/postgresql/<version>/bin`.
fn find_binaries() -> anyhow::Result<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() && dir.join("pg_ctl").exists() {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).context(
        "no PostgreSQL server binaries found (initdb, pg_ctl). Install them, e.g. \
         `apt-get install -y postgresql` on Debian/Ubuntu, or set DATABASE_URL to a running server",
    )
}
