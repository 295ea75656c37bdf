//! Auditing the log: the hash chains, the positions, the log digest, and export.
//!
//! Every event's `hash = sha256(previous hash in its stream ‖ canonical bytes)` is
//! computed by the database on insert (see the hash-chain migration for the canonical
//! bytes). The [`Verifier`] recomputes every chain from the canonical bytes alone, so
//! it works the same on the live table and on an exported copy with no database.
//!
//! The **log digest** chains every event's *recomputed* hash (from its canonical
//! bytes and its stream's recomputed chain, never the stored one) in position order:
//! `digest(p) = sha256(digest(p-1) ‖ hash(p))`, `digest(0)` = 32 zero bytes. An
//! auditor who noted `(p, digest(p))` can later prove that prefix of the log unchanged:
//! an edited, deleted or re-ordered event, a deleted stream or a cut tail changes it,
//! even if whoever edited it also rewrote the stored hashes.

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, Row};
use std::collections::HashMap;

/// One event as the auditor sees it, with the exact bytes that were hashed.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    pub position: i64,
    pub product_id: Option<String>,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: Value,
    pub metadata: Value,
    pub recorded_at: DateTime<Utc>,
    pub hash: Vec<u8>,
    pub canonical: Vec<u8>,
}

/// The exact bytes an event's hash covers, as the stamping trigger builds them: each
/// field as `<byte length>:<UTF-8 bytes>\n`, in the order aggregate type, aggregate
/// id, sequence, event type, event version, payload text, metadata text. Built here,
/// not by the database, so every verification recomputes them independently of the
/// trigger that hashed them.
pub fn canonical_bytes(fields: [&str; 7]) -> Vec<u8> {
    let mut out = Vec::with_capacity(fields.iter().map(|f| f.len() + 8).sum());
    for field in fields {
        out.extend_from_slice(field.len().to_string().as_bytes());
        out.push(b':');
        out.extend_from_slice(field.as_bytes());
        out.push(b'\n');
    }
    out
}

/// The columns the audit reads of a positioned event (payload and metadata as their
/// stored text: the bytes that were hashed).
const AUDIT_COLUMNS: &str = "position, product_id, aggregate_type, aggregate_id, sequence,
     event_type, event_version, payload::text AS payload, metadata::text AS metadata,
     recorded_at, hash";

/// Positioned events after `after`, in log order, with their canonical bytes;
/// `product`: only events that product's callers may see.
pub async fn read_for_audit(
    conn: &mut PgConnection,
    after: i64,
    limit: i64,
    product: Option<&str>,
) -> Result<Vec<AuditEvent>, sqlx::Error> {
    let rows = audit_rows(conn, after, limit, product).await?;
    Ok(rows
        .iter()
        .map(|r| {
            let payload: &str = r.get("payload");
            let metadata: &str = r.get("metadata");
            AuditEvent {
                position: r.get("position"),
                product_id: r.get("product_id"),
                aggregate_type: r.get("aggregate_type"),
                aggregate_id: r.get("aggregate_id"),
                sequence: r.get("sequence"),
                event_type: r.get("event_type"),
                event_version: r.get("event_version"),
                // Parsed from the stored text, as the canonical bytes hold it (a jsonb
                // round trip could change how a number is written).
                payload: serde_json::from_str(payload).unwrap_or(Value::Null),
                metadata: serde_json::from_str(metadata).unwrap_or(Value::Null),
                recorded_at: r.get("recorded_at"),
                hash: r.get("hash"),
                canonical: row_canonical(r),
            }
        })
        .collect())
}

/// The canonical bytes of an audit row (columns as [`AUDIT_COLUMNS`] names them).
fn row_canonical(r: &sqlx::postgres::PgRow) -> Vec<u8> {
    let sequence: i64 = r.get("sequence");
    canonical_bytes([
        r.get("aggregate_type"),
        r.get("aggregate_id"),
        &sequence.to_string(),
        r.get("event_type"),
        r.get("event_version"),
        r.get("payload"),
        r.get("metadata"),
    ])
}

/// The audit's rows after `after` in log order (two statements, not `$3 IS NULL OR`,
/// so a generic plan stays free to use the visibility index for one product).
async fn audit_rows(
    conn: &mut PgConnection,
    after: i64,
    limit: i64,
    product: Option<&str>,
) -> Result<Vec<sqlx::postgres::PgRow>, sqlx::Error> {
    match product {
        None => {
            sqlx::query(&format!(
                "SELECT {AUDIT_COLUMNS} FROM positioned_events
                 WHERE position > $1 ORDER BY position LIMIT $2"
            ))
            .bind(after)
            .bind(limit)
            .fetch_all(&mut *conn)
            .await
        }
        Some(product) => {
            sqlx::query(&format!(
                "SELECT {AUDIT_COLUMNS} FROM positioned_events
                 WHERE position > $1 AND visible_to && ARRAY[$3::text]
                 ORDER BY position LIMIT $2"
            ))
            .bind(after)
            .bind(limit)
            .bind(product)
            .fetch_all(&mut *conn)
            .await
        }
    }
}

