//! The built-in `room` object: a broadcast room per id, with history that survives a restart.
//!
//! Warm path per message: a message from one member takes the room's mutex once, is appended to
//! the history store (see Stores below), and is queued, in the same order for everyone, to every
//! other member's bounded send queue (`room.send_queue` messages). The mutex is never held
//! across an await. Each member's connection task writes its own queue to its socket, so a slow
//! client never slows the room: when its queue is full, or one write to it (the welcome and
//! history, or a batch of live messages) takes longer than `room.send_timeout`, it is removed and
//! closed with 1013 ("Try Again Later", `Close::TooSlow`); it may reconnect and gets the history
//! again (or resumes with `?since=`). A removed member's task stops writing at once (every write
//! watches its kick), drops its queue and the history it had left to send, gets at most
//! `ws::CLOSE_WAIT` for the close, and then its socket is dropped. So a member holds at most
//! `room.send_queue` queued messages, the history (`room.history` messages, `room.history_bytes`
//! bytes) while it is sent, and tungstenite's write buffer, and nothing once it is removed.
//!
//! Protocol seen by a client (all weir events are JSON text messages with a `"weir"` key; user
//! messages are delivered verbatim, text as text and binary as binary):
//! 1. `{"weir":"welcome","room":ID,"member":N,"members":M,"history":K,"seq":S,"from":F,"gap":G}`,
//! 2. K history messages, oldest first: numbers F, F+1, …, S (K = 0 and F = S+1 when none),
//! 3. live: other members' messages, and `{"weir":"join"|"leave","member":N,"members":M}`
//!    (a leave has `"reason":"closed"` or `"slow"`); with `?acks=1`, `{"weir":"sent","seq":N}`
//!    for the member's own messages.
//!
//! Sequence numbers: every room message (a member's or an operator's push) gets the next number
//! of its room, 1, 2, 3, …, kept by the history store across restarts (and, in a cluster, across
//! owners). `S` is the newest message's number (0: none yet). A member's own messages are not
//! echoed to it but are numbered too, so a client that numbers what it receives (history F..S,
//! then +1 per user message; events carry no number) is exact while it only listens. A member
//! that joined with `?acks=1` gets `{"weir":"sent","seq":N}` for each of its own messages where
//! the others get the message, so it is exact while it sends too.
//!
//! Resume: `?since=N` on the upgrade URL (the request target, also through a peer hop) asks for
//! the messages after N instead of the last K: N+1..S, in order, then live ones (`"from"` is
//! N+1). When N+1 is older than the history keeps, every kept message is sent and `"gap":true`
//! (`"from"` says where it starts); N > S (a client of a reset store) gets the normal history
//! and `"gap":true`. A `since` that is not a decimal number is ignored (normal history, no
//! error). It is bounded like the history (`room.history` messages, `room.history_bytes`).
//!
//! Member numbers are unique in the namespace for the life of the process. A member that sends a
//! text message that is a JSON object with a top-level `"weir"` key (which would forge an event)
//! is closed with 1008 (`Close::Reserved`) and the message is not delivered.
//!
//! Stores: by default each namespace keeps a file per room under
//! `data_dir/rooms/<namespace>/` (`history.rs`): a room's history is loaded when its first
//! member joins (a synchronous read under that room's lock only: joins to other rooms go on);
//! an append is one `write(2)` under the room's lock before the message is queued (a failed
//! append is counted in `weir_room_store_errors_total` and the message still delivered). The
//! room is dropped from memory when its last member leaves and nobody is joining. The store
//! keeps at most `room.max_rooms_on_disk` room files.
//!
//! With `cluster.history.postgres`, the history is shared in PostgreSQL (`history_pg.rs`): a
//! room is opened by its owner with the claim's fencing token (a newer owner's token makes the
//! join fail: 1012, counted in `weir_room_history_fenced_total`). Messages go to the room's
//! writer task (a bounded queue, `WRITER_QUEUE`; a member's read waits when it is full), which
//! appends consecutive messages in one statement and only then, under the room's lock, adds
//! them to the in-memory history and queues them to the members: a message some member saw is
//! always stored (write-ahead), in the room's order. An append refused by the fence closes every
//! member with 1012 ("object moved": the room has a new owner; counted, warned); a store error
//! closes them with 1011 (counted in `weir_room_store_errors_total`); they reconnect and resume
//! with `?since=`. The writer deletes rows no longer kept every `TRIM_EVERY` messages.

