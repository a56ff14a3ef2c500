//! The live-connection registry and the one sweeper that writes every `interim` record.
//!
//! Warm path: `begin` at the 101 (registers the connection and writes its `start`), `end` at its
//! end (deregisters it and writes its `stop`). Hot path: `Live::add`, once per relay wakeup that
//! moved bytes, adds what the wakeup counted to the connection's counts (their one copy: the
//! relay keeps none) and touches the active-time clock under the connection's own uncontended
//! mutex. Background: `sweep`, run by the `Sweeper` service (never a
//! timer per connection), writes an `interim` for each connection whose interval is due, with the
//! cumulative counts so far and the next sequence number. Due connections come off a timing wheel
//! (`relay::wheel`, 100 ms ticks): each open connection has one entry, moved one interval on when
//! its interim is written and removed at its end, so a sweep costs O(interims due), not O(open
//! connections).
//!
//! Sequence numbers are taken under the connection's mutex, and `end` marks the connection ended
//! under the same mutex, so a connection's records are numbered 0, 1, … without gaps and no
//! `interim` follows its `stop`.
//!
//! `end` also adds the stop record's totals to today's per-tenant tally (`today`), under the
//! tally's mutex while it deregisters the connection; `today()` reads the tally and the open
//! connections under that mutex, so a connection is counted once, as ended or as open.

use super::clock::ActiveClock;
use super::rejections::Rejections;
use super::today::Tally;
use super::{Meter, Progress, Rejection};
use crate::billing::{RecordKind, UsageLog, UsageRecord};
use crate::relay::mono;
use crate::relay::report::{Party, RelayReport};
use crate::relay::scanner::{add_chunk_counts, DirectionCounts, PlainCounts};
use crate::relay::wheel::{Key, Wheel};
use crate::relay::Stop;
use crate::sync::lock;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use prometheus::IntCounter;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

/// Length of one tick of the interim wheel.
const INTERIM_TICK: Duration = Duration::from_millis(100);

/// Most pushed messages waiting for one connection (`Live::push`); more get `PushError::Full`.
pub const MAX_QUEUED_PUSHES: usize = 16;
/// Most payload bytes of pushed messages waiting for one connection.
pub const MAX_QUEUED_PUSH_BYTES: usize = 256 * 1024;

/// Shards of the registry (connections spread by id, so begin/end rarely contend).
const SHARDS: usize = 16;

/// An open connection in the registry, found by its id: hashed and compared as the id it holds
/// (`Borrow<Uuid>`), so a slot is one pointer (8 bytes) where a map from id to entry takes 24
/// (README "Idle cost").
struct ById(Arc<Live>);

impl std::borrow::Borrow<uuid::Uuid> for ById {
    fn borrow(&self) -> &uuid::Uuid {
        &self.0.meter.identity().connection_id
    }
}

impl std::hash::Hash for ById {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::borrow::Borrow::<uuid::Uuid>::borrow(self).hash(state);
    }
}

impl PartialEq for ById {
    fn eq(&self, other: &ById) -> bool {
        self.0.meter.id() == other.0.meter.id()
    }
}

impl Eq for ById {}

/// The registry's hash of a connection id: weir makes the ids (UUIDv7, random in their low bits,
/// never chosen by a client), so SipHash's defence against chosen keys buys nothing here and
/// cost a handshake cycle about 800 instructions (its begin and end). Each 8 bytes written are
/// mixed in by a rotate, xor and multiply (FxHash's step), so the top bits the table's control
/// bytes take from the hash depend on every bit of the id.
#[derive(Default, Clone, Copy)]
struct IdHash(u64);

impl std::hash::Hasher for IdHash {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word.get_mut(..chunk.len()).unwrap_or_default().copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// One shard of the registry.
type Shard = HashSet<ById, std::hash::BuildHasherDefault<IdHash>>;

/// One relayed connection while it is open.
pub struct Live {
    /// Its identity (fixed after the 101).
    pub meter: Meter,
    state: Mutex<LiveState>,
    /// An order to close it (an operator's kick, a drain) is waiting in `LiveState::stop`.
    stop_pending: std::sync::atomic::AtomicBool,
    /// Pushed messages are waiting in `LiveState::pushes`.
    push_pending: std::sync::atomic::AtomicBool,
    /// weir began to shut down (`LiveSet::begin_shutdown`): the relay's grace period runs.
    shutdown: std::sync::atomic::AtomicBool,
    /// The relay's waker, woken when an order or a push comes.
    stop_waker: futures_util::task::AtomicWaker,
    /// Its relay or built-in object takes pushes (false for the built-in echo).
    pushable: std::sync::atomic::AtomicBool,
    /// How long traffic keeps it active (the set's `idle_threshold`), milliseconds (saturated
    /// at 49 days; 4 bytes beside the flags).
    window_ms: u32,
}

/// A message an operator pushed to one connection, waiting for its relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// A text message (valid UTF-8); otherwise binary.
    pub text: bool,
    /// The message payload, bytes.
    pub payload: Vec<u8>,
}

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The connection is closing: a close frame was sent or received, or it was ordered closed.
    Closing,
    /// Its queue holds `MAX_QUEUED_PUSHES` messages or `MAX_QUEUED_PUSH_BYTES` bytes already.
    Full,
    /// What serves it takes no pushes (the built-in echo).
    Unsupported,
}

