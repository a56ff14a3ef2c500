//! Guards: the limits the relay enforces on one open connection (idle timeout, lifetime, close
//! timeout, keepalive pings, message and byte rates). `Guards` is what the gateway configures;
//! `Watch` is one connection's state, kept by the relay (boxed, only when a guard is on) and
//! consulted once per wakeup.
//!
//! Warm path (per wakeup): `Watch::observe` notes activity from what the scanners counted in the
//! wakeup (a few comparisons), `Watch::charge` debits the rate buckets, `Watch::due` says what is due now and
//! `Watch::next` the earliest deadline, which the relay arms on the process's one `Timers` wheel.
//! Deadlines are plain ticks here: activity only moves these fields, never the wheel, and an
//! alarm that fires early (the deadline moved) is simply re-armed. No task, timer or thread of its
//! own exists for a connection; an idle one wakes only when one of its deadlines is due.
//!
//! Sans-io: the caller passes the clock (`now` in `Timers` ticks, and an `Instant` for RTTs and
//! token buckets), so the logic is tested without sockets or sleeps.

use super::frame::{parse_header, Opcode};
use super::scanner::DirectionCounts;
use super::timers::{Alarm, Timers};
use std::time::{Duration, Instant};

/// What weir enforces on the connections of one route, shared by them (one `Arc` per route: a
/// connection's `Watch` holds a pointer, not a 200-byte copy); every field `None`/off disables
/// that guard.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Guards {
    /// Close with 1001 "idle timeout" when no data frame passed in either direction this long.
    pub idle_timeout: Option<Duration>,
    /// Pings and pongs (from the peers, never weir's own) count as activity for `idle_timeout`.
    pub control_is_activity: bool,
    /// The longest a connection lives; then 1001, or 1012 when `lifetime_restart`. Each
    /// connection's is shorter by its share of `lifetime_jitter` (`Watch::new`).
    pub lifetime: Option<Duration>,
    /// Spread of the lifetimes: a connection's ends up to this much before `lifetime`, so those
    /// opened together do not all reconnect at once.
    pub lifetime_jitter: Duration,
    /// Close at the end of `lifetime` with 1012 (reconnect now) instead of 1001.
    pub lifetime_restart: bool,
    /// After one side's close frame, the other has this long to answer; then both sockets are
    /// closed.
    pub close_timeout: Option<Duration>,
    /// weir's own pings.
    pub keepalive: Option<Keepalive>,
    /// Rate limits per direction, indexed by `Direction::index` (client → backend first).
    pub rates: [Option<Rate>; 2],
}

impl Guards {
    /// True when no guard is on (the relay then keeps no `Watch` at all).
    pub fn is_off(&self) -> bool {
        self.idle_timeout.is_none()
            && self.lifetime.is_none()
            && self.close_timeout.is_none()
            && self.keepalive.is_none()
            && self.rates.iter().all(Option::is_none)
    }
}

/// weir's keepalive pings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// A side that sent nothing for this long gets a ping.
    pub interval: Duration,
    /// A pinged side that sends nothing for this long is dead (the other side gets 1011).
    pub timeout: Duration,
    /// Ping the backend too (else only the client).
    pub backend: bool,
}

/// A rate limit on one direction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Data messages per second, with a burst.
    pub messages: Option<Bucket>,
    /// Wire bytes per second, with a burst.
    pub bytes: Option<Bucket>,
    /// What happens to a sender over the limit.
    pub action: RateAction,
}

/// A token bucket's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    /// Tokens added per second (messages or bytes).
    pub per_second: f64,
    /// Most tokens held (the burst), messages or bytes.
    pub burst: f64,
}

/// What weir does to a sender over its rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateAction {
    /// Close with 1008 "rate limit".
    Close,
    /// Stop reading the sender until its bucket has refilled (backpressure; nothing dropped).
    Throttle,
}

/// What a rate check decided for one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charge {
    /// Within the limits.
    Ok,
    /// Over, with `action: close`.
    Close,
    /// Over, with `action: throttle`: do not read the sender before this tick.
    PauseUntil(u64),
}

