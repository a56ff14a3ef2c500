//! WebSockets weir terminates itself (the built-in echo backend and the built-in objects), over
//! tokio-tungstenite: their configuration and size limit, the one echo loop, closing with a
//! `Close`, and the shutdown drain. A leaf: it knows only the relay's `Close` table.
//!
//! Warm path (per connection and per message of a built-in session).

use crate::relay::close::Close;
use futures_util::{SinkExt, StreamExt};
use std::future::Future;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error, Message};
use tokio_tungstenite::WebSocketStream;

/// Largest message (and frame) the echo backend and the echo object accept, bytes. A larger one
/// gets a 1009 close (`Close::TooBig`).
pub const MAX_MESSAGE: usize = 16 << 20;
/// Time a peer gets to answer a close weir's echo sent before its stream is dropped.
pub const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// tokio-tungstenite's configuration for a built-in WebSocket server whose messages are at most
/// `max` bytes.
pub fn ws_config(max: usize) -> WebSocketConfig {
    WebSocketConfig::default().max_message_size(Some(max)).max_frame_size(Some(max))
}

/// How an echo (or any built-in session's read loop) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The peer closed or went away.
    Peer,
    /// `stop` resolved (weir is shutting down).
    Stopped,
    /// The peer sent a message over the limit.
    TooBig,
    /// The peer broke RFC 6455.
    ProtocolError,
}

impl End {
    /// The close weir sends for this end, if any (`Stopped` is the caller's to choose).
    pub fn close(self) -> Option<Close> {
        match self {
            End::Peer | End::Stopped => None,
            End::TooBig => Some(Close::TooBig),
            End::ProtocolError => Some(Close::ProtocolError),
        }
    }
}

/// What ends a session when its read side fails: `TooBig` for an oversized message,
/// `ProtocolError` for a broken frame, `Peer` otherwise.
pub fn end_of(error: &Error) -> End {
    match error {
        Error::Capacity(_) => End::TooBig,
        Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => End::Peer,
        Error::Protocol(_) => End::ProtocolError,
        // A `relay::tap::Tap` refuses the rest of a stream that broke RFC 6455 this way.
        Error::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => End::ProtocolError,
        _ => End::Peer,
    }
}

/// Echo every text and binary message on `ws` back until the peer closes, fails, sends a message
/// over the limit, or `stop` resolves; `on_message` runs once per echoed message. The caller
/// sends the close the end calls for (`close`).
pub async fn echo<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    mut on_message: impl FnMut(),
    stop: impl Future<Output = ()>,
) -> End {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return End::Stopped,
            msg = ws.next() => match msg {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                    on_message();
                    if ws.send(m).await.is_err() {
                        return End::Peer;
                    }
                }
                // tungstenite answers pings and closes itself; the stream ends after a close.
                Some(Ok(_)) => {}
                Some(Err(e)) => return end_of(&e),
                None => return End::Peer,
            },
        }
    }
}

/// Send `close` and read until the peer answers or the stream ends, at most `CLOSE_WAIT`.
pub async fn close<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>, close: Close) {
    let frame = CloseFrame { code: CloseCode::from(close.code()), reason: close.reason().into() };
    let handshake = async {
        if ws.send(Message::Close(Some(frame))).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    };
    let _ = tokio::time::timeout(CLOSE_WAIT, handshake).await;
}

/// Resolves when `shutdown` has been true for `grace` (never, if the sender goes away first).
pub async fn drain_after(shutdown: &mut watch::Receiver<bool>, grace: Duration) {
    if shutdown.wait_for(|down| *down).await.is_err() {
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(grace).await;
}
