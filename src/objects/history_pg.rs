//! The shared room history: every room of every namespace in PostgreSQL, for a cluster
//! (`cluster.history.postgres`), with appends fenced by the owner's token.
//!
//! Tables (created when the first connection opens, if absent):
//! - `weir_room_owner(namespace, room, token bigint, PRIMARY KEY(namespace, room))`: the
//!   highest fencing token that opened the room (`ClaimGuard::token()`, an etcd
//!   `create_revision`: a newer owner always has a higher one).
//! - `weir_room_history(namespace, room, seq bigint, kind smallint, payload bytea, token bigint,
//!   at timestamptz, PRIMARY KEY(namespace, room, seq))`: the messages (`kind` 0 text, 1 binary;
//!   `token` the writer's).
//!
//! Fencing: `open` raises the owner row to the caller's token (`GREATEST`) and reads it back: a
//! higher one means another instance owns the room now (`PgError::Fenced`). `append` inserts a
//! batch in one statement only while the owner row still holds the caller's token; it locks the
//! row `FOR SHARE`, so an `open` by a newer owner waits for an append in flight (and then reads
//! it), and an append after that `open` re-reads the row and inserts nothing (0 rows: fenced).
//! So a stale owner's appends never reach the new owner's history nor reuse its numbers.
//!
//! Warm path (the room's writer task, once per batch of messages) and cold (a room's open).
//! One connection for the process, opened on first use and again after it breaks (each call
//! reconnects when the last connection is closed or did not answer within `OP_TIMEOUT`; a
//! failed call is the caller's to handle:
//! the room closes its members with 1011, they reconnect and resume with `?since=`). Queries
//! of many rooms share the connection (tokio-postgres pipelines them).

use super::history::{kind_byte, kind_of_value, StoredMessage};
use super::kept::Kept;
use crate::billing::sinks::pg_tls;
use bytes::Bytes;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::Client;

/// `CREATE TABLE` for both tables.
pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS weir_room_owner (
        namespace text NOT NULL,
        room text NOT NULL,
        token bigint NOT NULL,
        PRIMARY KEY (namespace, room));
    CREATE TABLE IF NOT EXISTS weir_room_history (
        namespace text NOT NULL,
        room text NOT NULL,
        seq bigint NOT NULL,
        kind smallint NOT NULL,
        payload bytea NOT NULL,
        token bigint NOT NULL,
        at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (namespace, room, seq));";

/// Longest a statement may take; then the call fails (and the connection is replaced).
pub const OP_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgError {
    /// The room's owner row holds a higher token than the caller's: another instance owns it.
    Fenced,
    /// PostgreSQL could not be reached or refused the statement.
    Store(String),
}

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PgError::Fenced => f.write_str("fenced: a newer owner opened the room"),
            PgError::Store(e) => f.write_str(e),
        }
    }
}

fn store(e: tokio_postgres::Error) -> PgError {
    PgError::Store(pg_tls::describe(&e))
}

/// A sequence number as the `bigint` column holds it.
fn seq_value(seq: u64) -> Result<i64, PgError> {
    i64::try_from(seq).map_err(|_| PgError::Store(format!("sequence number {seq} is over bigint")))
}

/// The PostgreSQL room history of the process (every namespace).
pub struct PgHistory {
    url: String,
    ca_file: Option<PathBuf>,
    client: tokio::sync::Mutex<Option<Arc<Client>>>,
}

impl std::fmt::Debug for PgHistory {
    /// The connection string may hold a password: never shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgHistory").finish_non_exhaustive()
    }
}

impl PgHistory {
    /// A store at `url` (libpq connection string or `postgresql://` URL; TLS from its
    /// `sslmode`), trusting `ca_file` for TLS. Nothing is opened until first use.
    pub fn new(url: &str, ca_file: Option<PathBuf>) -> PgHistory {
        PgHistory { url: url.to_string(), ca_file, client: tokio::sync::Mutex::new(None) }
    }

    /// The connection, opened (and the tables created) if there is none or it is closed.
    async fn client(&self) -> Result<Arc<Client>, PgError> {
        let mut guard = self.client.lock().await;
        if let Some(c) = guard.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        *guard = None;
        let client =
            pg_tls::connect(&self.url, self.ca_file.as_deref(), "room history").await.map_err(PgError::Store)?;
        // Two instances creating the tables at once may collide once: the second try sees them.
        let create = async {
            if let Err(first) = client.batch_execute(SCHEMA).await {
                client.batch_execute(SCHEMA).await.map_err(|e| format!("create tables: {first}; {e}"))?;
            }
            Ok::<(), String>(())
        };
        tokio::time::timeout(OP_TIMEOUT, create)
            .await
            .map_err(|_| PgError::Store(format!("create tables: no answer within {OP_TIMEOUT:?}")))?
            .map_err(PgError::Store)?;
        let client = Arc::new(client);
        *guard = Some(client.clone());
        Ok(client)
    }

    /// Run `op` on the connection within `OP_TIMEOUT`; a timed-out connection is dropped (the
    /// next call opens another), as a broken one is.
    async fn with_client<T, F, Fut>(&self, op: F) -> Result<T, PgError>
    where
        F: FnOnce(Arc<Client>) -> Fut,
        Fut: Future<Output = Result<T, PgError>>,
    {
        let client = self.client().await?;
        match tokio::time::timeout(OP_TIMEOUT, op(client.clone())).await {
            Ok(r) => r,
            Err(_) => {
                let mut guard = self.client.lock().await;
                if guard.as_ref().is_some_and(|c| Arc::ptr_eq(c, &client)) {
                    *guard = None;
                }
                Err(PgError::Store(format!("no answer within {OP_TIMEOUT:?}")))
            }
        }
    }

