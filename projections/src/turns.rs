//! Transactions that begin holding their advisory locks: `BEGIN` and the lock waits
//! in one round trip.
//!
//! Writers of a stream take turns on its writer lock, a factory's claims on its
//! claims lock (renewals share it). Every such transaction used to spend a round
//! trip on `BEGIN` and another on its locks; here both go in the one simple query
//! that opens the transaction. The simple protocol takes no parameters, so each key
//! travels as hex (`decode(…, 'hex')`): nothing but `[0-9a-f]` is ever spliced into
//! the SQL, whatever a product id holds. The keys hash exactly as
//! `hashtextextended($1, 0)` hashes them in the parameterised statements, so both
//! forms of a lock exclude each other.
//!
//! The statements after the `BEGIN` run after every lock is held: each takes its own
//! snapshot (READ COMMITTED), so it sees what the previous holder committed.

use sqlx::{PgPool, Postgres, Transaction};

/// What a transaction waits for before its first statement.
#[derive(Debug, Clone, Default)]
pub struct Turn {
    /// Exclusive lock keys, taken in one global order (by hash) whatever the order
    /// given, so two transactions locking overlapping sets cannot deadlock.
    pub exclusive: Vec<String>,
    /// A shared lock key, taken after the exclusive ones.
    pub shared: Option<String>,
}

impl Turn {
    /// The exclusive lock of one key.
    pub fn of(key: impl Into<String>) -> Self {
        Self {
            exclusive: vec![key.into()],
            shared: None,
        }
    }

    /// The exclusive locks of several keys.
    pub fn of_all(keys: &[String]) -> Self {
        Self {
            exclusive: keys.to_vec(),
            shared: None,
        }
    }

    /// Also a shared lock of `key`, after the exclusive ones.
    pub fn sharing(mut self, key: impl Into<String>) -> Self {
        self.shared = Some(key.into());
        self
    }

    /// The simple query that opens the transaction and waits for the locks.
    fn statement(&self) -> String {
        let mut sql = String::from("BEGIN");
        match &self.exclusive[..] {
            [] => {}
            [key] => sql.push_str(&format!(
                "; SELECT pg_advisory_xact_lock({})",
                key_hash(key)
            )),
            keys => {
                let hexes = keys
                    .iter()
                    .map(|k| format!("'{}'", hex::encode(k)))
                    .collect::<Vec<_>>()
                    .join(", ");
                // OFFSET 0 keeps the sorted keys in their own step: locks in order.
                sql.push_str(&format!(
                    "; SELECT count(pg_advisory_xact_lock(k)) FROM
                       (SELECT DISTINCT hashtextextended(convert_from(decode(h, 'hex'), 'UTF8'), 0) AS k
                        FROM unnest(ARRAY[{hexes}]::text[]) AS h ORDER BY 1 OFFSET 0) AS keys"
                ))
            }
        }
        if let Some(key) = &self.shared {
            sql.push_str(&format!(
                "; SELECT pg_advisory_xact_lock_shared({})",
                key_hash(key)
            ));
        }
        sql
    }
}

/// `hashtextextended(key, 0)` with the key as a hex literal.
fn key_hash(key: &str) -> String {
    format!(
        "hashtextextended(convert_from(decode('{}', 'hex'), 'UTF8'), 0)",
        hex::encode(key)
    )
}

/// Begins a transaction on a pooled connection that holds `turn`'s locks once this
/// returns (one round trip). The locks are released when the transaction ends.
pub async fn begin(
    pool: &PgPool,
    turn: &Turn,
) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    pool.begin_with(turn.statement()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_reach_the_sql_as_hex_only() {
        let turn = Turn::of("job/p'); DROP TABLE events; --/x").sharing("factory-claims/f");
        let sql = turn.statement();
        assert!(!sql.contains("DROP"), "{sql}");
        assert!(sql.starts_with("BEGIN; SELECT pg_advisory_xact_lock("));
        assert!(sql.contains("pg_advisory_xact_lock_shared("));
    }

    #[test]
    fn several_keys_are_locked_in_one_sorted_step() {
        let sql = Turn::of_all(&["b".into(), "a".into()]).statement();
        assert!(sql.contains("ORDER BY 1 OFFSET 0"), "{sql}");
        assert!(sql.contains(&format!("'{}'", hex::encode("a"))));
        assert!(sql.contains(&format!("'{}'", hex::encode("b"))));
    }

    #[test]
    fn no_keys_is_a_plain_begin() {
        assert_eq!(Turn::default().statement(), "BEGIN");
    }
}
