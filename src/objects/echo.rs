//! The built-in `echo` object: every message a client sends comes back to it, and counts as
//! the object's activity. It runs the one echo loop (`ws::echo`). Warm path per message.

use super::registry::ObjectHandle;
use super::room::push_message;
use super::session::{Ended, Stops};
use crate::relay::close::Close;
use crate::relay::report::Cause;
use crate::relay::Stop;
use crate::ws::{close, close_with, drain_after, echo, End};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;

/// Echo on `ws` until the client leaves, weir shuts down and `grace` is over, or an order to
/// close it comes through `live` (an operator's kick, a drain, a quota): then the client gets the
/// ordered close and the record its cause (also when the object must move: 1012). Messages
/// pushed to the connection are sent to it.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut ws: WebSocketStream<S>,
    handle: ObjectHandle,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
    mut stops: Stops,
) -> Ended<S> {
    let mut ordered: Option<Stop> = None;
    let live = stops.live.clone();
    let stop = async {
        tokio::select! {
            () = drain_after(&mut shutdown, grace) => {}
            s = stops.stopped() => ordered = Some(s),
        }
    };
    let pushed = |cx: &mut std::task::Context<'_>| match &live {
        // Written by the object through its tap: counted as the object's traffic.
        Some(l) => l.poll_pushes(cx, false).map(|p| p.into_iter().map(push_message).collect()),
        None => std::task::Poll::Pending,
    };
    let end = echo(&mut ws, || handle.touch(), stop, pushed).await;
    if let Some(order) = ordered {
        close_with(&mut ws, order.client.0, &order.client.1).await;
        return (Some(ws.into_inner()), Some(order.cause));
    }
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
