//! Real backends for the tests: a tokio-tungstenite WebSocket server with a per-connection
//! handler, the standard echo handler (with magic messages), and a raw TCP server.

use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A WebSocket connection as the backend sees it.
pub type Ws = WebSocketStream<TcpStream>;

/// What a backend saw of one upgrade request.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// Request path.
    pub path: String,
    /// Request query (after `?`; empty when none).
    pub query: String,
    /// Request headers, names lower-cased.
    pub headers: Vec<(String, String)>,
}

impl Seen {
    /// The first header named `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// A running backend; its accept loop stops when this is dropped.
pub struct Backend {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Upgrade requests seen, in order.
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Backend {
    /// A backend listening at `addr` whose accept loop is `task`.
    pub fn new(addr: SocketAddr, seen: Arc<Mutex<Vec<Seen>>>, task: JoinHandle<()>) -> Backend {
        Backend { addr, seen, task }
    }

    /// Stop accepting (open connections keep running in their own tasks).
    pub fn stop(&self) {
        self.task.abort();
    }

    /// Requests seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Large enough for the 16 MiB test message.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().max_message_size(Some(64 << 20)).max_frame_size(Some(64 << 20))
}

/// A WebSocket backend that runs `handler` for each connection. When the client offers
/// subprotocols, the backend selects `subprotocol` if given.
pub async fn ws_backend<F, Fut>(subprotocol: Option<&'static str>, handler: F) -> Backend
where
    F: Fn(Ws) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let handler = Arc::new(handler);
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (seen, handler) = (seen2.clone(), handler.clone());
            tokio::spawn(async move {
                // The callback's error type is tungstenite's own (a whole HTTP response).
                #[allow(clippy::result_large_err)]
                let callback = |req: &Request, mut resp: Response| {
                    let s = Seen {
                        path: req.uri().path().to_string(),
                        query: req.uri().query().unwrap_or("").to_string(),
                        headers: req
                            .headers()
                            .iter()
                            .map(|(n, v)| (n.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
                            .collect(),
                    };
                    let offered = s.header("sec-websocket-protocol").is_some();
                    seen.lock().unwrap().push(s);
                    if let (Some(p), true) = (subprotocol, offered) {
                        resp.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_static(p));
                    }
                    Ok(resp)
                };
                if let Ok(ws) =
                    tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(ws_config())).await
                {
                    handler(ws).await;
                }
            });
        }
    });
    Backend { addr, seen, task }
}

/// The echo handler: sends every text and binary message back. Magic text messages:
/// `close:CODE:REASON` makes the backend close with that code; `drop` makes it drop the TCP
/// connection without a close frame.
pub async fn echo<S: AsyncRead + AsyncWrite + Unpin>(ws: WebSocketStream<S>) {
    echo_reporting(ws, |_| {}).await
}

/// The echo handler, calling `seen` with every message received (control messages too) before
/// acting on it.
pub async fn echo_reporting<S: AsyncRead + AsyncWrite + Unpin>(
    mut ws: WebSocketStream<S>,
    mut seen: impl FnMut(&Message),
) {
    while let Some(Ok(msg)) = ws.next().await {
        seen(&msg);
        match msg {
            Message::Text(t) if t.as_str() == "drop" => return,
            Message::Text(t) if t.as_str().starts_with("close:") => {
                let mut parts = t.as_str().splitn(3, ':').skip(1);
                let code: u16 = parts.next().and_then(|c| c.parse().ok()).unwrap_or(1000);
                let reason = parts.next().unwrap_or("").to_string();
                let _ = ws
                    .send(Message::Close(Some(CloseFrame { code: CloseCode::from(code), reason: reason.into() })))
                    .await;
            }
            Message::Text(_) | Message::Binary(_) => {
                let Ok(()) = ws.send(msg).await else { return };
            }
            _ => {}
        }
    }
}

/// An echo backend.
pub async fn echo_backend() -> Backend {
    ws_backend(None, echo).await
}

/// A raw TCP backend: `handler` gets each accepted connection.
pub async fn raw_backend<F, Fut>(handler: F) -> Backend
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(handler);
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move { handler(stream).await });
        }
    });
    Backend { addr, seen: Arc::default(), task }
}

/// A loopback address nothing listens on (bound then released).
pub fn dead_addr() -> SocketAddr {
    format!("127.0.0.1:{}", super::free_port()).parse().unwrap()
}

/// What a recording backend saw on one connection, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A message (data or control) the backend received.
    Msg(Message),
    /// The connection ended (after the last message).
    End,
}

/// An echo backend (magic messages included) that reports every message each connection
/// receives, then `Event::End`, on the returned channel.
pub async fn recording_echo_backend(
    subprotocol: Option<&'static str>,
) -> (Backend, tokio::sync::mpsc::UnboundedReceiver<Event>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let backend = ws_backend(subprotocol, move |ws| {
        let tx = tx.clone();
        async move {
            echo_reporting(ws, |m| {
                let _ = tx.send(Event::Msg(m.clone()));
            })
            .await;
            let _ = tx.send(Event::End);
        }
    })
    .await;
    (backend, rx)
}

/// The next event within `DEADLINE`, or panic.
pub async fn next_event(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Event>) -> Event {
    match tokio::time::timeout(super::DEADLINE, rx.recv()).await {
        Ok(Some(e)) => e,
        Ok(None) => panic!("backend event channel closed"),
        Err(_) => panic!("no backend event within {:?}", super::DEADLINE),
    }
}
