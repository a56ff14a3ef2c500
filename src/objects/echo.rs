//! The built-in `echo` object: every message a client sends comes back to it, and counts as
//! the object's activity. It runs the one echo loop (`ws::echo`). Warm path per message.

use super::registry::ObjectHandle;
use super::session::Ended;
use crate::relay::close::Close;
use crate::relay::report::Cause;
use crate::ws::{close, drain_after, echo, End};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;

/// Echo on `ws` until the client leaves, or weir shuts down and `grace` is over.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut ws: WebSocketStream<S>,
    handle: ObjectHandle,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) -> Ended<S> {
    let end = echo(&mut ws, || handle.touch(), drain_after(&mut shutdown, grace)).await;
    let closing = if end == End::Stopped { Some(Close::ObjectShutdown) } else { end.close() };
    if let Some(c) = closing {
        close(&mut ws, c).await;
    }
    let cause = match end {
        End::Stopped => Some(Cause::Shutdown),
        End::TooBig => Some(Cause::MessageTooBig),
        End::Peer | End::ProtocolError => None,
    };
    (Some(ws.into_inner()), cause)
}
