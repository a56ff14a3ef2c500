//! A client connection to a built-in object, terminated inside weir with tokio-tungstenite.
//!
//! Warm path per connection: over the client stream (the gateway hands in a metered `Tap`), run
//! the object until the client leaves or weir shuts down (after `server.grace_period`, a 1001
//! close). Per message: the object's active time is touched. The 101 is the gateway's
//! (`http1::upgrade::switching_protocols`: no extension and no subprotocol are negotiated).

use super::echo;
use super::registry::ObjectHandle;
use super::room::{self, Rooms};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

/// Which built-in object a session runs.
#[derive(Clone)]
pub enum Object {
    /// Echo every message back.
    Echo,
    /// A member of a broadcast room.
    Room(Arc<Rooms>),
}

/// What a session hands back: the client stream (`None` if tungstenite lost it) and whether weir
/// closed it because it is shutting down.
pub type Ended<S> = (Option<S>, bool);

/// Run `object` for object id `id` over the client stream `io`.
pub async fn run<S: AsyncRead + AsyncWrite + Unpin + Send>(
    object: Object,
    id: &str,
    io: S,
    handle: ObjectHandle,
    shutdown: watch::Receiver<bool>,
    grace: Duration,
) -> Ended<S> {
    let max = match &object {
        Object::Echo => crate::ws::MAX_MESSAGE,
        Object::Room(rooms) => rooms.max_message(),
    };
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(crate::ws::ws_config(max))).await;
    match object {
        Object::Echo => echo::serve(ws, handle, shutdown, grace).await,
        Object::Room(rooms) => room::serve(rooms, id, ws, handle, shutdown, grace).await,
    }
}