use super::history::{HistoryStore, Limits, MessageKind, RoomLog, StoreMetrics, StoredMessage};
use super::history_pg::{PgError, PgHistory};
use super::kept::Kept;
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
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

/// Messages waiting for a room's writer (shared store): beyond it a member's read waits.
const WRITER_QUEUE: usize = 1024;
/// Most messages the writer appends in one statement.
const MAX_BATCH: usize = 256;
/// The writer deletes rows no longer kept after this many messages (and at least `room.history`).
const TRIM_EVERY: usize = 256;

/// How a member joins a room: what the gateway knows of the connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Join {
    /// The object's fencing token when this instance owns it through a cluster claim
    /// (`ClaimGuard::token()`); required by the shared (PostgreSQL) store.
    pub token: Option<i64>,
    /// `?since=N` of the upgrade URL: the last sequence number the client saw.
    pub since: Option<u64>,
    /// `?acks=1` of the upgrade URL: the member is told the number of each of its own messages
    /// (`{"weir":"sent","seq":N}`, where the others get the message), so it can number
    /// everything and resume exactly even while it sends.
    pub acks: bool,
}

impl Join {
    /// How a member with the upgrade request target `target` joins, under fencing token `token`.
    pub fn of(token: Option<i64>, target: &str) -> Join {
        let acks = matches!(query_value(target, "acks").as_deref(), Some(b"1" | b"true"));
        Join { token, since: Join::since_of(target), acks }
    }

    /// The `since` query parameter of request target `target`, if it is a decimal number
    /// (anything else is ignored: the member gets the normal history).
    pub fn since_of(target: &str) -> Option<u64> {
        let v = query_value(target, "since").filter(|v| !v.is_empty() && v.iter().all(u8::is_ascii_digit))?;
        std::str::from_utf8(&v).ok()?.parse().ok()
    }
}

/// The decoded value of query parameter `name` of `target` (the project's query parser; a
/// fragment, should a client send one, is not part of the query).
fn query_value(target: &str, name: &str) -> Option<Vec<u8>> {
    let target = target.split('#').next().unwrap_or(target);
    crate::http1::query::param(crate::http1::query::query_of(target), name).flatten()
}

/// Where a namespace's rooms keep their history.
enum Store {
    /// A file per room (single instance).
    File(HistoryStore),
    /// PostgreSQL, shared by the cluster.
    Shared(Arc<PgHistory>),
}

/// Every room of one namespace.
pub struct Rooms {
    namespace: String,
    config: RoomConfig,
    store: Store,
    /// Rooms with members (or members on their way in). Held only to find or insert a room,
    /// never while a room's history loads.
    rooms: Mutex<HashMap<String, Arc<Room>>>,
    /// Member numbers, unique in the namespace for the life of the process.
    next_member: AtomicU64,
    slow: IntCounter,
    store_errors: IntCounter,
    fenced: IntCounter,
}

/// One room with members.
struct Room {
    state: Mutex<RoomState>,
    /// Joins between finding the room and adding their member: the room stays in the map.
    arriving: AtomicUsize,
    /// Shared store: the room's writer, once opened (the first join opens it; later ones wait).
    writer: tokio::sync::OnceCell<Writer>,
}

/// A shared-store room's writer task: its token and its queue.
struct Writer {
    token: i64,
    queue: mpsc::Sender<Pending>,
}

