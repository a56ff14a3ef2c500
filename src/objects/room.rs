//! The built-in `room` object: a broadcast room per id, with history that survives a restart.
//!
//! Warm path per message: a message from one member takes the room's mutex once, is appended to
//! the history store (one `write(2)`), and is queued, in the same order for everyone, to every
//! other member's bounded send queue (`room.send_queue` messages). The mutex is never held
//! across an await. Each member's connection task writes its own queue to its socket, so a slow
//! client never slows the room: when its queue is full, or one write to it (the welcome and
//! history, or a batch of live messages) takes longer than `room.send_timeout`, it is removed and
//! closed with 1013 ("Try Again Later", `Close::TooSlow`); it may reconnect and gets the history
//! again. A removed member's task stops writing at once (every write watches its kick), drops its
//! queue and the history it had left to send, gets at most `ws::CLOSE_WAIT` for the close, and
//! then its socket is dropped. So a member holds at most `room.send_queue` queued messages, the
//! history (`room.history` messages, `room.history_bytes` bytes) while it is sent, and
//! tungstenite's write buffer, and nothing once it is removed.
//!
//! Protocol seen by a client (all weir events are JSON text messages with a `"weir"` key; user
//! messages are delivered verbatim, text as text and binary as binary):
//! 1. `{"weir":"welcome","room":ID,"member":N,"members":M,"history":K}`,
//! 2. the last K messages of the room, oldest first,
//! 3. live: other members' messages, and `{"weir":"join"|"leave","member":N,"members":M}`
//!    (a leave has `"reason":"closed"` or `"slow"`).
//!
//! Member numbers are unique in the namespace for the life of the process. A member that sends a
//! text message that is a JSON object with a top-level `"weir"` key (which would forge an event)
//! is closed with 1008 (`Close::Reserved`) and the message is not delivered.
//!
//! Cold path: a room's history is loaded from `data_dir/rooms/<namespace>/` when its first
//! member joins (a synchronous read under that room's lock only: joins to other rooms go on);
//! the room is dropped from memory when its last member leaves and nobody is joining. The store
//! keeps at most `room.max_rooms_on_disk` room files (see `history.rs`).

use super::history::{HistoryStore, Limits, MessageKind, RoomLog, StoreMetrics, StoredMessage};
use super::registry::ObjectHandle;
use super::session::{Ended, Stops};
use crate::config::RoomConfig;
use crate::metering::live::Push;
use crate::metrics::Metrics;
use crate::relay::close::Close;
use crate::relay::report::Cause;
use crate::relay::Stop;
use crate::sync::lock;
use crate::ws::{close, drain_after, end_of};
use futures_util::{SinkExt, StreamExt};
use prometheus::IntCounter;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

/// Every room of one namespace.
pub struct Rooms {
    namespace: String,
    config: RoomConfig,
    store: HistoryStore,
    /// Rooms with members (or members on their way in). Held only to find or insert a room,
    /// never while a room's history loads.
    rooms: Mutex<HashMap<String, Arc<Room>>>,
    /// Member numbers, unique in the namespace for the life of the process.
    next_member: AtomicU64,
    slow: IntCounter,
    store_errors: IntCounter,
}

/// One room with members.
struct Room {
    state: Mutex<RoomState>,
    /// Joins between finding the room and adding their member: the room stays in the map.
    arriving: AtomicUsize,
}

struct RoomState {
    /// Loaded by the first member to join, under this lock (not the namespace's).
    log: Option<RoomLog>,
    members: Vec<Member>,
}

struct Member {
    id: u64,
    queue: mpsc::Sender<Message>,
    kick: Option<oneshot::Sender<()>>,
}

fn event(kind: &str, member: u64, members: usize, reason: Option<&str>) -> Message {
    let reason = reason.map(|r| format!(",\"reason\":\"{r}\"")).unwrap_or_default();
    Message::text(format!("{{\"weir\":\"{kind}\",\"member\":{member},\"members\":{members}{reason}}}"))
}

impl Rooms {
    /// The rooms of `namespace`, keeping history under `dir`.
    pub fn new(
        namespace: &str,
        config: RoomConfig,
        dir: &std::path::Path,
        metrics: &Metrics,
    ) -> std::io::Result<Rooms> {
        let limits =
            Limits { keep: config.history, keep_bytes: config.history_bytes, max_rooms: config.max_rooms_on_disk };
        let store_metrics = StoreMetrics {
            bytes: metrics.room_store_bytes.with_label_values(&[namespace]),
            rooms: metrics.room_store_rooms.with_label_values(&[namespace]),
            evictions: metrics.room_store_evictions.with_label_values(&[namespace]),
        };
        Ok(Rooms {
            namespace: namespace.to_string(),
            config,
            store: HistoryStore::open(dir, limits, store_metrics)?,
            rooms: Mutex::new(HashMap::new()),
            next_member: AtomicU64::new(1),
            slow: metrics.room_slow_clients.with_label_values(&[namespace]),
            store_errors: metrics.room_store_errors.with_label_values(&[namespace]),
        })
    }

