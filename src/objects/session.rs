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
use crate::relay::close::Close;
use crate::relay::report::Cause;
use crate::relay::Stop;
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

/// What may order a session to close before its client leaves: the connection's live-set entry
/// (an operator's kick, a drain, a quota) and the object's move signal (its placement was
/// evicted: in a cluster, this instance lost its claim of the object).
pub struct Stops {
    /// The connection's live-set entry (none for a client relayed from another instance).
    pub live: Option<Arc<Live>>,
    /// Turns true when the object must move (`Lease::evicted`).
    pub moved: Option<watch::Receiver<bool>>,
    /// This instance's claim of the object, in a cluster: a member's message is acted on only
    /// while it stands.
    pub claim: Option<crate::cluster::ClaimCheck>,
}

impl Stops {
    /// The stops of a connection holding `lease`, with its live-set entry `live`.
    pub fn of(lease: &super::registry::Lease, live: Option<Arc<Live>>) -> Stops {
        Stops { live, moved: Some(lease.evicted()), claim: lease.claim_check() }
    }

    /// `None` while the object may go on serving; the move order once this instance's claim of
    /// it is gone.
    pub fn lost_claim(&self) -> Option<Stop> {
        self.claim.as_ref().filter(|c| !c.current()).map(|_| moved_stop())
    }

    /// The first order: the live entry's, or 1012 "object moved" once the move signal turns
    /// true. Cancel safe (a signal already given is seen again by the next call).
    pub async fn stopped(&mut self) -> Stop {
        let live = std::future::poll_fn(|cx| match &self.live {
            Some(l) => l.poll_stop(cx),
            None => std::task::Poll::Pending,
        });
        let moved = async {
            let given = match self.moved.as_mut() {
                Some(rx) => rx.wait_for(|m| *m).await.is_ok(),
                None => false,
            };
            if !given {
                // No signal, or its sender is gone (the placement ended): never.
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            stop = live => stop,
            () = moved => moved_stop(),
        }
    }
}

/// The order that closes a session whose object moved: 1012 "object moved".
fn moved_stop() -> Stop {
    let client = (Close::ObjectMoved.code(), "object moved".to_string());
    Stop { backend: client.clone(), client, cause: Cause::ObjectMoved }
}

/// Run `object` for object id `id` over the client stream `io`; `stops.live` is the
/// connection's live-set entry (operator pushes to it reach a room member; the echo takes none);
/// `join` is how a room member joins (fencing token, `?since=`; the echo ignores it).
#[allow(clippy::too_many_arguments)]
pub async fn run<S: AsyncRead + AsyncWrite + Unpin + Send>(
    object: Object,
    id: &str,
    io: S,
    handle: ObjectHandle,
    shutdown: watch::Receiver<bool>,
    grace: Duration,
    stops: Stops,
    join: room::Join,
) -> Ended<S> {
    let config = match &object {
        Object::Echo { max_message } => crate::ws::ws_config(*max_message, *max_message),
        // History written under a larger `room.max_message` is still replayed.
        Object::Room(rooms) => crate::ws::ws_config(rooms.max_message(), ROOM_MAX_SEND),
    };
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    match object {
        Object::Echo { .. } => echo::serve(ws, handle, shutdown, grace, stops).await,
        Object::Room(rooms) => room::serve(rooms, id, join, ws, handle, stops, shutdown, grace).await,
    }
}
