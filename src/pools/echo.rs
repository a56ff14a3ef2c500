//! The built-in echo backend (`builtin:echo` in a pool): a WebSocket server on loopback that
//! sends every text and binary message back and answers pings and closes (tokio-tungstenite),
//! with the one echo loop (`ws::echo`) the echo *object* runs too.
//!
//! It is a real backend behind the relay, so traffic to it is metered like any other. Warm path
//! per connection; it runs on its own background service runtime.

use crate::ws::{close, echo, ws_config, MAX_MESSAGE};
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::{background_service, BackgroundService, GenBackgroundService};
use std::sync::Mutex;

/// The echo server's accept loop.
pub struct Echo {
    listener: Mutex<Option<std::net::TcpListener>>,
}

/// A background service serving `listener`.
pub fn service(listener: std::net::TcpListener) -> GenBackgroundService<Echo> {
    background_service("builtin echo", Echo { listener: Mutex::new(Some(listener)) })
}

#[async_trait]
impl BackgroundService for Echo {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let taken = self.listener.lock().ok().and_then(|mut l| l.take());
        let Some(listener) = taken.and_then(|l| tokio::net::TcpListener::from_std(l).ok()) else {
            tracing::error!("built-in echo: no listener to serve");
            return;
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        tokio::spawn(serve(stream));
                    }
                    Err(e) => tracing::warn!(error = %e, "built-in echo: accept failed"),
                },
            }
        }
    }
}

async fn serve(stream: tokio::net::TcpStream) {
    let _ = stream.set_nodelay(true);
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(stream, Some(ws_config(MAX_MESSAGE))).await else {
        return;
    };
    if let Some(c) = echo(&mut ws, || {}, std::future::pending()).await.close() {
        close(&mut ws, c).await;
    }
}
