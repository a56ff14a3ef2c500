//! The PostgreSQL sink: records in a table weir creates, inserted in batches that ignore keys
//! already there (`ON CONFLICT (idempotency_key) DO NOTHING`), so a batch delivered twice (after a
//! crash, or a lost answer) is stored once.
//!
//! Background path (a delivery loop). The connection is opened on first use and after any error
//! (the delivery loop backs off between attempts); one statement per batch, with the keys and
//! bodies as two arrays. Columns: `idempotency_key` (primary key), `record`, `at`,
//! `connection_id`, `tenant`, `route`, `namespace`, `object_id`, `body` (the whole record,
//! jsonb), `inserted_at`. TLS follows the connection string's `sslmode` (`pg_tls`).

use super::pg_tls;
use super::{Lines, Sink};
use async_trait::async_trait;
use std::path::PathBuf;
use tokio::sync::Mutex;
use tokio_postgres::Client;

/// A PostgreSQL table.
pub struct PostgresSink {
    url: String,
    table: String,
    /// The `ca_file` setting (over the url's `sslrootcert`).
    ca_file: Option<PathBuf>,
    client: Mutex<Option<Client>>,
}

impl PostgresSink {
    /// A sink for `table` at `url` (a libpq-style connection string or `postgresql://` URL),
    /// trusting `ca_file` for TLS (else the url's `sslrootcert`, else the system roots).
    pub fn new(url: &str, table: &str, ca_file: Option<PathBuf>) -> PostgresSink {
        PostgresSink { url: url.into(), table: table.into(), ca_file, client: Mutex::new(None) }
    }

    /// `CREATE TABLE` (and its index) for `table`.
    pub fn schema(table: &str) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {table} (
                idempotency_key text PRIMARY KEY,
                record text NOT NULL,
                at timestamptz NOT NULL,
                connection_id text,
                tenant text,
                route text,
                namespace text,
                object_id text,
                body jsonb NOT NULL,
                inserted_at timestamptz NOT NULL DEFAULT now());
             CREATE INDEX IF NOT EXISTS {table}_at ON {table} (at);"
        )
    }

    async fn connect(&self) -> Result<Client, String> {
        let client = pg_tls::connect(&self.url, self.ca_file.as_deref(), "postgres sink").await?;
        client.batch_execute(&Self::schema(&self.table)).await.map_err(|e| format!("create table: {e}"))?;
        Ok(client)
    }
}

#[async_trait]
impl Sink for PostgresSink {
    async fn deliver(&self, lines: Lines) -> Result<(), String> {
        let mut keys = Vec::with_capacity(lines.len());
        let mut bodies = Vec::with_capacity(lines.len());
        for l in lines.iter() {
            let v: serde_json::Value =
                serde_json::from_slice(l).map_err(|e| format!("spooled record is not JSON: {e}"))?;
            keys.push(v["idempotency_key"].as_str().unwrap_or_default().to_string());
            bodies.push(String::from_utf8_lossy(l).into_owned());
        }
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            *guard = Some(self.connect().await?);
        }
        let Some(client) = guard.as_ref() else { return Err("no connection".into()) };
        let t = &self.table;
        let sql = format!(
            "INSERT INTO {t} (idempotency_key, record, at, connection_id, tenant, route, namespace, object_id, body)
             SELECT k, b->>'record', (b->>'at')::timestamptz, b->>'connection_id', b->>'tenant', b->>'route',
                    COALESCE(b->'object'->>'namespace', b->>'namespace'), COALESCE(b->'object'->>'id', b->>'object_id'), b
             FROM (SELECT unnest($1::text[]) AS k, unnest($2::text[])::jsonb AS b) AS x
             ON CONFLICT (idempotency_key) DO NOTHING"
        );
        match client.execute(&sql, &[&keys, &bodies]).await {
            Ok(_) => Ok(()),
            Err(e) => {
                *guard = None;
                Err(format!("insert: {e}"))
            }
        }
    }
}