impl PushError {
    /// HTTP status and message for the admin API.
    pub fn status(self) -> (u16, &'static str) {
        match self {
            PushError::Closing => (409, "the connection is closing (a close frame was sent or received)"),
            PushError::Full => (429, "too many pushes waiting for this connection; retry later"),
            PushError::Unsupported => (409, "this connection's built-in object takes no pushes"),
        }
    }
}

struct LiveState {
    /// Both directions' counters, the one copy of them; their chunk counts are in `extra`.
    counts: [PlainCounts; 2],
    /// What most connections never have (chunk counts, an order to close, pushes), boxed: made
    /// by the first of them, so an entry without them holds one pointer (README "Idle cost").
    extra: Option<Box<Extra>>,
    /// Its active time (the window is `Live::window_ms`).
    active: ActiveClock,
    last_seq: u64,
    /// When its next interim is due (`relay::mono::nanos`: 8 bytes, where an
    /// `Instant` takes 16).
    next_interim: u64,
    ended: bool,
    /// Round-trip time of the last answered keepalive ping, `[client, backend]`, microseconds
    /// (saturated at `u32::MAX`, 71 minutes; 8 bytes where two `Option<Duration>` take 32).
    rtt: [Option<std::num::NonZeroU32>; 2],
    /// Its entry on the interim wheel.
    due: Option<Key>,
}

/// The parts of a connection's state that most connections never have.
#[derive(Default)]
struct Extra {
    /// Both directions' chunk counts (`DirectionCounts::chunked`): nonzero only with billing
    /// units that count in chunks.
    chunked: [[u64; 4]; 2],
    /// An order to close the connection, until its relay takes it (boxed: 80 bytes).
    stop: Option<Box<Stop>>,
    /// Its pushes (boxed: allocated at the first push).
    pushed: Option<Box<Pushed>>,
}

/// A connection's pushes: those waiting and what was sent.
#[derive(Default)]
struct Pushed {
    /// Pushed messages its relay has not taken yet (at most `MAX_QUEUED_PUSHES`).
    pushes: std::collections::VecDeque<Push>,
    /// Payload bytes in `pushes`.
    push_bytes: usize,
    /// What weir sent the client on its own (pushes taken by the relay): messages, frames,
    /// payload and wire bytes.
    gateway: DirectionCounts,
}

impl LiveState {
    /// The counts so far, chunk counts included.
    fn counts(&self) -> [DirectionCounts; 2] {
        let chunked = self.extra.as_ref().map(|e| e.chunked).unwrap_or_default();
        [0, 1].map(|d| self.counts[d].with_chunks(chunked[d]))
    }

    /// Its rare parts, made now if they were not.
    fn extra(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Box::default)
    }

    /// An order to close it was given and not yet taken.
    fn stop_waits(&self) -> bool {
        self.extra.as_ref().is_some_and(|e| e.stop.is_some())
    }

    /// Its pushes, if it ever had one.
    fn pushed(&self) -> Option<&Pushed> {
        self.extra.as_ref()?.pushed.as_deref()
    }
}

impl Live {
    /// What a wakeup of the relay (or a tap's read or write) counted at `at`: added to the
    /// connection's counts; data frames keep it active (the active-time clock).
    pub fn add(&self, fresh: [&DirectionCounts; 2], at: Instant) {
        let mut s = lock(&self.state);
        for (total, more) in s.counts.iter_mut().zip(fresh) {
            total.add_counters(more);
        }
        if fresh.iter().any(|c| c.chunked != [0; 4]) {
            for (total, more) in s.extra().chunked.iter_mut().zip(fresh) {
                add_chunk_counts(total, &more.chunked);
            }
        }
        if fresh.iter().any(|c| c.data_frames != 0) {
            s.active.touch(at, Duration::from_millis(u64::from(self.window_ms)));
        }
    }

    /// The counts so far (the sum of every `add`).
    pub fn counts(&self) -> [DirectionCounts; 2] {
        lock(&self.state).counts()
    }

