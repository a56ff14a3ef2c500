//! WebSockets weir terminates itself (the built-in echo backend and the built-in objects), over
//! tokio-tungstenite: their configuration (buffer sizes and limits), the echo's message limit, the
//! one echo loop, closing with a `Close`, and the shutdown drain. A leaf: it knows only the
//! relay's `Close` table and the config's default.
//!
//! Memory per connection: tungstenite allocates its read buffer (`READ_BUFFER`) eagerly and
//! zero-fills it on the first read, and grows it on demand to hold one whole frame; its write
//! buffer starts empty, holds at most `WRITE_BUFFER` plus one message (`ws_config`), and keeps the
//! capacity it reached. So an idle connection costs about `READ_BUFFER`, and a connection that
//! carried a message of `n` bytes keeps up to about `2n` (one read, one written) until it ends.
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

/// The default largest message (and frame) the echo backend and the echo object accept, bytes
/// (`echo.max_message`); a larger one gets a 1009 close (`Close::TooBig`).
pub const MAX_MESSAGE: usize = crate::config::validate::DEFAULT_ECHO_MAX_MESSAGE;
/// Time a peer gets to answer a close weir's echo sent before its stream is dropped.
pub const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// tungstenite's read buffer, bytes: allocated (and zero-filled) per connection, grown on demand
/// to hold one whole frame. Small, because most built-in connections are idle most of the time.
pub const READ_BUFFER: usize = 4 << 10;
/// tungstenite's write buffer target, bytes: messages queued without a flush are written once
/// this much is buffered (a room's batch); `flush` always writes everything.
pub const WRITE_BUFFER: usize = 8 << 10;
/// Room in the write buffer beyond `WRITE_BUFFER` plus one message: the largest frame header and
/// the control frames tungstenite queues itself (a pong or a close, at most 129 bytes each).
const WRITE_SLACK: usize = 1 << 10;

/// tokio-tungstenite's configuration for a built-in WebSocket server that accepts messages (and
/// frames) of at most `max_in` bytes and sends messages of at most `max_out` bytes: a small read
/// buffer grown on demand, and a write buffer bounded at `WRITE_BUFFER` plus one message (once
/// the socket is full, tokio-tungstenite writes the buffer out before it takes another message;
/// a message over `max_out` fails with `WriteBufferFull` instead of being buffered).
pub fn ws_config(max_in: usize, max_out: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(WRITE_BUFFER + max_out + WRITE_SLACK)
        .max_message_size(Some(max_in))
        .max_frame_size(Some(max_in))
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
/// over the limit, or `stop` resolves; `on_message` runs once per echoed message. Messages
/// `pushed` hands over (an operator's push; `Poll::Pending` when none) are sent between echoes.
/// The caller sends the close the end calls for (`close`).
///
/// Backpressure: one message at a time. While an echo is being written (the peer does not read),
/// nothing more is read, so the peer's writes stall in TCP and weir holds at most one message in
/// each direction; `stop` still ends a stalled write.
pub async fn echo<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    mut on_message: impl FnMut(),
    stop: impl Future<Output = ()>,
    mut pushed: impl FnMut(&mut std::task::Context<'_>) -> std::task::Poll<Vec<Message>>,
) -> End {
    tokio::pin!(stop);
    loop {
        let msg = tokio::select! {
            () = &mut stop => return End::Stopped,
            msgs = std::future::poll_fn(&mut pushed) => {
                for m in msgs {
                    tokio::select! {
                        () = &mut stop => return End::Stopped,
                        sent = ws.send(m) => if sent.is_err() {
                            return End::Peer;
                        },
                    }
                }
                continue;
            }
            msg = ws.next() => msg,
        };
        match msg {
            Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                on_message();
                tokio::select! {
                    () = &mut stop => return End::Stopped,
                    sent = ws.send(m) => if sent.is_err() {
                        return End::Peer;
                    },
                }
            }
            // tungstenite answers pings and closes itself; the stream ends after a close.
            Some(Ok(_)) => {}
            Some(Err(e)) => return end_of(&e),
            None => return End::Peer,
        }
    }
}

/// Send `close` and read until the peer answers or the stream ends, at most `CLOSE_WAIT`.
pub async fn close<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>, close: Close) {
    close_with(ws, close.code(), close.reason()).await;
}

/// `close` with any code and reason (an operator's order: a kick's code, a drain's 1001).
pub async fn close_with<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>, code: u16, reason: &str) {
    let frame = CloseFrame { code: CloseCode::from(code), reason: reason.into() };
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