/// What is due on a connection now, most final first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// A close frame went unanswered for `close_timeout`.
    CloseTimeout,
    /// The side (0 client, 1 backend) did not answer weir's ping in time.
    Dead(usize),
    /// The connection reached its lifetime.
    Lifetime,
    /// No data frame for `idle_timeout`.
    Idle,
    /// The side (0 client, 1 backend) should get a ping now.
    Ping(usize),
}

/// weir's ping payload: `weir` and a 4-byte sequence number.
pub type PingPayload = [u8; 8];

/// The payload of weir's ping number `seq`: `weir` and `seq`, big-endian.
fn ping_payload(seq: u32) -> PingPayload {
    let mut payload = *b"weir\0\0\0\0";
    payload[4..].copy_from_slice(&seq.to_be_bytes());
    payload
}

/// A deadline that never comes: a tick no clock reaches (deadlines are plain ticks rather than
/// `Option`s, 8 bytes each where an `Option<u64>` takes 16).
const NEVER: u64 = u64::MAX;

/// One side's keepalive state.
#[derive(Debug)]
struct Peer {
    /// Wire bytes read from this side in this wakeup at the last `observe`.
    heard_bytes: u64,
    /// Tick this side was last heard from (sent anything).
    heard_at: u64,
    /// When the outstanding ping (`Watch::pings_out`) was sent (`mono::nanos`: 8 bytes where an
    /// `Instant` takes 16).
    ping_sent: u64,
    /// Tick the last ping was sent (kept after its pong: the next one is an interval later).
    pinged_at: u64,
    /// The side must be heard from by this tick (a ping is unanswered); `NEVER` when none is.
    answer_by: u64,
}

impl Peer {
    /// A side heard from at tick `now`, not pinged yet.
    fn new(now: u64) -> Peer {
        Peer { heard_bytes: 0, heard_at: now, ping_sent: 0, pinged_at: 0, answer_by: NEVER }
    }
}

/// One direction's token buckets (used only when the route rates that direction:
/// `Guards::rates`).
#[derive(Debug, Default)]
struct Tokens {
    messages: f64,
    bytes: f64,
    /// When they were last filled (`mono::nanos`).
    at: u64,
    seen_messages: u64,
    seen_bytes: u64,
}

/// One connection's rate-limit state: both directions' buckets and pauses. Boxed in `Watch` and
/// made only when the route has a rate: rates are off by default, and an idle connection without
/// them carries no buckets.
#[derive(Debug)]
struct Rates {
    /// Each direction's buckets (an unrated direction's stay unused): 40 bytes each, where an
    /// `Option` with an `Instant` takes 48.
    tokens: [Tokens; 2],
    /// Tick each direction's pause ends; `NEVER` while it is not paused (plain ticks: 96 bytes
    /// in all, jemalloc's 96-byte class).
    paused_until: [u64; 2],
}

/// One connection's guard state (see the module doc).
#[derive(Debug)]
pub struct Watch {
    guards: std::sync::Arc<Guards>,
    /// Tick this connection's lifetime ends (its share of the jitter taken off); `NEVER` without
    /// a lifetime.
    lifetime_end: u64,
    /// The connection's one entry on the wheel.
    pub alarm: Alarm,
    last_active: u64,
    /// Activity counter (data frames, or all frames) in this wakeup at the last `observe`.
    activity: u64,
    /// Tick by which the other side must answer the close frame one side sent (`close_timeout`
    /// after it was first seen); `NEVER` while no close waits for an answer.
    close_by: u64,
    peers: [Peer; 2],
    /// The rate limits' state, when the route has a rate.
    rates: Option<Box<Rates>>,
    /// Each side's outstanding ping: its sequence number (its payload is `ping_payload` of it,
    /// matched against pongs until the next ping), 0 when none is outstanding. Kept here rather
    /// than in `Peer`, so the two pack with `pings_sent` and the state fits jemalloc's 160-byte
    /// class (README "Idle cost").
    pings_out: [u32; 2],
    /// Pings sent so far (the last one's sequence number; 0 is skipped when it wraps).
    pings_sent: u32,
    /// A close frame was seen: no more pings.
    closing: bool,
}

