//! The auditors' commands: `verify`, `replay`, `events export`.

use anyhow::Context;
use gigafactory_projections::audit::{read_for_audit, verify_log, AuditEvent, Report, Verifier};
use gigafactory_projections::log::assign_positions;
use gigafactory_projections::replay;
use indicatif::{ProgressBar, ProgressStyle};
use sqlx::PgPool;
use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

/// Gives positions to every committed event first, so verification sees them all.
async fn sequence_everything(pool: &PgPool) -> anyhow::Result<()> {
    while assign_positions(pool, 10_000).await? > 0 {}
    Ok(())
}

/// Prints a report; the exit status is failure unless it is ok.
pub fn print_report(report: &Report) -> bool {
    println!(
        "{}",
        serde_json::to_string_pretty(report).expect("report serialises")
    );
    report.ok
}

/// `gigafactory verify` against the database.
pub async fn verify_db(pool: &PgPool, expect: Option<(i64, String)>) -> anyhow::Result<bool> {
    sequence_everything(pool).await?;
    let mut conn = pool.acquire().await?;
    let report = verify_log(&mut conn, expect).await?;
    Ok(print_report(&report))
}

/// `gigafactory verify --from-file`: an exported copy, checked with no database.
pub fn verify_file(path: &Path, expect: Option<(i64, String)>) -> anyhow::Result<bool> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let lines: Vec<String> = std::io::BufReader::new(file)
        .lines()
        .collect::<Result<_, _>>()?;
    // A filtered export (one product, or after a position) has gaps in its positions.
    let first = lines.iter().find(|l| !l.trim().is_empty());
    let from_start = first
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["position"].as_i64())
                == Some(1)
        })
        .unwrap_or(true);
    let mut verifier = Verifier::new(from_start && expect.is_some(), expect);
    for (n, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("line {}: not JSON", n + 1))?;
        let event = AuditEvent::from_export_line(&value)
            .map_err(|e| anyhow::anyhow!("line {}: {e}", n + 1))?;
        verifier.feed(&event);
    }
    Ok(print_report(&verifier.finish()))
}

/// `gigafactory events export`: JSON lines, one event each, in log order.
pub async fn export(
    pool: &PgPool,
    after: i64,
    product: Option<&str>,
    out: &mut dyn Write,
) -> anyhow::Result<u64> {
    sequence_everything(pool).await?;
    let mut conn = pool.acquire().await?;
    let mut after = after;
    let mut written = 0;
    loop {
        let batch = read_for_audit(&mut conn, after, 5_000, product).await?;
        let Some(last) = batch.last() else { break };
        after = last.position;
        for e in &batch {
            serde_json::to_writer(&mut *out, &e.export_line())?;
            out.write_all(b"\n")?;
            written += 1;
        }
    }
    out.flush()?;
    Ok(written)
}

/// `gigafactory replay [--swap]`: rebuild into a fresh schema, compare, maybe swap.
pub async fn replay(pool: &PgPool, swap: bool) -> anyhow::Result<bool> {
    sequence_everything(pool).await?;
    let schema = "gf_replay";
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} replaying [{bar:40}] {pos}/{len} events ({per_sec}, eta {eta})",
            )
            .expect("valid template"),
        );
        bar
    });
    let started = std::time::Instant::now();
    let mut last_line = std::time::Instant::now();
    let applied = replay::rebuild_into(
        pool,
        schema,
        replay::REPLAY_BATCH,
        |done, head| match &bar {
            Some(b) => {
                b.set_length(head.max(0) as u64);
                b.set_position(done);
            }
            None => {
                if last_line.elapsed().as_secs() >= 5 {
                    eprintln!("replayed {done} of {head} events");
                    last_line = std::time::Instant::now();
                }
            }
        },
    )
    .await?;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "replayed {applied} events in {secs:.1} s ({:.0} events/s)",
        applied as f64 / secs.max(1e-9)
    );
    let differences = replay::compare(pool, schema).await?;
    for d in &differences {
        println!(
            "{}",
            serde_json::to_string(d).expect("difference serialises")
        );
    }
    if differences.is_empty() {
        eprintln!("the read models equal the log's replay (liveness, e.g. heartbeat times, is not history and is not compared)");
        if swap {
            replay::swap(pool, schema).await?;
            eprintln!("swapped the rebuilt read models in");
        }
    } else {
        eprintln!(
            "{} differences between the live read models and the replay",
            differences.len()
        );
        if swap {
            replay::swap(pool, schema).await?;
            eprintln!("swapped the rebuilt read models in (they are the log's truth)");
        }
    }
    Ok(differences.is_empty())
}