impl AuditEvent {
    /// One line of an export (JSON lines): the event, its hash, and the exact bytes
    /// that were hashed (base64), so an offline verifier never re-serialises JSON.
    pub fn export_line(&self) -> Value {
        json!({
            "position": self.position,
            "productId": self.product_id,
            "aggregateType": self.aggregate_type,
            "aggregateId": self.aggregate_id,
            "sequence": self.sequence,
            "type": self.event_type,
            "version": self.event_version,
            "payload": self.payload,
            "metadata": self.metadata,
            "recordedAt": self.recorded_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "hash": hex::encode(&self.hash),
            "canonical": base64::engine::general_purpose::STANDARD.encode(&self.canonical),
        })
    }

    /// Reads an export line back. The fields are checked against the canonical bytes
    /// by [`Verifier::feed`].
    pub fn from_export_line(line: &Value) -> Result<Self, String> {
        let s = |k: &str| {
            line[k]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("missing {k}"))
        };
        let i = |k: &str| line[k].as_i64().ok_or_else(|| format!("missing {k}"));
        Ok(Self {
            position: i("position")?,
            product_id: line["productId"].as_str().map(str::to_string),
            aggregate_type: s("aggregateType")?,
            aggregate_id: s("aggregateId")?,
            sequence: i("sequence")?,
            event_type: s("type")?,
            event_version: s("version")?,
            payload: line["payload"].clone(),
            metadata: line["metadata"].clone(),
            recorded_at: DateTime::parse_from_rfc3339(&s("recordedAt")?)
                .map_err(|e| e.to_string())?
                .with_timezone(&Utc),
            hash: hex::decode(s("hash")?).map_err(|e| e.to_string())?,
            canonical: base64::engine::general_purpose::STANDARD
                .decode(s("canonical")?)
                .map_err(|e| e.to_string())?,
        })
    }
}

/// Splits canonical bytes into their fields (`<len>:<bytes>\n` each).
pub fn canonical_fields(bytes: &[u8]) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let colon = rest.iter().position(|b| *b == b':')?;
        let len: usize = std::str::from_utf8(&rest[..colon]).ok()?.parse().ok()?;
        let start = colon + 1;
        let end = start.checked_add(len)?;
        if rest.get(end) != Some(&b'\n') {
            return None;
        }
        out.push(String::from_utf8(rest[start..end].to_vec()).ok()?);
        rest = &rest[end + 1..];
    }
    Some(out)
}

/// Something wrong with the log.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    pub position: Option<i64>,
    pub aggregate_id: Option<String>,
    pub kind: &'static str,
    pub detail: String,
    /// The product of the event at fault (for scoping what a caller is shown).
    #[serde(skip)]
    pub product_id: Option<String>,
}

/// The verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub ok: bool,
    pub events: u64,
    pub problems: Vec<Problem>,
    /// The last position verified and the log digest up to it.
    pub position: i64,
    pub digest: String,
}

/// A stream's last sequence, stored hash and recomputed hash.
type StreamTip = (i64, Vec<u8>, [u8; 32]);

/// What the chain checks need of one event (borrowed: the live verify builds none of
/// an event's JSON).
pub struct ChainLink<'a> {
    pub position: i64,
    pub product_id: Option<&'a str>,
    pub aggregate_type: &'a str,
    pub aggregate_id: &'a str,
    pub sequence: i64,
    pub hash: &'a [u8],
    pub canonical: &'a [u8],
}

/// Checks events fed in position order.
pub struct Verifier {
    /// Positions must be 1, 2, 3…: true for the whole log, false for a filtered copy.
    contiguous: bool,
    expect: Option<(i64, String)>,
    expect_checked: bool,
    /// Per stream: last sequence, last stored hash, last recomputed hash.
    /// By aggregate type, then stream id (looked up by `&str`, no key built per event).
    streams: HashMap<String, HashMap<String, StreamTip>>,
    digest: [u8; 32],
    last_position: i64,
    events: u64,
    problems: Vec<Problem>,
}

