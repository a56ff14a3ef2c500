//! The built-in echo backend (`builtin:echo` in a pool): a WebSocket server on loopback that
//! sends every text and binary message back and answers pings and closes (tokio-tungstenite),
//! with the one echo loop (`ws::echo`) the echo *object* runs too.
//!
//! It is a real backend behind the relay, so traffic to it is metered like any other. Messages
//! are limited to `echo.max_message` (1009 beyond it) and echoed one at a time with bounded
//! buffers (`ws::ws_config`), so a client that never reads stalls in TCP instead of growing
//! weir's memory. Warm path per connection; it runs on its own background service runtime.
//!
//! The accept loop backs off when `accept(2)` fails for want of descriptors or memory
//! (`crate::accept`), counted as `weir_accept_errors_total{listener="echo"}`.

use crate::accept::AcceptErrors;
use crate::metrics::Metrics;
use crate::ws::{close, echo, ws_config};
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::{background_service, BackgroundService, GenBackgroundService};
use prometheus::IntCounterVec;
use std::sync::Mutex;
use std::time::Duration;

/// The `listener` label of the echo backend's accept errors.
pub const LISTENER: &str = "echo";
/// Time a connection gets to complete its upgrade before it is dropped (it holds a descriptor).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The echo server's accept loop.
pub struct Echo {
    listener: Mutex<Option<std::net::TcpListener>>,
    max_message: usize,
    accept_errors: IntCounterVec,
}

/// A background service serving `listener`: messages of at most `max_message` bytes, accept
/// errors counted in `metrics`.
pub fn service(listener: std::net::TcpListener, max_message: usize, metrics: &Metrics) -> GenBackgroundService<Echo> {
    let accept_errors = metrics.accept_errors.clone();
    background_service("builtin echo", Echo { listener: Mutex::new(Some(listener)), max_message, accept_errors })
}

#[async_trait]
impl BackgroundService for Echo {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let taken = self.listener.lock().ok().and_then(|mut l| l.take());
        let Some(listener) = taken.and_then(|l| tokio::net::TcpListener::from_std(l).ok()) else {
            tracing::error!("built-in echo: no listener to serve");
            return;
        };
        let mut errors = AcceptErrors::new(LISTENER, "built-in echo", &self.accept_errors);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                (stream, _) = errors.next(&listener) => {
                    tokio::spawn(serve(stream, self.max_message));
                }
            }
        }
    }
}

async fn serve(stream: tokio::net::TcpStream, max_message: usize) {
    let _ = stream.set_nodelay(true);
    let config = ws_config(max_message, max_message);
    let handshake = tokio_tungstenite::accept_async_with_config(stream, Some(config));
    let Ok(Ok(mut ws)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await else {
        return;
    };
    if let Some(c) = echo(&mut ws, || {}, std::future::pending(), |_| std::task::Poll::Pending).await.close() {
        close(&mut ws, c).await;
    }
}
