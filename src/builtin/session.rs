//! A client connection to a built-in object, terminated inside weir with tokio-tungstenite.
//!
//! Warm path per connection: answer the upgrade (101 with the accept key; no extension and no
//! subprotocol are negotiated), wrap the client stream in a `Tap` so it is metered exactly like
//! a relayed connection, and run the object (`echo` here, `room` in `room.rs`) until the
//! client leaves or weir shuts down (after `server.grace_period`, a 1001 close). Per message:
//! the object's active time is touched.

use super::room::{self, Rooms};
use crate::objects::registry::ObjectHandle;
use crate::relay::pump::RelayReport;
use crate::relay::tap::Tap;
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Largest message the built-in echo accepts, bytes.
pub const ECHO_MAX_MESSAGE: usize = 16 << 20;

/// Which built-in object a session runs.
#[derive(Clone)]
pub enum Object {
    /// Echo every message back.
    Echo,
    /// A member of a broadcast room.
    Room(Arc<Rooms>),
}

/// The 101 answer for a client whose `Sec-WebSocket-Key` gave `accept`.
pub fn switching_protocols(accept: &str) -> Vec<u8> {
    format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n")
        .into_bytes()
}

/// Resolves when `shutdown` has been true for `grace` (never, if the sender goes away first).
pub async fn drain_after(shutdown: &mut watch::Receiver<bool>, grace: Duration) {
    if shutdown.wait_for(|down| *down).await.is_err() {
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(grace).await;
}

/// Run `object` for object id `id` over the tapped client stream; returns what it carried.
pub async fn run(
    object: Object,
    id: &str,
    tap: Tap,
    handle: ObjectHandle,
    shutdown: watch::Receiver<bool>,
    grace: Duration,
) -> Option<RelayReport> {
    let max = match &object {
        Object::Echo => ECHO_MAX_MESSAGE,
        Object::Room(rooms) => rooms.max_message(),
    };
    let config = WebSocketConfig::default().max_message_size(Some(max)).max_frame_size(Some(max));
    let ws = WebSocketStream::from_raw_socket(tap, Role::Server, Some(config)).await;
    let (tap, shutdown_closed) = match object {
        Object::Echo => echo(ws, handle, shutdown, grace).await,
        Object::Room(rooms) => room::serve(rooms, id, ws, handle, shutdown, grace).await,
    };
    tap.map(|t| t.report(shutdown_closed))
}

async fn echo(
    mut ws: WebSocketStream<Tap>,
    handle: ObjectHandle,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) -> (Option<Tap>, bool) {
    let drain = drain_after(&mut shutdown, grace);
    tokio::pin!(drain);
    loop {
        tokio::select! {
            () = &mut drain => {
                let _ = tokio::time::timeout(Duration::from_secs(1), room::close(&mut ws, 1001, "going away")).await;
                return (Some(ws.into_inner()), true);
            }
            msg = ws.next() => match msg {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                    handle.touch();
                    if ws.send(m).await.is_err() {
                        break;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
        }
    }
    (Some(ws.into_inner()), false)
}