impl Verifier {
    /// `expect`: a noted `(position, digest)` the log must still reproduce.
    pub fn new(contiguous: bool, expect: Option<(i64, String)>) -> Self {
        Self {
            contiguous,
            expect,
            expect_checked: false,
            streams: HashMap::new(),
            digest: [0; 32],
            last_position: 0,
            events: 0,
            problems: Vec::new(),
        }
    }

    fn problem_at(
        &mut self,
        position: i64,
        aggregate_id: &str,
        product_id: Option<&str>,
        kind: &'static str,
        detail: String,
    ) {
        self.problems.push(Problem {
            position: Some(position),
            aggregate_id: Some(aggregate_id.to_string()),
            kind,
            detail,
            product_id: product_id.map(str::to_string),
        });
    }

    pub fn add_problem(&mut self, kind: &'static str, detail: String) {
        self.problems.push(Problem {
            position: None,
            aggregate_id: None,
            kind,
            detail,
            product_id: None,
        });
    }

    /// Checks an event whose fields and canonical bytes both came from outside (an
    /// export): the fields shown must be the fields hashed, then the chains.
    pub fn feed(&mut self, e: &AuditEvent) {
        match canonical_fields(&e.canonical) {
            Some(f) if f.len() == 7 => {
                let payload_matches =
                    serde_json::from_str::<Value>(&f[5]).ok().as_ref() == Some(&e.payload);
                if f[0] != e.aggregate_type
                    || f[1] != e.aggregate_id
                    || f[2] != e.sequence.to_string()
                    || f[3] != e.event_type
                    || f[4] != e.event_version
                    || !payload_matches
                {
                    self.problem_at(
                        e.position,
                        &e.aggregate_id,
                        e.product_id.as_deref(),
                        "fields_differ",
                        "the event's fields differ from its hashed bytes".into(),
                    );
                }
            }
            _ => self.problem_at(
                e.position,
                &e.aggregate_id,
                e.product_id.as_deref(),
                "canonical_malformed",
                "the hashed bytes are not canonical".into(),
            ),
        }
        self.link(&ChainLink {
            position: e.position,
            product_id: e.product_id.as_deref(),
            aggregate_type: &e.aggregate_type,
            aggregate_id: &e.aggregate_id,
            sequence: e.sequence,
            hash: &e.hash,
            canonical: &e.canonical,
        });
    }

    /// Checks one event's place in the log and in its stream's hash chain, and folds
    /// it into the digest.
    pub fn link(&mut self, e: &ChainLink<'_>) {
        self.events += 1;
        if e.position <= self.last_position {
            let detail = format!("position {} after {}", e.position, self.last_position);
            self.problem_at(
                e.position,
                e.aggregate_id,
                e.product_id,
                "position_order",
                detail,
            );
        } else if self.contiguous && e.position != self.last_position + 1 {
            // Reported at the first missing position.
            let detail = format!(
                "positions {} to {} are missing",
                self.last_position + 1,
                e.position - 1
            );
            self.problems.push(Problem {
                position: Some(self.last_position + 1),
                aggregate_id: None,
                kind: "position_gap",
                detail,
                product_id: None,
            });
        }
        let tip = self
            .streams
            .get(e.aggregate_type)
            .and_then(|of_type| of_type.get(e.aggregate_id));
        let (prev_seq, prev_stored, prev_computed) = match tip {
            Some((s, h, c)) => (*s, h.as_slice(), Some(*c)),
            None => (0, &[][..], None),
        };
        // Locally: does the stored hash chain from the stored previous one? (One
        // edited event is reported once, not for the rest of its stream.)
        let local: [u8; 32] = Sha256::new()
            .chain_update(prev_stored)
            .chain_update(e.canonical)
            .finalize()
            .into();
        // Globally: the chain recomputed from the bytes alone feeds the digest.
        let computed: [u8; 32] = match prev_computed {
            Some(c) => Sha256::new()
                .chain_update(c)
                .chain_update(e.canonical)
                .finalize()
                .into(),
            None => Sha256::new().chain_update(e.canonical).finalize().into(),
        };
        if e.sequence != prev_seq + 1 {
            let detail = format!("sequence {} follows {} in its stream", e.sequence, prev_seq);
            self.problem_at(
                e.position,
                e.aggregate_id,
                e.product_id,
                "sequence_gap",
                detail,
            );
        }
        if local.as_slice() != e.hash {
            self.problem_at(
                e.position,
                e.aggregate_id,
                e.product_id,
                "hash_mismatch",
                "the hash does not chain from the stream's previous event".into(),
            );
        }
        let tip = (e.sequence, e.hash.to_vec(), computed);
        let of_type = match self.streams.get_mut(e.aggregate_type) {
            Some(of_type) => of_type,
            None => self
                .streams
                .entry(e.aggregate_type.to_string())
                .or_default(),
        };
        match of_type.get_mut(e.aggregate_id) {
            Some(slot) => *slot = tip,
            None => {
                of_type.insert(e.aggregate_id.to_string(), tip);
            }
        }
        self.digest = Sha256::new()
            .chain_update(self.digest)
            .chain_update(computed)
            .finalize()
            .into();
        self.last_position = e.position;
        self.check_expectation(false);
    }