impl Watch {
    /// The state of a connection starting at tick `now` (`at` for the token buckets) under
    /// `guards`; `share` (in [0, 1)) is how much of the lifetime jitter it gets.
    pub fn new(guards: std::sync::Arc<Guards>, share: f64, now: u64, at: Instant) -> Watch {
        let lifetime_end = guards.lifetime.map_or(NEVER, |l| {
            let mine = l.saturating_sub(guards.lifetime_jitter.mul_f64(share.clamp(0.0, 1.0)));
            now.saturating_add(Timers::ticks_in(mine))
        });
        let rates = guards.rates.iter().any(Option::is_some).then(|| {
            let at = super::mono::nanos(at);
            let tokens = guards.rates.map(|r| {
                r.map_or_else(Tokens::default, |r| Tokens {
                    messages: r.messages.map_or(0.0, |b| b.burst),
                    bytes: r.bytes.map_or(0.0, |b| b.burst),
                    at,
                    seen_messages: 0,
                    seen_bytes: 0,
                })
            });
            Box::new(Rates { tokens, paused_until: [NEVER; 2] })
        });
        Watch {
            guards,
            lifetime_end,
            alarm: Alarm::default(),
            last_active: now,
            activity: 0,
            close_by: NEVER,
            peers: [Peer::new(now), Peer::new(now)],
            rates,
            pings_out: [0; 2],
            pings_sent: 0,
            closing: false,
        }
    }

    /// A new wakeup of the relay begins: the counts `observe` and `charge` are given start from
    /// zero again (the relay counts each wakeup on its own), so what they were last given is
    /// forgotten.
    pub fn begin_wakeup(&mut self) {
        self.activity = 0;
        for peer in &mut self.peers {
            peer.heard_bytes = 0;
        }
        if let Some(rates) = self.rates.as_deref_mut() {
            for t in &mut rates.tokens {
                (t.seen_messages, t.seen_bytes) = (0, 0);
            }
        }
    }

    /// Note what the scanners saw since the last call (`counts` grow from zero at
    /// `begin_wakeup`): activity, which side was heard from, whether a close waits for its
    /// answer. `closes` says which side (client, backend) has sent its close frame.
    pub fn observe(&mut self, now: u64, counts: [&DirectionCounts; 2], closes: [bool; 2]) {
        let activity = counts
            .iter()
            .map(|c| if self.guards.control_is_activity { c.frames.saturating_sub(c.closes) } else { c.data_frames })
            .sum::<u64>();
        if activity != self.activity {
            self.activity = activity;
            self.last_active = now;
        }
        for (peer, c) in self.peers.iter_mut().zip(counts) {
            if c.wire_bytes != peer.heard_bytes {
                peer.heard_bytes = c.wire_bytes;
                peer.heard_at = now;
                peer.answer_by = NEVER;
            }
        }
        self.closing |= closes[0] || closes[1];
        self.close_by = match (closes, self.guards.close_timeout) {
            ([true, true] | [false, false], _) | (_, None) => NEVER,
            (_, Some(t)) if self.close_by == NEVER => now.saturating_add(Timers::ticks_in(t)),
            _ => self.close_by,
        };
    }

    /// Debit direction `d`'s buckets with what it sent since the last call (`counts` grow from
    /// zero at `begin_wakeup`), at `at` (`mono::nanos`) in tick `now`.
    pub fn charge(&mut self, d: usize, counts: &DirectionCounts, at: u64, now: u64) -> Charge {
        let Some(state) = self.rates.as_deref_mut() else { return Charge::Ok };
        let (Some(rate), Some(t)) = (self.guards.rates.get(d).copied().flatten(), state.tokens.get_mut(d)) else {
            return Charge::Ok;
        };
        // Nothing sent since the last charge and neither bucket overdrawn: refilling cannot
        // change the answer, so it is left to the next charge (filling over both intervals at
        // once, capped at the burst, gives the same balance). The relay charges each rated read
        // and then once more per wakeup; this makes the second one a comparison.
        if counts.messages == t.seen_messages
            && counts.wire_bytes == t.seen_bytes
            && t.messages >= 0.0
            && t.bytes >= 0.0
        {
            return Charge::Ok;
        }
        let elapsed = at.saturating_sub(t.at) as f64 / 1e9;
        t.at = at;
        let mut wait = 0.0f64;
        for (bucket, tokens, seen, count) in [
            (rate.messages, &mut t.messages, &mut t.seen_messages, counts.messages),
            (rate.bytes, &mut t.bytes, &mut t.seen_bytes, counts.wire_bytes),
        ] {
            let used = count.saturating_sub(*seen) as f64;
            *seen = count;
            let Some(b) = bucket else { continue };
            *tokens = (*tokens + elapsed * b.per_second).min(b.burst) - used;
            if *tokens < 0.0 && b.per_second > 0.0 {
                wait = wait.max(-*tokens / b.per_second);
            } else if *tokens < 0.0 {
                wait = f64::INFINITY;
            }
        }
        if wait <= 0.0 {
            return Charge::Ok;
        }
        match rate.action {
            RateAction::Close => Charge::Close,
            RateAction::Throttle => {
                let until = now.saturating_add(Timers::ticks_in(Duration::from_secs_f64(wait.min(3600.0))));
                if let Some(p) = state.paused_until.get_mut(d) {
                    *p = until;
                }
                Charge::PauseUntil(until)
            }
        }
    }