    /// Largest message a member may send, bytes.
    pub fn max_message(&self) -> usize {
        self.config.max_message
    }

    /// Join room `id`: returns the membership with the welcome and history to send first.
    fn join(self: &Arc<Self>, id: &str) -> std::io::Result<Membership> {
        let room = {
            let mut rooms = lock(&self.rooms);
            let room = rooms
                .entry(id.to_string())
                .or_insert_with(|| {
                    Arc::new(Room {
                        state: Mutex::new(RoomState { log: None, members: Vec::new() }),
                        arriving: AtomicUsize::new(0),
                    })
                })
                .clone();
            room.arriving.fetch_add(1, Ordering::SeqCst);
            room
        };
        let mut state = lock(&room.state);
        room.arriving.fetch_sub(1, Ordering::SeqCst);
        if state.log.is_none() {
            match self.store.load(id) {
                Ok(log) => state.log = Some(log),
                Err(e) => {
                    drop(state);
                    self.forget_if_empty(id, &room);
                    return Err(e);
                }
            }
        }
        let member = self.next_member.fetch_add(1, Ordering::Relaxed);
        let (queue, rx) = mpsc::channel(self.config.send_queue);
        let (kick, kicked) = oneshot::channel();
        state.members.push(Member { id: member, queue, kick: Some(kick) });
        let members = state.members.len();
        let history: Vec<Message> = state.log.iter().flat_map(|l| l.history()).map(to_message).collect();
        let welcome = Message::text(format!(
            "{{\"weir\":\"welcome\",\"room\":{},\"member\":{member},\"members\":{members},\"history\":{}}}",
            serde_json::Value::from(id),
            history.len()
        ));
        self.broadcast(&mut state, event("join", member, members, None), Some(member));
        drop(state);
        Ok(Membership {
            rooms: self.clone(),
            id: id.to_string(),
            room,
            member,
            queue: rx,
            kicked,
            first: Some((welcome, history)),
        })
    }

    /// Drop `room` from the map if nobody is in it or on the way in.
    fn forget_if_empty(&self, id: &str, room: &Arc<Room>) {
        let mut rooms = lock(&self.rooms);
        let state = lock(&room.state);
        if state.members.is_empty()
            && room.arriving.load(Ordering::SeqCst) == 0
            && rooms.get(id).is_some_and(|r| Arc::ptr_eq(r, room))
        {
            rooms.remove(id);
        }
    }

    /// Queue `msg` to every member but `except`; members whose queue is full are removed,
    /// kicked and announced as leaving (which may overflow others in turn).
    fn broadcast(&self, state: &mut RoomState, msg: Message, except: Option<u64>) {
        let mut pending = vec![(msg, except)];
        while let Some((msg, except)) = pending.pop() {
            let mut slow = Vec::new();
            state.members.retain_mut(|m| {
                if Some(m.id) == except {
                    return true;
                }
                match m.queue.try_send(msg.clone()) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        if let Some(k) = m.kick.take() {
                            let _ = k.send(());
                        }
                        slow.push(m.id);
                        false
                    }
                    // The member's task is gone; its own leave announces it.
                    Err(mpsc::error::TrySendError::Closed(_)) => true,
                }
            });
            for id in slow {
                pending.push((self.slow_leave(id, state.members.len()), None));
            }
        }
    }

    /// An operator's message to room `id` (`POST /api/objects/{namespace}/{id}/messages`):
    /// stored in the history and delivered to every member in the room's order, like a member's
    /// message (the history does not record senders). Returns the members it was queued to, or
    /// `None` when the room has no member.
    pub fn push(&self, id: &str, msg: Message) -> Option<usize> {
        let room = lock(&self.rooms).get(id).cloned()?;
        let mut state = lock(&room.state);
        if state.members.is_empty() {
            return None;
        }
        self.store(&mut state, id, &msg);
        self.broadcast(&mut state, msg, None);
        Some(state.members.len())
    }

    /// Append `msg` to room `id`'s history (a failure is counted and logged: the message is
    /// still delivered).
    fn store(&self, state: &mut RoomState, id: &str, msg: &Message) {
        let stored = match msg {
            Message::Text(t) => StoredMessage { kind: MessageKind::Text, data: t.clone().into() },
            Message::Binary(b) => StoredMessage { kind: MessageKind::Binary, data: b.clone() },
            _ => return,
        };
        if let Some(Err(e)) = state.log.as_mut().map(|l| l.append(stored)) {
            self.store_errors.inc();
            tracing::warn!(namespace = %self.namespace, room = %id, error = %e, "cannot store a room message; it is delivered but not kept");
        }
    }

    /// Count member `id` as too slow; returns its leave event for the `members` left.
    fn slow_leave(&self, id: u64, members: usize) -> Message {
        self.slow.inc();
        tracing::info!(namespace = %self.namespace, member = id, "room member too slow; closing it with 1013");
        event("leave", id, members, Some("slow"))
    }
}