    /// Open room `room` of `namespace` as its owner with `token`: raise the owner row to it and
    /// load the kept history (at most `keep` messages and `keep_bytes` payload bytes, the newest)
    /// and the newest sequence number. `Fenced` if a higher token opened it.
    pub async fn open(
        &self,
        namespace: &str,
        room: &str,
        token: i64,
        keep: usize,
        keep_bytes: u64,
    ) -> Result<Kept, PgError> {
        self.with_client(|client| async move {
            let row = client
                .query_one(
                    "INSERT INTO weir_room_owner (namespace, room, token) VALUES ($1, $2, $3)
                 ON CONFLICT (namespace, room) DO UPDATE SET token = GREATEST(weir_room_owner.token, EXCLUDED.token)
                 RETURNING token",
                    &[&namespace, &room, &token],
                )
                .await
                .map_err(store)?;
            let owner: i64 = row.try_get(0).map_err(store)?;
            if owner > token {
                return Err(PgError::Fenced);
            }
            let last: i64 = client
                .query_one(
                    "SELECT COALESCE(MAX(seq), 0) FROM weir_room_history WHERE namespace = $1 AND room = $2",
                    &[&namespace, &room],
                )
                .await
                .map_err(store)?
                .try_get(0)
                .map_err(store)?;
            let limit = i64::try_from(keep).unwrap_or(i64::MAX);
            let bytes = i64::try_from(keep_bytes).unwrap_or(i64::MAX);
            let rows = client
                .query(
                    "SELECT seq, kind, payload FROM (
                    SELECT seq, kind, payload, SUM(octet_length(payload)) OVER (ORDER BY seq DESC) AS running
                    FROM weir_room_history WHERE namespace = $1 AND room = $2
                    ORDER BY seq DESC LIMIT $3) AS newest
                 WHERE running <= $4 ORDER BY seq",
                    &[&namespace, &room, &limit, &bytes],
                )
                .await
                .map_err(store)?;
            let mut kept = Kept::new(keep, keep_bytes, u64::try_from(last).unwrap_or(0));
            for row in rows {
                let seq: i64 = row.try_get(0).map_err(store)?;
                let kind: i16 = row.try_get(1).map_err(store)?;
                let payload: Vec<u8> = row.try_get(2).map_err(store)?;
                let Some(kind) = kind_of_value(kind) else {
                    tracing::warn!(namespace, room, seq, kind, "room history: a row of unknown kind is skipped");
                    continue;
                };
                kept.push(u64::try_from(seq).unwrap_or(0), StoredMessage { kind, data: Bytes::from(payload) });
            }
            Ok(kept)
        })
        .await
    }

    /// Append `batch` (numbered messages, in order) to the room in one statement, if the owner
    /// row still holds `token`; `Fenced` if it does not (nothing was written).
    pub async fn append(
        &self,
        namespace: &str,
        room: &str,
        token: i64,
        batch: &[(u64, StoredMessage)],
    ) -> Result<(), PgError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut seqs = Vec::with_capacity(batch.len());
        for (seq, _) in batch {
            seqs.push(seq_value(*seq)?);
        }
        let kinds: Vec<i16> = batch.iter().map(|(_, m)| i16::from(kind_byte(m.kind))).collect();
        let payloads: Vec<&[u8]> = batch.iter().map(|(_, m)| m.data.as_ref()).collect();
        let inserted = self
            .with_client(|client| async move {
                client
                    .execute(
                        "INSERT INTO weir_room_history (namespace, room, seq, kind, payload, token, at)
                 SELECT $1::text, $2::text, m.seq, m.kind, m.payload, $3::bigint, now()
                 FROM unnest($4::bigint[], $5::smallint[], $6::bytea[]) AS m(seq, kind, payload)
                 WHERE EXISTS (SELECT 1 FROM weir_room_owner o
                               WHERE o.namespace = $1::text AND o.room = $2::text AND o.token = $3::bigint
                               FOR SHARE)",
                        &[&namespace, &room, &token, &seqs, &kinds, &payloads],
                    )
                    .await
                    .map_err(store)
            })
            .await?;
        if inserted == 0 {
            return Err(PgError::Fenced);
        }
        Ok(())
    }

    /// Delete the room's messages numbered below `below` (those no longer kept), if the owner
    /// row still holds `token`; returns the rows deleted.
    pub async fn trim(&self, namespace: &str, room: &str, token: i64, below: u64) -> Result<u64, PgError> {
        let below = seq_value(below)?;
        self.with_client(|client| async move {
            client
                .execute(
                    "DELETE FROM weir_room_history
                 WHERE namespace = $1 AND room = $2 AND seq < $3
                   AND EXISTS (SELECT 1 FROM weir_room_owner o
                               WHERE o.namespace = $1 AND o.room = $2 AND o.token = $4 FOR SHARE)",
                    &[&namespace, &room, &below, &token],
                )
                .await
                .map_err(store)
        })
        .await
    }
}