    /// Whether direction `d` has a rate (`message_rate` or `bandwidth`): the relay then charges
    /// each read of it at once, so no read goes past a pause its predecessor earned.
    pub fn rated(&self, d: usize) -> bool {
        self.guards.rates.get(d).copied().flatten().is_some()
    }

    /// Bytes direction `d` may still send under its byte rate (`bandwidth`), as its bucket stood
    /// at the last charge (a lower bound: it only fills until the next one); `None` without a
    /// byte rate.
    pub fn byte_allowance(&self, d: usize) -> Option<u64> {
        self.guards.rates.get(d).copied().flatten()?.bytes?;
        let tokens = self.rates.as_deref()?.tokens.get(d)?.bytes;
        // Saturating: a negative balance (a sender over its rate) allows nothing.
        Some(tokens as u64)
    }

    /// Directions whose pause is over at `now` (cleared here).
    pub fn resume(&mut self, now: u64) -> [bool; 2] {
        let mut out = [false; 2];
        let Some(state) = self.rates.as_deref_mut() else { return out };
        for (o, p) in out.iter_mut().zip(state.paused_until.iter_mut()) {
            if *p <= now {
                *p = NEVER;
                *o = true;
            }
        }
        out
    }

    /// The most final thing due at `now`, if any. `Ping` stays due until `pinged` is called.
    pub fn due(&self, now: u64) -> Option<Due> {
        let g = &self.guards;
        if now >= self.close_by {
            return Some(Due::CloseTimeout);
        }
        if let Some(side) = self.peers.iter().position(|p| now >= p.answer_by) {
            return Some(Due::Dead(side));
        }
        if now >= self.lifetime_end {
            return Some(Due::Lifetime);
        }
        if g.idle_timeout.is_some_and(|t| now >= self.last_active.saturating_add(Timers::ticks_in(t))) {
            return Some(Due::Idle);
        }
        (0..2).find(|&side| self.ping_at(side).is_some_and(|at| now >= at)).map(Due::Ping)
    }

    /// The earliest tick at which something is due (for the alarm).
    ///
    /// Plain loops, not an iterator chain: the chain was built on the stack and copied
    /// (`Chain::fold` and a 152-byte `memcpy`, about 800 instructions per handshake cycle).
    pub fn next(&self) -> Option<u64> {
        let mut next: Option<u64> = None;
        let mut consider = |t: u64| next = Some(next.map_or(t, |n| n.min(t)));
        let paused = self.rates.as_deref().map_or([NEVER; 2], |r| r.paused_until);
        let [a, b] = paused;
        for t in [self.close_by, self.lifetime_end, self.peers[0].answer_by, self.peers[1].answer_by, a, b] {
            if t != NEVER {
                consider(t);
            }
        }
        if let Some(t) = self.guards.idle_timeout {
            consider(self.last_active.saturating_add(Timers::ticks_in(t)));
        }
        for side in 0..2 {
            if let Some(t) = self.ping_at(side) {
                consider(t);
            }
        }
        next
    }