/// An operator's push as a WebSocket message (text pushes were checked for UTF-8).
pub fn push_message(p: Push) -> Message {
    match (p.text, String::from_utf8(p.payload)) {
        (true, Ok(t)) => Message::text(t),
        (_, Ok(t)) => Message::binary(t.into_bytes()),
        (_, Err(e)) => Message::binary(e.into_bytes()),
    }
}

fn to_message(m: &StoredMessage) -> Message {
    match m.kind {
        MessageKind::Binary => Message::Binary(m.data.clone()),
        MessageKind::Text => {
            Utf8Bytes::try_from(m.data.clone()).map(Message::Text).unwrap_or_else(|_| Message::Binary(m.data.clone()))
        }
    }
}

/// One member's place in a room; leaving happens on drop.
pub struct Membership {
    rooms: Arc<Rooms>,
    id: String,
    room: Arc<Room>,
    member: u64,
    queue: mpsc::Receiver<Message>,
    kicked: oneshot::Receiver<()>,
    first: Option<(Message, Vec<Message>)>,
}

impl Membership {
    /// How a write to the member bounded by `room.send_timeout` ends its session, if it does: a
    /// failed write means the client is gone; a timed-out one removes it as too slow.
    fn after_write<E>(&self, sent: Result<Result<(), E>, tokio::time::error::Elapsed>) -> Option<End> {
        match sent {
            Ok(Ok(())) => None,
            Ok(Err(_)) => Some(End::Client),
            Err(_) => {
                self.too_slow();
                Some(End::Slow)
            }
        }
    }

    /// The member did not accept a write within `room.send_timeout`: remove it as too slow and
    /// announce it (unless its queue overflowed first: then that already did).
    fn too_slow(&self) {
        let mut state = lock(&self.room.state);
        let before = state.members.len();
        state.members.retain(|m| m.id != self.member);
        if state.members.len() < before {
            let left = self.rooms.slow_leave(self.member, state.members.len());
            self.rooms.broadcast(&mut state, left, None);
        }
    }

    /// A member sent `msg`: store it and deliver it to everyone else, in room order.
    fn publish(&self, msg: Message) {
        if !matches!(msg, Message::Text(_) | Message::Binary(_)) {
            return;
        }
        let mut state = lock(&self.room.state);
        self.rooms.store(&mut state, &self.id, &msg);
        self.rooms.broadcast(&mut state, msg, Some(self.member));
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        {
            let mut state = lock(&self.room.state);
            let before = state.members.len();
            state.members.retain(|m| m.id != self.member);
            if state.members.len() < before {
                let left = event("leave", self.member, state.members.len(), Some("closed"));
                self.rooms.broadcast(&mut state, left, None);
            }
        }
        self.rooms.forget_if_empty(&self.id, &self.room);
    }
}

/// True if `text` is a JSON object with a top-level `"weir"` key: reserved for weir's events, so
/// members cannot forge them.
fn forges_event(text: &str) -> bool {
    let t = text.trim_start();
    t.starts_with('{')
        && t.contains("\"weir\"")
        && serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(t).is_ok_and(|m| m.contains_key("weir"))
}

/// Why a member's session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// An order to close it (an operator's kick, a drain, a quota): its close and cause.
    Ordered(Stop),
    /// The client closed or went away.
    Client,
    /// Its queue overflowed.
    Slow,
    /// weir is shutting down.
    Shutdown,
    /// It sent a message shaped like a weir event.
    Forged,
    /// Its read side ended with this (a message over `room.max_message`, a broken frame, or the
    /// client gone).
    Read(crate::ws::End),
}