    fn check_expectation(&mut self, at_end: bool) {
        let Some((p, digest)) = self.expect.clone() else {
            return;
        };
        if self.expect_checked {
            return;
        }
        if self.last_position == p {
            self.expect_checked = true;
            if hex::encode(self.digest) != digest.to_lowercase() {
                self.add_problem(
                    "digest_mismatch",
                    format!("the log up to position {p} is not the one that was noted"),
                );
            }
        } else if self.last_position > p || at_end {
            self.expect_checked = true;
            let detail = if at_end && self.last_position < p {
                format!(
                    "the log ends at position {} before the noted position {p}",
                    self.last_position
                )
            } else {
                format!("position {p} is not in the log")
            };
            self.add_problem("digest_mismatch", detail);
        }
    }

    pub fn finish(mut self) -> Report {
        self.check_expectation(true);
        Report {
            ok: self.problems.is_empty(),
            events: self.events,
            problems: self.problems,
            position: self.last_position,
            digest: hex::encode(self.digest),
        }
    }
}

/// Whether the append-only and stamping triggers are installed and enabled.
pub async fn triggers_installed(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_trigger
         WHERE tgrelid = 'events'::regclass AND tgenabled <> 'D'
           AND tgname IN ('events_append_only', 'events_no_truncate', 'events_stamp')",
    )
    .fetch_one(&mut *conn)
    .await?;
    Ok(n == 3)
}

/// Verifies the whole live log (positioned events), streaming it in batches.
pub async fn verify_log(
    conn: &mut PgConnection,
    expect: Option<(i64, String)>,
) -> Result<Report, sqlx::Error> {
    let mut v = Verifier::new(true, expect);
    if !triggers_installed(conn).await? {
        v.add_problem(
            "trigger_missing",
            "the append-only or stamping trigger on events is missing or disabled".into(),
        );
    }
    // The fields are what the canonical bytes are built from here, so only the chains
    // are checked (an export's fields are checked against its bytes by `feed`).
    let mut after = 0;
    loop {
        let rows = audit_rows(conn, after, 5_000, None).await?;
        let Some(last) = rows.last() else { break };
        after = last.get("position");
        for r in &rows {
            let canonical = row_canonical(r);
            v.link(&ChainLink {
                position: r.get("position"),
                product_id: r.get("product_id"),
                aggregate_type: r.get("aggregate_type"),
                aggregate_id: r.get("aggregate_id"),
                sequence: r.get("sequence"),
                hash: r.get("hash"),
                canonical: &canonical,
            });
        }
    }
    Ok(v.finish())
}

/// Parses `<position>:<digest hex>`.
pub fn parse_expectation(s: &str) -> Option<(i64, String)> {
    let (p, d) = s.split_once(':')?;
    let p = p.parse().ok()?;
    (d.len() == 64 && d.chars().all(|c| c.is_ascii_hexdigit())).then(|| (p, d.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_fields_round_trip() {
        let bytes = b"3:job\n4:p/ab\n1:1\n0:\n";
        assert_eq!(canonical_fields(bytes).unwrap(), ["job", "p/ab", "1", ""]);
        assert!(canonical_fields(b"3:jo\n").is_none());
    }

    #[test]
    fn canonical_bytes_count_utf8_bytes_and_split_back_into_their_fields() {
        let fields = [
            "job",
            "p/ab",
            "12",
            "JobSubmitted",
            "1",
            r#"{"t":"ü✓"}"#,
            "{}",
        ];
        let bytes = canonical_bytes(fields);
        assert!(bytes.starts_with(b"3:job\n4:p/ab\n2:12\n12:JobSubmitted\n1:1\n"));
        // "ü" is 2 bytes and "✓" 3: the length is of the UTF-8 bytes, not the chars.
        assert!(bytes.ends_with("13:{\"t\":\"ü✓\"}\n2:{}\n".as_bytes()));
        assert_eq!(canonical_fields(&bytes).unwrap(), fields);
    }

    #[test]
    fn expectations_parse() {
        assert!(parse_expectation(&format!("12:{}", "a".repeat(64))).is_some());
        assert!(parse_expectation("12:xyz").is_none());
    }
}