    /// When `side` should next be pinged: it was silent for the interval and no ping waits.
    fn ping_at(&self, side: usize) -> Option<u64> {
        let k = self.guards.keepalive?;
        if self.closing || (side == 1 && !k.backend) {
            return None;
        }
        let p = &self.peers[side];
        if p.answer_by != NEVER {
            return None;
        }
        // After a ping, the next one is an interval after it was sent (or after the side was
        // last heard from, whichever is later); weir's own pong is not "heard" (it is swallowed).
        Some(p.heard_at.max(p.pinged_at).saturating_add(Timers::ticks_in(k.interval)))
    }

    /// A ping to `side` was queued at `now` (`at`): its payload, which its pong must carry.
    pub fn pinged(&mut self, side: usize, now: u64, at: Instant) -> PingPayload {
        self.pings_sent = self.pings_sent.checked_add(1).unwrap_or(1);
        let timeout = self.guards.keepalive.map_or(Duration::ZERO, |k| k.timeout);
        if let Some(out) = self.pings_out.get_mut(side) {
            *out = self.pings_sent;
        }
        let p = &mut self.peers[side];
        p.ping_sent = super::mono::nanos(at);
        p.pinged_at = now;
        p.answer_by = now.saturating_add(Timers::ticks_in(timeout));
        ping_payload(self.pings_sent)
    }

    /// The ping payload a pong from `side` must carry to be weir's, while one is outstanding.
    pub fn expected_pong(&self, side: usize) -> Option<PingPayload> {
        self.pings_out.get(side).copied().filter(|&seq| seq != 0).map(ping_payload)
    }

    /// weir's pong came back from `side` at `at`: the round-trip time.
    pub fn ponged(&mut self, side: usize, at: Instant) -> Option<Duration> {
        let out = self.pings_out.get_mut(side).filter(|seq| **seq != 0)?;
        *out = 0;
        let p = &mut self.peers[side];
        p.answer_by = NEVER;
        Some(at.saturating_duration_since(super::mono::instant(p.ping_sent)))
    }

    /// Close with 1012 (not 1001) at the end of the lifetime.
    pub fn restart(&self) -> bool {
        self.guards.lifetime_restart
    }
}