/// A message on its way to the writer.
struct Pending {
    msg: Message,
    /// The member that sent it (not sent back to it).
    except: Option<u64>,
}

struct RoomState {
    /// Loaded by the first member to join, under this lock (file store) or by the opening
    /// join (shared store).
    log: Option<Log>,
    members: Vec<Member>,
    /// The room stopped (fenced, or its store failed): its members were closed, joins fail.
    stopped: bool,
}

/// A room's history in memory.
enum Log {
    /// The open room file (and its kept messages).
    File(RoomLog),
    /// The kept messages of the shared store.
    Shared(Kept),
}

impl Log {
    fn kept(&self) -> &Kept {
        match self {
            Log::File(l) => l.kept(),
            Log::Shared(k) => k,
        }
    }
}

/// Why a member was removed by the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kick {
    /// Its queue overflowed: 1013.
    Slow,
    /// The room's store refused an append (a newer owner): 1012.
    Moved,
    /// The room's store failed: 1011.
    Failed,
}

struct Member {
    id: u64,
    queue: mpsc::Sender<Message>,
    kick: Option<oneshot::Sender<Kick>>,
    /// It asked for the numbers of its own messages (`?acks=1`).
    acks: bool,
}

/// Why a join failed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum JoinError {
    /// Another instance owns the room now (fenced), or the room just stopped: 1012.
    Moved,
    /// The history cannot be opened: 1011.
    Unavailable(String),
}

fn event(kind: &str, member: u64, members: usize, reason: Option<&str>) -> Message {
    let reason = reason.map(|r| format!(",\"reason\":\"{r}\"")).unwrap_or_default();
    Message::text(format!("{{\"weir\":\"{kind}\",\"member\":{member},\"members\":{members}{reason}}}"))
}

/// The stored form of a user message (`None` for control messages).
fn stored(msg: &Message) -> Option<StoredMessage> {
    match msg {
        Message::Text(t) => Some(StoredMessage { kind: MessageKind::Text, data: t.clone().into() }),
        Message::Binary(b) => Some(StoredMessage { kind: MessageKind::Binary, data: b.clone() }),
        _ => None,
    }
}

impl Rooms {
    /// The rooms of `namespace`, keeping history under `dir`, or in `shared` (PostgreSQL) when
    /// given (then `dir` is not used).
    pub fn new(
        namespace: &str,
        config: RoomConfig,
        dir: &std::path::Path,
        shared: Option<Arc<PgHistory>>,
        metrics: &Metrics,
    ) -> std::io::Result<Rooms> {
        let limits =
            Limits { keep: config.history, keep_bytes: config.history_bytes, max_rooms: config.max_rooms_on_disk };
        let store = match shared {
            Some(pg) => Store::Shared(pg),
            None => {
                let store_metrics = StoreMetrics {
                    bytes: metrics.room_store_bytes.with_label_values(&[namespace]),
                    rooms: metrics.room_store_rooms.with_label_values(&[namespace]),
                    evictions: metrics.room_store_evictions.with_label_values(&[namespace]),
                };
                Store::File(HistoryStore::open(dir, limits, store_metrics)?)
            }
        };
        Ok(Rooms {
            namespace: namespace.to_string(),
            config,
            store,
            rooms: Mutex::new(HashMap::new()),
            next_member: AtomicU64::new(1),
            slow: metrics.room_slow_clients.with_label_values(&[namespace]),
            store_errors: metrics.room_store_errors.with_label_values(&[namespace]),
            fenced: metrics.room_history_fenced.with_label_values(&[namespace]),
        })
    }

    /// Largest message a member may send, bytes.
    pub fn max_message(&self) -> usize {
        self.config.max_message
    }

