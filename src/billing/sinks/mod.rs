//! Sinks: where spooled usage records are delivered. Each gets batches of JSON lines (one record
//! each) from its delivery loop and answers `Ok` only once it holds all of them; anything else is
//! retried (at-least-once). Records carry an idempotency key, so a sink that may see a batch twice
//! (after a crash between delivery and the cursor's update) can drop duplicates: PostgreSQL does
//! (`ON CONFLICT DO NOTHING`), `weir usage` does when it reads files, HTTP collectors get the key
//! as the CloudEvents `id`.

pub mod file;
pub mod http;
mod lines;
pub mod pg_tls;
pub mod postgres;

pub use lines::Lines;

use async_trait::async_trait;

/// A delivery target.
#[async_trait]
pub trait Sink: Send + Sync {
    /// Deliver `lines` (JSON records, in spool order); `Ok` only when all are stored. Taken by
    /// value: a failed batch is read again from the spool for the retry.
    async fn deliver(&self, lines: Lines) -> Result<(), String>;
}

/// Build the sink `config` describes.
pub fn build(config: &crate::config::Sink) -> Box<dyn Sink> {
    use crate::config::SinkKind;
    match &config.kind {
        SinkKind::File { path, rotate_bytes, rotate_interval } => {
            Box::new(file::FileSink::new(path, *rotate_bytes, *rotate_interval))
        }
        SinkKind::Http { addr, host, path, timeout, tls, auth_header } => {
            Box::new(http::HttpSink::new(addr, host, path, *timeout, tls.clone(), auth_header.clone()))
        }
        SinkKind::Postgres { url, table, ca_file } => {
            Box::new(postgres::PostgresSink::new(url, table, ca_file.clone()))
        }
    }
}