/// Where weir's pong (payload `payload`, masked when `masked`) sits in `chunk`, the next bytes
/// read from a side, when it is there whole: `(start, end)`. `remaining` is the payload of the
/// current frame still to come at the chunk's start (`Scan::frame_remaining`); `None`
/// (a header split across reads) finds nothing. Walks headers only; runs only while a ping of
/// weir's is outstanding on that side.
pub fn find_pong(remaining: Option<u64>, chunk: &[u8], payload: &PingPayload, masked: bool) -> Option<(usize, usize)> {
    let mut pos = usize::try_from(remaining?).ok()?;
    while let Some(rest) = chunk.get(pos..).filter(|r| !r.is_empty()) {
        let h = parse_header(rest).ok()??;
        let start = pos.checked_add(usize::from(h.header_len))?;
        let end = start.checked_add(usize::try_from(h.payload_len).ok()?)?;
        if h.opcode == Opcode::Pong && h.fin && h.rsv == 0 && h.mask.is_some() == masked {
            let key = h.mask.unwrap_or_default();
            let body = chunk.get(start..end)?;
            let unmasked = body.iter().zip(key.iter().cycle()).map(|(b, k)| b ^ k);
            if body.len() == payload.len() && unmasked.eq(payload.iter().copied()) {
                return Some((pos, end));
            }
        }
        pos = end;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A connection on a route with a rate holds its `Rates` in a 96-byte block (README "Idle
    /// cost"): held to it, so a field added is a decision.
    #[test]
    fn rate_state_fits_its_size_class() {
        assert!(std::mem::size_of::<Rates>() <= 96, "{}", std::mem::size_of::<Rates>());
    }

    /// A connection's guard state with keepalive on (interval 100 ms, timeout 50 ms; the
    /// backend pinged too with `backend`), started at tick 0 and at the returned instant.
    fn pinging(backend: bool) -> (Watch, Instant) {
        let k = Keepalive { interval: Duration::from_millis(100), timeout: Duration::from_millis(50), backend };
        // Ping times are kept from the process's epoch (`mono`): it starts before them, as in a relay.
        crate::relay::mono::now();
        let t0 = Instant::now();
        (Watch::new(Arc::new(Guards { keepalive: Some(k), ..Guards::default() }), 0.0, 0, t0), t0)
    }

    fn counts(data_frames: u64, wire_bytes: u64) -> DirectionCounts {
        DirectionCounts { data_frames, frames: data_frames, wire_bytes, messages: data_frames, ..Default::default() }
    }

    fn idle(ms: u64) -> Guards {
        Guards { idle_timeout: Some(Duration::from_millis(ms)), ..Guards::default() }
    }

    #[test]
    fn idle_moves_with_data_frames_only() {
        let t0 = Instant::now();
        let mut w = Watch::new(Arc::new(idle(100)), 0.0, 0, t0);
        let none = DirectionCounts::default();
        assert_eq!(w.next(), Some(10));
        assert_eq!(w.due(9), None);
        // A data frame at tick 5 moves the deadline.
        w.observe(5, [&counts(1, 10), &none], [false, false]);
        assert_eq!((w.due(10), w.next()), (None, Some(15)));
        // A ping (a frame, not a data frame) does not.
        let ping = DirectionCounts { frames: 2, data_frames: 1, wire_bytes: 20, ..Default::default() };
        w.observe(8, [&ping, &none], [false, false]);
        assert_eq!(w.due(15), Some(Due::Idle));
        // Unless control frames count.
        let mut w = Watch::new(Arc::new(Guards { control_is_activity: true, ..idle(100) }), 0.0, 0, t0);
        w.observe(8, [&ping, &none], [false, false]);
        assert_eq!(w.next(), Some(18));
    }

    #[test]
    fn an_unanswered_close_is_due_after_the_close_timeout() {
        let g = Guards { close_timeout: Some(Duration::from_millis(50)), ..Guards::default() };
        let mut w = Watch::new(Arc::new(g), 0.0, 0, Instant::now());
        let none = DirectionCounts::default();
        assert_eq!(w.next(), None);
        w.observe(3, [&none, &none], [true, false]);
        w.observe(6, [&none, &none], [true, false]);
        assert_eq!((w.next(), w.due(7), w.due(8)), (Some(8), None, Some(Due::CloseTimeout)));
        w.observe(7, [&none, &none], [true, true]);
        assert_eq!((w.next(), w.due(100)), (None, None), "answered");
    }

    #[test]
    fn keepalive_pings_a_silent_side_and_declares_it_dead_when_it_stays_silent() {
        let (mut w, t0) = pinging(false);
        let none = DirectionCounts::default();
        assert_eq!((w.next(), w.due(9), w.due(10)), (Some(10), None, Some(Due::Ping(0))), "only the client");
        let payload = w.pinged(0, 10, t0);
        assert_eq!(&payload[..4], b"weir");
        assert_eq!(w.expected_pong(0), Some(payload));
        assert_eq!((w.next(), w.due(14), w.due(15)), (Some(15), None, Some(Due::Dead(0))));
        // Heard from in time: alive; the pong gives the RTT.
        w.observe(12, [&counts(0, 8), &none], [false, false]);
        assert_eq!(w.due(15), None);
        assert_eq!(w.ponged(0, t0 + Duration::from_millis(20)), Some(Duration::from_millis(20)));
        assert_eq!(w.expected_pong(0), None);
        assert_eq!(w.ponged(0, t0 + Duration::from_millis(30)), None, "answered once");
    }

    /// Each side's outstanding ping is its own; ping numbers go on across both sides and skip
    /// 0 (no ping outstanding) when they wrap.
    #[test]
    fn each_side_waits_for_its_own_ping_and_numbers_skip_zero() {
        let (mut w, t0) = pinging(true);
        w.pings_sent = u32::MAX - 1;
        let client = w.pinged(0, 10, t0);
        let backend = w.pinged(1, 10, t0 + Duration::from_millis(1));
        assert_eq!((client, backend), (*b"weir\xff\xff\xff\xff", *b"weir\0\0\0\x01"));
        assert_eq!((w.expected_pong(0), w.expected_pong(1)), (Some(client), Some(backend)));
        assert_eq!(w.ponged(1, t0 + Duration::from_millis(4)), Some(Duration::from_millis(3)));
        assert_eq!((w.expected_pong(0), w.expected_pong(1)), (Some(client), None));
        assert_eq!(w.ponged(0, t0 + Duration::from_millis(7)), Some(Duration::from_millis(7)));
    }

    /// weir's pong is swallowed, so it does not count as hearing from the side: the next ping is
    /// an interval after the last one, not at once (it was: pings flooded a silent client).
    #[test]
    fn after_weirs_pong_the_next_ping_is_an_interval_after_the_last() {
        let (mut w, t0) = pinging(false);
        let none = DirectionCounts::default();
        let mut pings = 0;
        for now in 0..=1000u64 {
            w.observe(now, [&none, &none], [false, false]);
            if w.due(now) == Some(Due::Ping(0)) {
                w.pinged(0, now, t0);
                pings += 1;
                // Answered at once, by a pong weir swallows (no bytes counted).
                assert!(w.ponged(0, t0).is_some());
                assert!(w.next().unwrap() >= now + 10, "the next ping is an interval later");
            }
        }
        assert_eq!(pings, 100, "one ping per interval over 10 s of silence");
    }

    /// What a fill may splice at once under a byte rate: the bucket as the last charge left it,
    /// nothing once it is overdrawn, and no figure for a direction without a byte rate.
    #[test]
    fn the_byte_allowance_is_what_the_bucket_holds() {
        let t0 = Instant::now();
        let bytes = Bucket { per_second: 0.001, burst: 1_000_000.0 };
        let rate = Rate { messages: None, bytes: Some(bytes), action: RateAction::Close };
        let msgs =
            Rate { messages: Some(Bucket { per_second: 1.0, burst: 5.0 }), bytes: None, action: RateAction::Close };
        let mut w = Watch::new(Arc::new(Guards { rates: [Some(rate), Some(msgs)], ..Guards::default() }), 0.0, 0, t0);
        assert_eq!((w.byte_allowance(0), w.byte_allowance(1)), (Some(1_000_000), None));
        assert_eq!(w.charge(0, &counts(1, 400_000), crate::relay::mono::nanos(t0), 1), Charge::Ok);
        assert_eq!(w.byte_allowance(0), Some(600_000));
        assert_eq!(w.charge(0, &counts(2, 1_100_000), crate::relay::mono::nanos(t0), 2), Charge::Close);
        assert_eq!(w.byte_allowance(0), Some(0), "overdrawn");
        let none = Watch::new(Arc::new(Guards::default()), 0.0, 0, t0);
        assert_eq!(none.byte_allowance(0), None);
    }

    #[test]
    fn each_wakeup_counts_from_zero() {
        // The relay hands the guards what the current wakeup counted, from zero at each
        // `begin_wakeup`: the second wakeup's 4 messages are charged whole, and its bytes are
        // heard, though its counts equal the first wakeup's.
        let t0 = Instant::now();
        let rate =
            Rate { messages: Some(Bucket { per_second: 0.001, burst: 6.0 }), bytes: None, action: RateAction::Close };
        let k = Keepalive { interval: Duration::from_millis(100), timeout: Duration::from_millis(100), backend: false };
        let guards = Guards { rates: [Some(rate), None], keepalive: Some(k), ..Guards::default() };
        let mut w = Watch::new(Arc::new(guards), 0.0, 0, t0);
        let none = DirectionCounts::default();
        w.observe(1, [&counts(4, 40), &none], [false, false]);
        assert_eq!(w.charge(0, &counts(4, 40), crate::relay::mono::nanos(t0), 1), Charge::Ok, "4 of the burst of 6");
        w.begin_wakeup();
        w.observe(5, [&counts(4, 40), &none], [false, false]);
        assert_eq!(w.next(), Some(15), "heard at tick 5: the next ping is an interval after it");
        assert_eq!(
            w.charge(0, &counts(4, 40), crate::relay::mono::nanos(t0), 5),
            Charge::Close,
            "4 more: 8, over the burst"
        );
    }

    #[test]
    fn the_close_action_trips_when_the_burst_is_spent_and_throttle_pauses_until_refilled() {
        // The epoch first (as at a process's start): an instant before it reads as 0, which
        // made this test fail when it ran before any other had touched the epoch.
        crate::relay::mono::now();
        let t0 = Instant::now();
        let rate = |action| Rate { messages: Some(Bucket { per_second: 10.0, burst: 5.0 }), bytes: None, action };
        let mut w = Watch::new(
            Arc::new(Guards { rates: [Some(rate(RateAction::Close)), None], ..Guards::default() }),
            0.0,
            0,
            t0,
        );
        assert_eq!(w.charge(0, &counts(5, 0), crate::relay::mono::nanos(t0), 0), Charge::Ok, "the burst");
        assert_eq!(
            w.charge(1, &counts(500, 0), crate::relay::mono::nanos(t0), 0),
            Charge::Ok,
            "the other direction is not limited"
        );
        assert_eq!(w.charge(0, &counts(6, 0), crate::relay::mono::nanos(t0), 0), Charge::Close);
        let mut w = Watch::new(
            Arc::new(Guards { rates: [Some(rate(RateAction::Throttle)), None], ..Guards::default() }),
            0.0,
            0,
            t0,
        );
        // 10 over the burst at 10/s: a second's pause (100 ticks).
        assert_eq!(w.charge(0, &counts(15, 0), crate::relay::mono::nanos(t0), 0), Charge::PauseUntil(100));
        assert_eq!(w.next(), Some(100));
        assert_eq!(w.resume(99), [false, false]);
        assert_eq!(w.resume(100), [true, false]);
        // A second later the bucket has refilled what was borrowed.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(w.charge(0, &counts(15, 0), crate::relay::mono::nanos(t1), 100), Charge::Ok);
    }

    #[test]
    fn weirs_pong_is_found_between_other_frames_and_only_whole() {
        let payload = *b"weir\0\0\0\x07";
        let key = [1, 2, 3, 4];
        let masked = |op: u8, body: &[u8]| {
            let mut f = vec![0x80 | op, 0x80 | body.len() as u8];
            f.extend_from_slice(&key);
            f.extend(body.iter().zip(key.iter().cycle()).map(|(b, k)| b ^ k));
            f
        };
        let text = masked(0x1, b"hello");
        let pong = masked(0xA, &payload);
        let other_pong = masked(0xA, b"weir\0\0\0\x08");
        let chunk = [text.clone(), other_pong.clone(), pong.clone(), text.clone()].concat();
        let at = text.len() + other_pong.len();
        assert_eq!(find_pong(Some(0), &chunk, &payload, true), Some((at, at + pong.len())));
        assert_eq!(find_pong(Some(0), &chunk, &payload, false), None, "a client's pong must be masked");
        // Mid-frame at the chunk's start: the rest of that frame is skipped first.
        assert_eq!(
            find_pong(Some(3), &chunk[text.len() - 3..], &payload, true),
            Some((other_pong.len() + 3, other_pong.len() + 3 + pong.len()))
        );
        // Cut short: not found (forwarded as is).
        assert_eq!(find_pong(Some(0), &pong[..pong.len() - 1], &payload, true), None);
        assert_eq!(find_pong(None, &pong, &payload, true), None);
    }

    /// A connection with guards holds one boxed `Watch` of this size (README "Idle cost").
    #[test]
    fn footprint_is_small() {
        let size = std::mem::size_of::<Watch>();
        assert!(size <= 352, "{size}");
    }

    #[test]
    fn lifetime_is_due_at_its_tick() {
        let g = Guards { lifetime: Some(Duration::from_millis(200)), ..Guards::default() };
        let w = Watch::new(Arc::new(g), 0.0, 7, Instant::now());
        assert_eq!((w.next(), w.due(26), w.due(27)), (Some(27), None, Some(Due::Lifetime)));
    }

    #[test]
    fn each_connection_takes_its_share_of_the_lifetime_jitter_off() {
        let g = Arc::new(Guards {
            lifetime: Some(Duration::from_millis(200)),
            lifetime_jitter: Duration::from_millis(100),
            ..Guards::default()
        });
        // One route's guards, three connections: no share, half, and a share out of range.
        let ends = [0.0, 0.5, 7.0].map(|share| Watch::new(g.clone(), share, 7, Instant::now()).next());
        assert_eq!(ends, [Some(27), Some(22), Some(17)]);
        assert_eq!(Arc::strong_count(&g), 1, "the watches are gone; the route's guards stay");
    }
}
