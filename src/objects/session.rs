//! A client connection to a built-in object, terminated inside weir with tokio-tungstenite.
//!
//! Warm path per connection: over the client stream (the gateway hands in a metered `Tap`), run
//! the object until the client leaves or weir shuts down (after `server.grace_period`, a 1001
//! close). Per message: the object's active time is touched. The 101 is the gateway's
//! (`http1::upgrade::switching_protocols`: no extension and no subprotocol are negotiated).
//!
//! Buffers and limits come from `ws::ws_config`: a small read buffer grown on demand (an idle
//! member costs a few KiB, not tungstenite's default 128 KiB) and a bounded write buffer. The
//! echo accepts and sends messages of at most `echo.max_message` bytes; a room member sends at
//! most `room.max_message` bytes and is sent any message the room's history may hold.

use super::echo;
use super::registry::ObjectHandle;
use super::room::{self, Rooms};
use crate::metering::live::Live;
use crate::relay::report::Cause;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

/// Which built-in object a session runs.
#[derive(Clone)]
pub enum Object {
    /// Echo every message back; messages up to `max_message` bytes (`echo.max_message`).
    Echo {
        /// The largest message accepted, bytes.
        max_message: usize,
    },
    /// A member of a broadcast room.
    Room(Arc<Rooms>),
}

/// Largest message sent to a room member, bytes: the largest message the history stores.
const ROOM_MAX_SEND: usize = 64 << 20;

/// What a session hands back: the client stream (`None` if tungstenite lost it) and the cause
/// when the object closed it for a reason of its own (shutdown, a message over the limit).
pub type Ended<S> = (Option<S>, Option<Cause>);

/// Run `object` for object id `id` over the client stream `io`; `live` is the connection's
/// live-set entry (operator pushes to it reach a room member; the echo takes none); `join` is
/// how a room member joins (fencing token, `?since=`; the echo ignores it).
#[allow(clippy::too_many_arguments)]
pub async fn run<S: AsyncRead + AsyncWrite + Unpin + Send>(
    object: Object,
    id: &str,
    io: S,
    handle: ObjectHandle,
    shutdown: watch::Receiver<bool>,
    grace: Duration,
    live: Option<Arc<Live>>,
    join: room::Join,
) -> Ended<S> {
    let config = match &object {
        Object::Echo { max_message } => crate::ws::ws_config(*max_message, *max_message),
        // History written under a larger `room.max_message` is still replayed.
        Object::Room(rooms) => crate::ws::ws_config(rooms.max_message(), ROOM_MAX_SEND),
    };
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    match object {
        Object::Echo { .. } => echo::serve(ws, handle, shutdown, grace, live).await,
        Object::Room(rooms) => room::serve(rooms, id, join, ws, handle, live, shutdown, grace).await,
    }
}