    /// Join room `id`: returns the membership with the welcome and history to send first.
    async fn join(self: &Arc<Self>, id: &str, join: Join) -> Result<Membership, JoinError> {
        let room = {
            let mut rooms = lock(&self.rooms);
            let room = rooms
                .entry(id.to_string())
                .or_insert_with(|| {
                    Arc::new(Room {
                        state: Mutex::new(RoomState { log: None, members: Vec::new(), stopped: false }),
                        arriving: AtomicUsize::new(0),
                        writer: tokio::sync::OnceCell::new(),
                    })
                })
                .clone();
            room.arriving.fetch_add(1, Ordering::SeqCst);
            room
        };
        let opened = match &self.store {
            Store::File(_) => Ok(()),
            Store::Shared(pg) => match join.token {
                None => Err(JoinError::Unavailable("the shared history needs the object's fencing token".into())),
                Some(token) => match room.writer.get_or_try_init(|| self.open_shared(pg, id, &room, token)).await {
                    Ok(w) if w.token == token => Ok(()),
                    Ok(_) => Err(JoinError::Moved),
                    Err(e) => Err(e),
                },
            },
        };
        let mut state = lock(&room.state);
        room.arriving.fetch_sub(1, Ordering::SeqCst);
        let failed = match opened {
            Err(e) => Some(e),
            Ok(()) if state.stopped => Some(JoinError::Moved),
            Ok(()) => None,
        };
        if let Some(e) = failed {
            drop(state);
            self.forget_if_empty(id, &room);
            return Err(e);
        }
        if state.log.is_none() {
            if let Store::File(store) = &self.store {
                match store.load(id) {
                    Ok(log) => state.log = Some(Log::File(log)),
                    Err(e) => {
                        drop(state);
                        self.forget_if_empty(id, &room);
                        return Err(JoinError::Unavailable(e.to_string()));
                    }
                }
            }
        }
        let member = self.next_member.fetch_add(1, Ordering::Relaxed);
        let (queue, rx) = mpsc::channel(self.config.send_queue);
        let (kick, kicked) = oneshot::channel();
        state.members.push(Member { id: member, queue, kick: Some(kick), acks: join.acks });
        let members = state.members.len();
        let selection = state.log.as_ref().map(|l| l.kept().select(join.since)).unwrap_or(super::kept::Selection {
            from: 1,
            seq: 0,
            gap: join.since.is_some_and(|n| n > 0),
            messages: Vec::new(),
        });
        let history: Vec<Message> = selection.messages.iter().map(to_message).collect();
        let welcome = Message::text(format!(
            "{{\"weir\":\"welcome\",\"room\":{},\"member\":{member},\"members\":{members},\"history\":{},\"seq\":{},\"from\":{},\"gap\":{}}}",
            serde_json::Value::from(id),
            history.len(),
            selection.seq,
            selection.from,
            selection.gap
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

    /// Open room `id` in the shared store with `token`: load its history into the room and
    /// start its writer.
    async fn open_shared(
        self: &Arc<Self>,
        pg: &Arc<PgHistory>,
        id: &str,
        room: &Arc<Room>,
        token: i64,
    ) -> Result<Writer, JoinError> {
        let kept = match pg.open(&self.namespace, id, token, self.config.history, self.config.history_bytes).await {
            Ok(k) => k,
            Err(PgError::Fenced) => {
                self.fenced.inc();
                tracing::warn!(namespace = %self.namespace, room = %id, token, "room history: a newer owner opened this room; refusing the join (1012)");
                return Err(JoinError::Moved);
            }
            Err(PgError::Store(e)) => {
                tracing::error!(namespace = %self.namespace, room = %id, error = %e, "room history: cannot open the room in PostgreSQL");
                return Err(JoinError::Unavailable(e));
            }
        };
        let next = kept.last() + 1;
        lock(&room.state).log = Some(Log::Shared(kept));
        let (queue, rx) = mpsc::channel(WRITER_QUEUE);
        let writer = RoomWriter {
            rooms: self.clone(),
            pg: pg.clone(),
            id: id.to_string(),
            token,
            room: Arc::downgrade(room),
            next,
            untrimmed: 0,
        };
        tokio::spawn(writer.run(rx));
        Ok(Writer { token, queue })
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

    /// Stop `room` (its store fenced or failed): close every member with `kick`, make joins to
    /// it fail and drop it from the map (the next join opens the room afresh).
    fn stop(&self, id: &str, room: &Arc<Room>, kick: Kick) {
        let mut rooms = lock(&self.rooms);
        {
            let mut state = lock(&room.state);
            state.stopped = true;
            for mut m in state.members.drain(..) {
                if let Some(k) = m.kick.take() {
                    let _ = k.send(kick);
                }
            }
        }
        if rooms.get(id).is_some_and(|r| Arc::ptr_eq(r, room)) {
            rooms.remove(id);
        }
    }

    /// Queue `msg` to every member but `except`; members whose queue is full are removed,
    /// kicked and announced as leaving (which may overflow others in turn).
    fn broadcast(&self, state: &mut RoomState, msg: Message, except: Option<u64>) {
        self.order(state, msg, except, None);
    }

    /// Queue room message `msg`, number `seq` (if stored), sent by member `sender`, to every
    /// other member; the sender gets `{"weir":"sent","seq":N}` in its place if it asked for acks.
    fn order(&self, state: &mut RoomState, msg: Message, sender: Option<u64>, seq: Option<u64>) {
        let ack = seq.map(|n| Message::text(format!("{{\"weir\":\"sent\",\"seq\":{n}}}")));
        let mut pending = vec![(msg, sender, ack)];
        while let Some((msg, except, ack)) = pending.pop() {
            let mut slow = Vec::new();
            state.members.retain_mut(|m| {
                let out = if Some(m.id) != except {
                    &msg
                } else {
                    match &ack {
                        Some(a) if m.acks => a,
                        _ => return true,
                    }
                };
                match m.queue.try_send(out.clone()) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        if let Some(k) = m.kick.take() {
                            let _ = k.send(Kick::Slow);
                        }
                        slow.push(m.id);
                        false
                    }
                    // The member's task is gone; its own leave announces it.
                    Err(mpsc::error::TrySendError::Closed(_)) => true,
                }
            });
            for id in slow {
                pending.push((self.slow_leave(id, state.members.len()), None, None));
            }
        }
    }

    /// An operator's message to room `id` (`POST /api/objects/{namespace}/{id}/messages`):
    /// stored in the history and delivered to every member in the room's order, like a member's
    /// message (the history does not record senders). Returns the members it was queued to, or
    /// `None` when the room has no member (or, with the shared store, its writer's queue is
    /// full or gone: counted as a store error).
    pub fn push(&self, id: &str, msg: Message) -> Option<usize> {
        let room = lock(&self.rooms).get(id).cloned()?;
        if let Some(writer) = room.writer.get() {
            let members = lock(&room.state).members.len();
            if members == 0 {
                return None;
            }
            if let Err(e) = writer.queue.try_send(Pending { msg, except: None }) {
                self.store_errors.inc();
                tracing::warn!(namespace = %self.namespace, room = %id, error = %e, "room history: the room's writer cannot take an operator's message");
                return None;
            }
            return Some(members);
        }
        let mut state = lock(&room.state);
        if state.members.is_empty() {
            return None;
        }
        self.store(&mut state, id, &msg);
        self.broadcast(&mut state, msg, None);
        Some(state.members.len())
    }

    /// Append `msg` to room `id`'s history file (a failure is counted and logged: the message
    /// is still delivered); its number once stored.
    fn store(&self, state: &mut RoomState, id: &str, msg: &Message) -> Option<u64> {
        let stored = stored(msg)?;
        let Some(Log::File(log)) = state.log.as_mut() else { return None };
        match log.append(stored) {
            Ok(()) => Some(log.last_seq()),
            Err(e) => {
                self.store_errors.inc();
                tracing::warn!(namespace = %self.namespace, room = %id, error = %e, "cannot store a room message; it is delivered but not kept");
                None
            }
        }
    }

    /// Count member `id` as too slow; returns its leave event for the `members` left.
    fn slow_leave(&self, id: u64, members: usize) -> Message {
        self.slow.inc();
        tracing::info!(namespace = %self.namespace, member = id, "room member too slow; closing it with 1013");
        event("leave", id, members, Some("slow"))
    }
}

/// The writer task of a shared-store room: appends what members send, in order, then delivers
/// it. Ends when the room is dropped (its queue closes) or stopped.
struct RoomWriter {
    rooms: Arc<Rooms>,
    pg: Arc<PgHistory>,
    id: String,
    token: i64,
    room: Weak<Room>,
    /// The next message's sequence number.
    next: u64,
    /// Messages appended since the last trim.
    untrimmed: usize,
}

impl RoomWriter {
    async fn run(mut self, mut rx: mpsc::Receiver<Pending>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        // Bounded per round by MAX_BATCH; ends when every sender is gone.
        while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
            let pending: Vec<(Message, Option<u64>, StoredMessage)> =
                batch.drain(..).filter_map(|p: Pending| stored(&p.msg).map(|s| (p.msg, p.except, s))).collect();
            let rows: Vec<(u64, StoredMessage)> =
                pending.iter().enumerate().map(|(i, (_, _, s))| (self.next + i as u64, s.clone())).collect();
            let ns = &self.rooms.namespace;
            match self.pg.append(ns, &self.id, self.token, &rows).await {
                Ok(()) => {}
                Err(PgError::Fenced) => {
                    self.rooms.fenced.inc();
                    tracing::warn!(namespace = %ns, room = %self.id, token = self.token, "room history: append fenced (a newer owner opened the room); closing its members with 1012");
                    return self.stop(Kick::Moved);
                }
                Err(PgError::Store(e)) => {
                    self.rooms.store_errors.inc_by(rows.len() as u64);
                    tracing::error!(namespace = %ns, room = %self.id, error = %e, "room history: append failed; closing the room's members with 1011");
                    return self.stop(Kick::Failed);
                }
            }
            self.next += rows.len() as u64;
            self.untrimmed += rows.len();
            let Some(room) = self.room.upgrade() else { continue };
            let below = {
                let mut state = lock(&room.state);
                for ((msg, except, _), (seq, stored)) in pending.into_iter().zip(rows) {
                    if let Some(Log::Shared(kept)) = state.log.as_mut() {
                        kept.push(seq, stored);
                    }
                    self.rooms.order(&mut state, msg, except, Some(seq));
                }
                // The newest row always stays: it carries the room's newest number.
                state.log.as_ref().map(|l| l.kept().first().min(l.kept().last()))
            };
            drop(room);
            if self.untrimmed >= TRIM_EVERY.max(self.rooms.config.history) {
                self.untrimmed = 0;
                if let Some(below) = below {
                    if let Err(e) = self.pg.trim(ns, &self.id, self.token, below).await {
                        tracing::warn!(namespace = %ns, room = %self.id, error = %e, "room history: cannot delete old rows");
                    }
                }
            }
        }
    }

    fn stop(&self, kick: Kick) {
        if let Some(room) = self.room.upgrade() {
            self.rooms.stop(&self.id, &room, kick);
        }
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
    kicked: oneshot::Receiver<Kick>,
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

    /// A member sent `msg`: store it and deliver it to everyone else, in room order (with the
    /// shared store, through the room's writer: this waits while its queue is full).
    async fn publish(&self, msg: Message) {
        if !matches!(msg, Message::Text(_) | Message::Binary(_)) {
            return;
        }
        if let Some(writer) = self.room.writer.get() {
            // A closed queue means the room stopped: this member was kicked already.
            let _ = writer.queue.send(Pending { msg, except: Some(self.member) }).await;
            return;
        }
        let mut state = lock(&self.room.state);
        let seq = self.rooms.store(&mut state, &self.id, &msg);
        self.rooms.order(&mut state, msg, Some(self.member), seq);
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
    /// The room moved to another owner (its store's fence refused an append, or the join).
    Moved,
    /// The room's history is unavailable (it cannot be opened, or an append failed).
    Unavailable,
    /// weir is shutting down.
    Shutdown,
    /// It sent a message shaped like a weir event.
    Forged,
    /// Its read side ended with this (a message over `room.max_message`, a broken frame, or the
    /// client gone).
    Read(crate::ws::End),
}

impl End {
    /// The end of a member the room removed (`Err`: it removed itself as too slow).
    fn kicked(kick: Result<Kick, oneshot::error::RecvError>) -> End {
        match kick {
            Ok(Kick::Moved) => End::Moved,
            Ok(Kick::Failed) => End::Unavailable,
            Ok(Kick::Slow) | Err(_) => End::Slow,
        }
    }

    /// The close weir sends the member for this end, if any.
    fn close(self) -> Option<Close> {
        match self {
            End::Client | End::Ordered(_) => None,
            End::Slow => Some(Close::TooSlow),
            End::Moved => Some(Close::ObjectMoved),
            End::Unavailable => Some(Close::RoomUnavailable),
            End::Shutdown => Some(Close::ObjectShutdown),
            End::Forged => Some(Close::Reserved),
            End::Read(end) => end.close(),
        }
    }
}

/// Run one member of room `id` over `ws` until it ends; returns the stream and whether weir
/// closed it for shutdown. Operator pushes to this one connection (`stops.live`) are written to
/// it between its queued room messages, and not stored; orders in `stops` (a kick, a drain, a
/// quota, the object's move: 1012) close it. `join` carries the fencing token and the client's
/// `?since=`.
#[allow(clippy::too_many_arguments)]
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    rooms: Arc<Rooms>,
    id: &str,
    join: Join,
    mut ws: WebSocketStream<S>,
    object: ObjectHandle,
    mut stops: Stops,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) -> Ended<S> {
    let live = stops.live.clone();
    let mut membership = match rooms.join(id, join).await {
        Ok(m) => m,
        Err(JoinError::Moved) => {
            close(&mut ws, Close::ObjectMoved).await;
            return (Some(ws.into_inner()), None);
        }
        Err(JoinError::Unavailable(e)) => {
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
                k = kicked => Some(End::kicked(k)),
                sent = tokio::time::timeout(send_timeout, write) => membership.after_write(sent),
            }
        }
    };
    let drain = drain_after(&mut shutdown, grace);
    tokio::pin!(drain);
    while end.is_none() {
        tokio::select! {
            biased;
            k = &mut membership.kicked => end = Some(End::kicked(k)),
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
                    k = kicked => Some(End::kicked(k)),
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
                    k = kicked => Some(End::kicked(k)),
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
                    membership.publish(m).await;
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
        End::Moved => Some(Cause::ObjectMoved),
        End::Read(crate::ws::End::TooBig) => Some(Cause::MessageTooBig),
        _ => None,
    };
    (Some(ws.into_inner()), cause)
}

#[cfg(test)]
mod tests {
    use super::Join;

    #[test]
    fn since_is_read_from_the_query_and_anything_odd_is_ignored() {
        assert_eq!(Join::since_of("/rooms/a?since=42"), Some(42));
        assert_eq!(Join::since_of("/rooms/a?x=1&since=0&y"), Some(0));
        assert_eq!(Join::since_of("/rooms/a?since=7#frag"), Some(7));
        for odd in ["/rooms/a", "/rooms/a?since=", "/rooms/a?since=-1", "/rooms/a?since=1e3", "/rooms/a?since=+5"] {
            assert_eq!(Join::since_of(odd), None, "{odd}");
        }
        assert_eq!(Join::since_of("/rooms/a?since=99999999999999999999999"), None, "over u64");
        assert_eq!(Join::since_of("/rooms/a?sinceX=3"), None);
    }
}