impl End {
    /// The close weir sends the member for this end, if any.
    fn close(self) -> Option<Close> {
        match self {
            End::Client | End::Ordered(_) => None,
            End::Slow => Some(Close::TooSlow),
            End::Shutdown => Some(Close::ObjectShutdown),
            End::Forged => Some(Close::Reserved),
            End::Read(end) => end.close(),
        }
    }
}

/// Run one member of room `id` over `ws` until it ends; returns the stream and whether weir
/// closed it for shutdown. Operator pushes to this one connection (`stops.live`) are written to
/// it between its queued room messages, and not stored; orders in `stops` (a kick, a drain, a
/// quota, the object's move: 1012) close it.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    rooms: Arc<Rooms>,
    id: &str,
    mut ws: WebSocketStream<S>,
    object: ObjectHandle,
    mut stops: Stops,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) -> Ended<S> {
    let live = stops.live.clone();
    let mut membership = match rooms.join(id) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(namespace = %rooms.namespace, room = id, error = %e, "cannot open the room's history");
            close(&mut ws, Close::RoomUnavailable).await;
            return (Some(ws.into_inner()), None);
        }
    };
    let (mut sink, mut stream) = ws.split();
    let send_timeout = rooms.config.send_timeout;
    // The welcome and history: bounded in time, and given up as soon as the member is kicked (the
    // history not yet sent is dropped with the future).
    let mut end = match membership.first.take() {
        None => None,
        Some((welcome, history)) => {
            let Membership { kicked, .. } = &mut membership;
            let write = async {
                for m in std::iter::once(welcome).chain(history) {
                    sink.feed(m).await?;
                }
                sink.flush().await
            };
            tokio::select! {
                biased;
                _ = kicked => Some(End::Slow),
                sent = tokio::time::timeout(send_timeout, write) => membership.after_write(sent),
            }
        }
    };
    let drain = drain_after(&mut shutdown, grace);
    tokio::pin!(drain);
    while end.is_none() {
        tokio::select! {
            biased;
            _ = &mut membership.kicked => end = Some(End::Slow),
            () = &mut drain => end = Some(End::Shutdown),
            stop = stops.stopped() => end = Some(End::Ordered(stop)),
            out = membership.queue.recv() => {
                let Some(out) = out else { end = Some(End::Client); continue };
                // Everything already queued goes out with one flush, within `send_timeout`.
                let Membership { queue, kicked, .. } = &mut membership;
                let write = async {
                    sink.feed(out).await?;
                    while let Ok(more) = queue.try_recv() {
                        sink.feed(more).await?;
                    }
                    sink.flush().await
                };
                end = tokio::select! {
                    biased;
                    _ = kicked => Some(End::Slow),
                    sent = tokio::time::timeout(send_timeout, write) => membership.after_write(sent),
                };
            }
            pushes = std::future::poll_fn(|cx| match &live {
                // Written by the object through its tap: counted as the object's traffic.
                Some(l) => l.poll_pushes(cx, false),
                None => std::task::Poll::Pending,
            }) => {
                let write = async {
                    for p in pushes {
                        sink.feed(push_message(p)).await?;
                    }
                    sink.flush().await
                };
                let Membership { kicked, .. } = &mut membership;
                end = tokio::select! {
                    biased;
                    _ = kicked => Some(End::Slow),
                    sent = tokio::time::timeout(send_timeout, write) => membership.after_write(sent),
                };
            }
            msg = stream.next() => match msg {
                Some(Ok(Message::Text(t))) if forges_event(t.as_str()) => end = Some(End::Forged),
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                    // In a cluster, a message is ordered only while this instance owns the room.
                    if let Some(lost) = stops.lost_claim() {
                        end = Some(End::Ordered(lost));
                        continue;
                    }
                    object.touch();
                    membership.publish(m);
                }
                // tungstenite answers pings and closes itself; the stream ends after a close.
                Some(Ok(_)) => {}
                Some(Err(e)) => end = Some(End::Read(end_of(&e))),
                None => end = Some(End::Client),
            },
        }
    }
    let end = end.unwrap_or(End::Client);
    // Leave first: the queue and anything not yet sent are released before the close waits.
    drop(membership);
    let Ok(mut ws) = sink.reunite(stream) else { return (None, None) };
    if let End::Ordered(order) = &end {
        crate::ws::close_with(&mut ws, order.client.0, &order.client.1).await;
    } else if let Some(c) = end.clone().close() {
        close(&mut ws, c).await;
    }
    let cause = match end {
        End::Ordered(order) => Some(order.cause),
        End::Shutdown => Some(Cause::Shutdown),
        End::Read(crate::ws::End::TooBig) => Some(Cause::MessageTooBig),
        _ => None,
    };
    (Some(ws.into_inner()), cause)
}