    /// Note the round-trip time of an answered keepalive ping to `side`.
    pub fn set_rtt(&self, side: Party, rtt: Duration) {
        let micros = u32::try_from(rtt.as_micros()).unwrap_or(u32::MAX).max(1);
        lock(&self.state).rtt[usize::from(side == Party::Backend)] = std::num::NonZeroU32::new(micros);
    }

    /// The last keepalive round-trip times, `[client, backend]`.
    pub fn rtt(&self) -> [Option<Duration>; 2] {
        lock(&self.state).rtt.map(|r| r.map(|us| Duration::from_micros(u64::from(us.get()))))
    }

    /// The relay's side: `Ready` with the order once one was given (registers the waker
    /// otherwise; one atomic load and a waker registration when none is pending).
    pub fn poll_stop(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Stop> {
        if !self.raised(&self.stop_pending, cx) {
            return std::task::Poll::Pending;
        }
        match lock(&self.state).extra.as_mut().and_then(|e| e.stop.take()) {
            Some(stop) => std::task::Poll::Ready(*stop),
            None => std::task::Poll::Pending,
        }
    }

    /// The relay's side: `Ready` once weir began to shut down (registers the waker otherwise;
    /// one atomic load and a waker registration before).
    pub fn poll_shutdown(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if self.raised(&self.shutdown, cx) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    }

    /// Whether `flag` (an order, pushes, shutdown) is set; when it is not, the relay's waker is
    /// registered first and the flag read again, so a setter that wakes after storing it is never
    /// missed.
    fn raised(&self, flag: &std::sync::atomic::AtomicBool, cx: &mut std::task::Context<'_>) -> bool {
        use std::sync::atomic::Ordering::Acquire;
        if flag.load(Acquire) {
            return true;
        }
        self.stop_waker.register(cx.waker());
        flag.load(Acquire)
    }

    /// Tell the connection weir began to shut down (its relay then runs out its grace period).
    fn begin_shutdown(&self) {
        self.shutdown.store(true, std::sync::atomic::Ordering::Release);
        self.stop_waker.wake();
    }

    /// Queue `push` for the client; returns how many pushes are waiting with it. Refused once
    /// the connection is closing, or over the queue's bounds.
    pub fn push(&self, push: Push) -> Result<usize, PushError> {
        use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
        if !self.pushable.load(Relaxed) {
            return Err(PushError::Unsupported);
        }
        let waiting = {
            let mut s = lock(&self.state);
            let closing = s.counts.iter().any(|c| c.closes > 0);
            if s.ended || s.stop_waits() || self.stop_pending.load(Acquire) || closing {
                return Err(PushError::Closing);
            }
            let p = s.extra().pushed.get_or_insert_with(Box::default);
            if p.pushes.len() >= MAX_QUEUED_PUSHES || p.push_bytes + push.payload.len() > MAX_QUEUED_PUSH_BYTES {
                return Err(PushError::Full);
            }
            p.push_bytes += push.payload.len();
            p.pushes.push_back(push);
            p.pushes.len()
        };
        self.push_pending.store(true, Release);
        self.stop_waker.wake();
        Ok(waiting)
    }

    /// Mark whether what serves the connection takes pushes (true from `LiveSet::begin`).
    pub fn set_pushable(&self, on: bool) {
        self.pushable.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// The relay's side: `Ready` with every waiting push once some are waiting (registers the
    /// waker otherwise: one atomic load when none is). With `count`, they are counted as
    /// weir's own traffic (`gateway`); built-in objects write them through their tap, which
    /// counts them as the object's.
    pub fn poll_pushes(&self, cx: &mut std::task::Context<'_>, count: bool) -> std::task::Poll<Vec<Push>> {
        use std::sync::atomic::Ordering::Release;
        if !self.raised(&self.push_pending, cx) {
            return std::task::Poll::Pending;
        }
        let mut s = lock(&self.state);
        self.push_pending.store(false, Release);
        let Some(pushed) = s.extra.as_mut().and_then(|e| e.pushed.as_mut()) else { return std::task::Poll::Pending };
        let pushes: Vec<Push> = pushed.pushes.drain(..).collect();
        pushed.push_bytes = 0;
        if count {
            for p in &pushes {
                let len = p.payload.len() as u64;
                let header = match len {
                    0..=125 => 2,
                    126..=0xFFFF => 4,
                    _ => 10,
                };
                let g = &mut pushed.gateway;
                g.messages += 1;
                g.frames += 1;
                g.data_frames += 1;
                if p.text {
                    g.text_messages += 1;
                } else {
                    g.binary_messages += 1;
                }
                g.payload_bytes += len;
                g.wire_bytes += len + header;
                g.largest_message_bytes = g.largest_message_bytes.max(len);
            }
        }
        if pushes.is_empty() {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(pushes)
        }
    }

    /// What weir sent the client on its own so far (pushes).
    pub fn gateway_counts(&self) -> DirectionCounts {
        lock(&self.state).pushed().map(|p| p.gateway).unwrap_or_default()
    }

    /// Order the connection closed as `stop` says (the first order wins).
    pub fn stop(&self, stop: Stop) {
        {
            let mut s = lock(&self.state);
            if s.ended || s.stop_waits() || self.stop_pending.load(std::sync::atomic::Ordering::Acquire) {
                return;
            }
            s.extra().stop = Some(Box::new(stop));
        }
        self.stop_pending.store(true, std::sync::atomic::Ordering::Release);
        self.stop_waker.wake();
    }

    /// Its lifetime and active time so far (milliseconds) and its counts.
    pub fn progress(&self, now: Instant) -> (u64, u64, [DirectionCounts; 2]) {
        let s = lock(&self.state);
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        (ms(now.saturating_duration_since(self.meter.started())), ms(s.active.total_at(now)), s.counts())
    }

    /// What the admin API shows of this connection (`now`: for its age).
    pub fn view(&self, now: Instant) -> serde_json::Value {
        let id = self.meter.identity();
        let s = lock(&self.state);
        let dir = |c: &PlainCounts| {
            serde_json::json!({
                "messages": c.messages, "frames": c.frames, "payload_bytes": c.payload_bytes,
                "wire_bytes": c.wire_bytes, "pings": c.pings, "pongs": c.pongs,
            })
        };
        let rtt = |r: Option<std::num::NonZeroU32>| r.map(|us| f64::from(us.get()) / 1000.0);
        serde_json::json!({
            "id": self.meter.id().to_string(),
            "route": id.route,
            "tenant": id.tenant,
            "client": id.client_addr,
            "backend": id.backend,
            "pool": id.pool,
            "object": id.object,
            "started_at": crate::billing::record::rfc3339_ms(id.started_at.system_time()),
            "age_ms": now.saturating_duration_since(self.meter.started()).as_millis() as u64,
            "active_ms": s.active.total_at(now).as_millis() as u64,
            "client_to_backend": dir(&s.counts[0]),
            "backend_to_client": dir(&s.counts[1]),
            "gateway": dir(&s.pushed().map(|p| p.gateway.with_chunks(())).unwrap_or_default()),
            "pushes_waiting": s.pushed().map_or(0, |p| p.pushes.len()),
            "rtt_ms": {"client": rtt(s.rtt[0]), "backend": rtt(s.rtt[1])},
            "records": s.last_seq + 1,
        })
    }
}

/// Every open relayed connection, and what `interim` records need.
pub struct LiveSet {
    shards: Vec<Mutex<Shard>>,
    interval: Duration,
    idle_threshold: Duration,
    usage: Arc<UsageLog>,
    /// The per-address limit of rejection records, and the counter of rejections summarised.
    rejections: Option<(Rejections, IntCounter)>,
    /// The drain of open connections began (`begin_drain`).
    drain_started: std::sync::atomic::AtomicBool,
    /// A drain began: new upgrades are refused (`begin_drain`).
    draining: std::sync::atomic::AtomicBool,
    /// weir began to shut down (`begin_shutdown`).
    shutting_down: std::sync::atomic::AtomicBool,
    /// Connections by the tick their next interim is due (ticks of `INTERIM_TICK` from the
    /// process's epoch, `relay::mono`).
    due: Mutex<Wheel<Weak<Live>>>,
    /// Today's usage of the connections that ended (UTC day); taken before a shard's mutex.
    today: Mutex<Tally>,
}

impl LiveSet {
    /// A registry writing `interim` records every `interval` to `usage`; traffic keeps a
    /// connection active for `idle_threshold`.
    pub fn new(interval: Duration, idle_threshold: Duration, usage: Arc<UsageLog>) -> LiveSet {
        // Its ticks count from the process's epoch: fixed no later than now.
        mono::now();
        LiveSet {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            interval,
            idle_threshold,
            usage,
            rejections: None,
            draining: std::sync::atomic::AtomicBool::new(false),
            drain_started: std::sync::atomic::AtomicBool::new(false),
            shutting_down: std::sync::atomic::AtomicBool::new(false),
            due: Mutex::new(Wheel::new(0)),
            today: Mutex::new(Tally::new(SystemTime::now())),
        }
    }

    /// The interim wheel's tick of `t`, rounded down (the tick `now` is in).
    fn tick(&self, t: Instant) -> u64 {
        mono::ticks(t, INTERIM_TICK)
    }

    /// The first tick at or after `at` (`mono::nanos`: an interim is never early; at most one
    /// tick late).
    fn due_tick(&self, at: u64) -> u64 {
        at.div_ceil(mono::nanos_in(INTERIM_TICK))
    }

    /// Limit rejection records per client address (`Rejections`); `summarised` counts the
    /// rejections that go into summaries instead.
    pub fn with_rejections(mut self, rejections: Rejections, summarised: IntCounter) -> LiveSet {
        self.rejections = Some((rejections, summarised));
        self
    }

    fn shard(&self, id: &uuid::Uuid) -> &Mutex<Shard> {
        let i = id.as_u128() as usize % SHARDS;
        &self.shards[i % self.shards.len()]
    }

    /// weir began to shut down: tell every open connection, and every one registered from now
    /// (each relay then runs out `server.grace_period` and closes with 1001). One walk over the
    /// set instead of a shutdown watch held by every idle connection (README "Idle cost").
    pub fn begin_shutdown(&self) {
        if self.shutting_down.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        for shard in &self.shards {
            for ById(live) in lock(shard).iter() {
                live.begin_shutdown();
            }
        }
    }

    /// A connection got its 101: register it and write its `start` record.
    pub fn begin(&self, meter: Meter) -> Arc<Live> {
        let none = [DirectionCounts::default(); 2];
        let mut start = meter.snapshot(RecordKind::Start, 0, Progress { counts: &none, active: Duration::ZERO });
        self.add_units(&mut start, &none);
        let live = Arc::new(Live {
            stop_pending: std::sync::atomic::AtomicBool::new(false),
            stop_waker: futures_util::task::AtomicWaker::new(),
            push_pending: std::sync::atomic::AtomicBool::new(false),
            shutdown: std::sync::atomic::AtomicBool::new(false),
            pushable: std::sync::atomic::AtomicBool::new(true),
            window_ms: u32::try_from(self.idle_threshold.as_millis()).unwrap_or(u32::MAX),
            state: Mutex::new(LiveState {
                counts: [PlainCounts::default(); 2],
                extra: None,
                active: ActiveClock::new(),
                last_seq: 0,
                next_interim: mono::nanos(meter.started()).saturating_add(mono::nanos_in(self.interval)),
                ended: false,
                rtt: [None; 2],
                due: None,
            }),
            meter,
        });
        lock(self.shard(&live.meter.id())).insert(ById(live.clone()));
        // After the insert: `begin_shutdown` sets the flag before it walks the shards, so a
        // connection it did not find sees the flag here.
        if self.shutting_down.load(std::sync::atomic::Ordering::SeqCst) {
            live.begin_shutdown();
        }
        let at = self.due_tick(lock(&live.state).next_interim);
        let key = lock(&self.due).insert(at, Arc::downgrade(&live));
        lock(&live.state).due = Some(key);
        self.usage.write(&start);
        live
    }

    /// A connection ended as `report` says: deregister it and write its `stop` record, which is
    /// returned.
    pub fn end(&self, live: &Live, report: &RelayReport) -> UsageRecord {
        let stop = {
            let mut s = lock(&live.state);
            s.ended = true;
            if let Some(key) = s.due.take() {
                lock(&self.due).remove(key);
            }
            s.last_seq += 1;
            let active = s.active.total_at(Instant::now());
            let mut stop = live.meter.stopped(s.last_seq, report, active);
            if let Some(p) = s.extra.as_mut().and_then(|e| e.pushed.take()) {
                // Pushes never taken by the relay were never sent: dropped with the connection.
                stop.gateway = crate::billing::DirectionUsage::from(&p.gateway);
            }
            self.add_units(&mut stop, &report.counts);
            stop
        };
        {
            // Counted as ended in the same critical section that takes it out of the open set.
            let mut today = lock(&self.today);
            today.roll(SystemTime::now());
            lock(self.shard(&live.meter.id())).remove(&live.meter.id());
            today.add_stop(&stop);
        }
        self.usage.write(&stop);
        stop
    }

    /// Today's usage per tenant (the ended connections' stop records plus the open connections'
    /// counts so far, each connection once) and the open connections it counted, oldest first.
    pub fn today(&self) -> (Tally, Vec<Arc<Live>>) {
        let (mut tally, open) = {
            let mut today = lock(&self.today);
            today.roll(SystemTime::now());
            (today.clone(), self.all())
        };
        let now = Instant::now();
        for l in &open {
            let age = now.saturating_duration_since(l.meter.started());
            tally.row(l.meter.identity().tenant.as_deref()).add_open(age, &l.counts());
        }
        (tally, open)
    }

    /// The pricing units `live` has used so far, by name (the units in force now).
    pub fn units_so_far(&self, live: &Live, now: Instant) -> std::collections::BTreeMap<String, f64> {
        let (duration_ms, active_ms, counts) = live.progress(now);
        self.usage.units().compute(duration_ms, active_ms, &counts)
    }

    /// A connection's handshake failed: write its one record.
    pub fn reject(&self, meter: &Meter, rejection: Rejection<'_>) {
        if let Some((limit, summarised)) = &self.rejections {
            if !limit.admit(meter.client().map(|a| a.ip()), rejection.status, Instant::now()) {
                // Over this address's records for the window: its summary counts it.
                summarised.inc();
                return;
            }
        }
        self.usage.write(&meter.rejected(rejection));
    }

    /// Write the rejection summaries of windows that ended by `now` (every open one when
    /// `force`, at exit).
    pub fn summarise_rejections(&self, now: Instant, force: bool) {
        if let Some((limit, _)) = &self.rejections {
            for summary in limit.due(now, force) {
                self.usage.write_summary(&summary);
            }
        }
    }

    /// True while records can be made durable; when false, new connections are refused unless
    /// `usage.fail_open` (the gateway's call).
    pub fn recording(&self) -> bool {
        self.usage.healthy()
    }

    /// Fill `record.units` from the connection's raw counts (the scanner's per-message chunk
    /// counts are not in the record itself).
    fn add_units(&self, record: &mut UsageRecord, counts: &[DirectionCounts; 2]) {
        let units = self.usage.units();
        if !units.is_empty() {
            record.units = units.compute(record.duration_ms, record.active_ms, counts);
        }
    }

    /// Write an `interim` for every connection whose interval is due at `now`; returns how many.
    /// Only the due connections are touched (they come off the interim wheel).
    pub fn sweep(&self, now: Instant) -> usize {
        self.summarise_rejections(now, false);
        let mut due = Vec::new();
        lock(&self.due).advance(self.tick(now), &mut due);
        let mut written = 0;
        for live in due.iter().filter_map(Weak::upgrade) {
            let record = {
                let mut s = lock(&live.state);
                if s.ended {
                    continue;
                }
                s.last_seq += 1;
                // The next one is due one interval later, never in a burst after a stall.
                let interval = mono::nanos_in(self.interval);
                let next = s.next_interim.saturating_add(interval);
                let now_ns = mono::nanos(now);
                s.next_interim = if next <= now_ns { now_ns.saturating_add(interval) } else { next };
                s.due = Some(lock(&self.due).insert(self.due_tick(s.next_interim), Arc::downgrade(&live)));
                let active = s.active.total_at(now);
                let counts = s.counts();
                let mut r = live.meter.snapshot(RecordKind::Interim, s.last_seq, Progress { counts: &counts, active });
                if let Some(p) = s.pushed() {
                    r.gateway = crate::billing::DirectionUsage::from(&p.gateway);
                }
                self.add_units(&mut r, &counts);
                r
            };
            self.usage.write(&record);
            written += 1;
        }
        written
    }

    /// When the next interim is due, if any connection is open.
    fn next_due(&self) -> Option<Instant> {
        let tick = lock(&self.due).next_due()?;
        Some(mono::tick_start(tick, INTERIM_TICK))
    }

    /// Begin the drain of open connections (true the first time); with `refuse_new`, new
    /// upgrades are refused from now on too (`draining`). A binary upgrade's old process drains
    /// without refusing: its listening socket lives on in the new process, so what it accepted
    /// in its last moments is served, not refused.
    pub fn begin_drain(&self, refuse_new: bool) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        if refuse_new {
            self.draining.store(true, Relaxed);
        }
        !self.drain_started.swap(true, Relaxed)
    }

    /// True once a drain that refuses new upgrades began.
    pub fn draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The open connection `id`, if it is open.
    pub fn get(&self, id: &uuid::Uuid) -> Option<Arc<Live>> {
        lock(self.shard(id)).get(id).map(|ById(live)| live.clone())
    }

    /// Every open connection (a snapshot, oldest first).
    pub fn all(&self) -> Vec<Arc<Live>> {
        let mut all: Vec<Arc<Live>> =
            self.shards.iter().flat_map(|s| lock(s).iter().map(|ById(l)| l.clone()).collect::<Vec<_>>()).collect();
        all.sort_by_key(|l| l.meter.id());
        all
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    /// True when no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The interim sweeper: a background service that writes due `interim` records when the interim
/// wheel says the next is due (and at least once a second), never a timer per connection.
pub struct Sweeper {
    set: Arc<LiveSet>,
}

impl Sweeper {
    /// The sweeper of `set`.
    pub fn new(set: Arc<LiveSet>) -> Sweeper {
        Sweeper { set }
    }
}

#[async_trait]
impl BackgroundService for Sweeper {
    /// Sweep when the next interim is due (at least once a second, which also writes due
    /// rejection summaries) until the service's runtime stops. The shutdown signal does not stop
    /// it: connections that drain for `server.grace_period` are still billed by interval, and
    /// each ends with its stop record. It passes the signal on to every open relay
    /// (`LiveSet::begin_shutdown`).
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut told = false;
        loop {
            if !told && *shutdown.borrow() {
                told = true;
                self.set.begin_shutdown();
            }
            let second = Instant::now() + Duration::from_secs(1);
            let wake = tokio::time::sleep_until(self.set.next_due().map_or(second, |due| due.min(second)).into());
            if told {
                wake.await;
            } else {
                tokio::select! {
                    _ = wake => {}
                    changed = shutdown.changed() => {
                        if changed.is_err() {
                            // The signal's sender is gone: the server is ending anyway.
                            told = true;
                            self.set.begin_shutdown();
                        }
                        continue;
                    }
                }
            }
            let set = self.set.clone();
            // Records are written with a blocking write(2) each: off the runtime thread.
            let _ = tokio::task::spawn_blocking(move || set.sweep(Instant::now())).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::spool::{read_lines, Spool};
    use crate::billing::UsageLog;
    use crate::metrics::Metrics;

    /// Ids made one after another (UUIDv7s of one millisecond differ in a counter and random
    /// low bits) spread over the hash's top 7 bits, which the table's control bytes use, and
    /// an id hashes as its `ById` does (the registry finds entries by id).
    #[test]
    fn connection_ids_hash_apart() {
        use std::hash::BuildHasher;
        let build = std::hash::BuildHasherDefault::<IdHash>::default();
        let tops: HashSet<u64> = (0..1000).map(|_| build.hash_one(uuid::Uuid::now_v7()) >> 57).collect();
        assert!(tops.len() >= 100, "{} of 128 top-7-bit values", tops.len());
        let (set, _spool, _dir) = set(Duration::from_secs(60));
        let live = ById(set.begin(Meter::start(None)));
        let id = live.0.meter.identity().connection_id;
        assert_eq!(build.hash_one(&live), build.hash_one(id));
    }

    fn set(interval: Duration) -> (LiveSet, Arc<Spool>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let metrics = Metrics::register(&prometheus::Registry::new()).unwrap();
        let usage = Arc::new(UsageLog::new(spool.clone(), metrics, Default::default()));
        (LiveSet::new(interval, Duration::from_millis(100), usage), spool, dir)
    }

    fn records(spool: &Spool, dir: &tempfile::TempDir) -> Vec<serde_json::Value> {
        spool.flush();
        read_lines(dir.path(), 0, u64::MAX, usize::MAX, usize::MAX)
            .unwrap()
            .0
            .iter()
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }

    fn report(counts: [DirectionCounts; 2]) -> RelayReport {
        use crate::relay::report::{Outcome, Party};
        RelayReport {
            counts,
            close_code: Some(1000),
            initiator: Party::Client,
            clean: true,
            outcome: Outcome::Completed,
            cause: crate::relay::report::Cause::ClientClose,
            violation: None,
        }
    }

    /// A shutdown reaches every open connection's relay (its waker is woken) and every one that
    /// begins after it; one walk over the set, no watch per connection.
    #[test]
    fn a_shutdown_reaches_open_connections_and_those_that_begin_after_it() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::task::{Context, Poll, Wake, Waker};
        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let (set, _spool, _dir) = set(Duration::from_secs(60));
        let before = set.begin(Meter::start(None));
        let woken = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        assert_eq!(before.poll_shutdown(&mut cx), Poll::Pending);
        set.begin_shutdown();
        assert_eq!(woken.0.load(Ordering::SeqCst), 1, "the parked relay is woken");
        assert_eq!(before.poll_shutdown(&mut cx), Poll::Ready(()));
        let after = set.begin(Meter::start(None));
        assert_eq!(after.poll_shutdown(&mut cx), Poll::Ready(()), "a connection that began during shutdown");
        set.begin_shutdown();
        assert_eq!(woken.0.load(Ordering::SeqCst), 1, "told once");
    }

    #[test]
    fn round_trip_times_are_kept_to_the_microsecond() {
        let (set, _spool, _dir) = set(Duration::from_secs(60));
        let live = set.begin(Meter::start(None));
        live.set_rtt(Party::Client, Duration::from_micros(1_503));
        live.set_rtt(Party::Client, Duration::from_micros(2_250));
        let view = live.view(Instant::now());
        assert_eq!(view["rtt_ms"]["client"], 2.25, "the last answer's, in milliseconds");
        assert!(view["rtt_ms"]["backend"].is_null(), "no ping answered yet");
        live.set_rtt(Party::Backend, Duration::from_nanos(10));
        live.set_rtt(Party::Client, Duration::from_secs(100_000));
        assert_eq!(
            live.rtt(),
            [Some(Duration::from_micros(u64::from(u32::MAX))), Some(Duration::from_micros(1))],
            "below a microsecond counts as one (an answer was seen); beyond 71 minutes saturates"
        );
    }

    /// The chunk counts are summed apart from the counters, in a box made only by the first
    /// `add` that has some, and come back with them.
    #[test]
    fn chunk_counts_are_kept_apart_and_only_when_counted() {
        let (set, _spool, _dir) = set(Duration::from_secs(60));
        let live = set.begin(Meter::start(None));
        let plain =
            DirectionCounts { messages: 2, data_frames: 2, frames: 2, largest_message_bytes: 9, ..Default::default() };
        live.add([&plain, &plain], Instant::now());
        assert!(lock(&live.state).extra.is_none(), "no chunk counted: no box");
        let chunked = DirectionCounts { messages: 1, chunked: [1, 0, 3, 0], largest_message_bytes: 4, ..plain };
        live.add([&DirectionCounts::default(), &chunked], Instant::now());
        live.add([&DirectionCounts::default(), &chunked], Instant::now());
        assert!(lock(&live.state).extra.is_some());
        let mut want = plain;
        want.add(&chunked);
        want.add(&chunked);
        assert_eq!(live.counts(), [plain, want]);
        assert_eq!(live.counts()[1].chunked, [2, 0, 6, 0]);
        assert_eq!(live.counts()[1].largest_message_bytes, 9);
    }

    #[test]
    fn interims_are_due_per_interval_and_none_follows_the_stop() {
        let (set, spool, dir) = set(Duration::from_secs(60));
        let live = set.begin(Meter::start(None));
        let t0 = live.meter.started();
        assert_eq!(set.sweep(t0 + Duration::from_secs(59)), 0, "not due yet");
        let c = DirectionCounts { messages: 3, data_frames: 3, frames: 3, ..Default::default() };
        live.add([&c, &DirectionCounts::default()], Instant::now());
        assert_eq!(set.sweep(t0 + Duration::from_secs(61)), 1);
        assert_eq!(set.sweep(t0 + Duration::from_secs(62)), 0, "the next one is an interval later");
        // A stall of ten intervals gives one interim, not ten.
        assert_eq!(set.sweep(t0 + Duration::from_secs(700)), 1);
        assert_eq!(set.sweep(t0 + Duration::from_secs(701)), 0);
        let stop = set.end(&live, &report([c, DirectionCounts::default()]));
        assert_eq!((stop.record.as_str(), stop.seq), ("stop", 3));
        assert_eq!(set.sweep(t0 + Duration::from_secs(10_000)), 0, "nothing after the stop");
        assert!(set.is_empty());
        let recs = records(&spool, &dir);
        let kinds: Vec<(&str, u64)> =
            recs.iter().map(|r| (r["record"].as_str().unwrap(), r["seq"].as_u64().unwrap())).collect();
        assert_eq!(kinds, vec![("start", 0), ("interim", 1), ("interim", 2), ("stop", 3)]);
        assert_eq!(recs[1]["client_to_backend"]["messages"], 3, "interims carry the counts observed so far");
        assert_eq!(recs[1]["idempotency_key"].as_str().unwrap(), format!("{}:1", live.meter.id()));
    }

    #[test]
    fn today_counts_each_connection_once_as_ended_or_open() {
        let (set, _spool, _dir) = set(Duration::from_secs(60));
        let (ended, open) = (set.begin(Meter::start(None)), set.begin(Meter::start(None)));
        let c = DirectionCounts { messages: 3, wire_bytes: 30, ..Default::default() };
        open.add([&c, &DirectionCounts::default()], Instant::now());
        let before = set.today().0.untenanted;
        assert_eq!((before.connections, before.messages, before.client_to_backend_bytes), (2, 3, 30));
        ended.add([&c, &c], Instant::now());
        set.end(&ended, &report([c, c]));
        let (tally, still_open) = set.today();
        assert_eq!(still_open.len(), 1);
        let u = tally.untenanted;
        assert_eq!((u.connections, u.messages, u.client_to_backend_bytes, u.backend_to_client_bytes), (2, 9, 60, 30));
    }

    #[test]
    fn many_connections_one_sweep() {
        let (set, spool, dir) = set(Duration::from_secs(1));
        let lives: Vec<_> = (0..100).map(|_| set.begin(Meter::start(None))).collect();
        // Due one interval after each start; written at most one wheel tick later.
        let later = lives.iter().map(|l| l.meter.started()).max().unwrap() + Duration::from_secs(1) + INTERIM_TICK;
        assert_eq!(set.sweep(later), 100);
        assert_eq!(set.len(), 100);
        let recs = records(&spool, &dir);
        assert_eq!(recs.iter().filter(|r| r["record"] == "interim").count(), 100);
    }
}
