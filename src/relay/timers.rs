//! `Timers`: the one deadline facility of the process. Every open connection's deadlines (idle,
//! lifetime, close handshake, keepalive, throttle) are kept by the connection itself as plain
//! ticks; what reaches this facility is at most one entry per connection, "wake this task at
//! tick T", where T is the earliest of them.
//!
//! Choice: one `Wheel<Waker>` for the process behind a mutex, driven by one thread
//! (`weir-timers`), rather than a wheel per worker thread. Entries are touched only when a
//! connection arms an earlier deadline or one fires, never per frame: activity only moves the
//! connection's own tick fields, and a fired entry whose deadline moved later is re-armed then
//! (lazy re-arming, as TCP keepalive timers do). The lock is taken per arm or fire, far below the
//! rate at which workers would contend, and one thread can wake tasks of every runtime. The
//! driver sleeps until the wheel's next due tick (`Wheel::next_due`), so an idle process with
//! idle connections wakes only when some deadline is due.
//!
//! The driver is signalled only for an entry due before the tick it plans to wake at
//! (`Timers::planned`), not for every entry that is the wheel's earliest: entries come and go
//! (a handshake's deadline is removed milliseconds after it was set), and the driver, woken at
//! its planned tick with nothing due, plans again. So a stream of short connections whose
//! deadlines lie beyond the planned tick costs the driver no wakeup and the arming task no
//! system call.
//!
//! `Deadline` bounds a task's successive waits with one `Alarm` (a connection's handshake: its
//! request head, the backend's connect, the backend's answer), where tokio's `timeout` would
//! register and remove an entry in the runtime's own timer per wait, and signal the runtime's
//! driver (a `write(2)` to its eventfd) whenever that entry is its earliest (issue 14: half a
//! write per handshake cycle).
//!
//! Warm path: `arm`/`disarm`, at most once per connection wakeup that moved a deadline earlier;
//! `Deadline::within`, once per handshake step. Cold path: the driver thread starts on first use.
//!
//! Resolution: one tick is `TICK` (10 ms); a deadline fires within one tick after it is due.

use super::mono;
use super::wheel::{Key, Wheel};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Length of one tick.
pub const TICK: Duration = Duration::from_millis(10);

/// `TICK` in nanoseconds.
const TICK_NANOS: u32 = TICK.subsec_nanos();

/// Ticks in a second: `TICK` divides a second (checked below), so a duration's whole seconds are
/// whole ticks.
const TICKS_PER_SECOND: u64 = 1_000_000_000 / TICK_NANOS as u64;

const _: () = assert!(TICK.as_secs() == 0 && 1_000_000_000 % TICK_NANOS == 0, "TICK must divide a second");

/// The process's deadline facility (see the module doc). Get it with `Timers::global`.
pub struct Timers {
    wheel: Mutex<Wheel<Waker>>,
    /// Signalled when an entry due earlier than the driver's planned wakeup is armed.
    wake: Condvar,
    /// The tick the driver waits for (`u64::MAX`: none, it waits to be signalled; 0 while it
    /// runs). Written and read under `wheel`'s lock only: the atomic just makes it shareable.
    planned: AtomicU64,
}

/// A connection's one entry in the facility: armed for a tick, disarmed on drop.
#[derive(Debug)]
pub struct Alarm {
    /// The tick it is armed for; `UNARMED` when it is not (a plain tick: 16 bytes with the key,
    /// where an `Option<(u64, Key)>` takes 24).
    at: u64,
    /// Its wheel entry, while armed.
    key: Key,
}

/// `Alarm::at` of an alarm that is not armed (a tick no clock reaches).
const UNARMED: u64 = u64::MAX;

impl Default for Alarm {
    fn default() -> Self {
        Alarm { at: UNARMED, key: Key::default() }
    }
}

impl Alarm {
    /// The tick this alarm is armed for.
    pub fn at(&self) -> Option<u64> {
        (self.at != UNARMED).then_some(self.at)
    }

    /// Its wheel entry, taken: the alarm is no longer armed.
    fn take(&mut self) -> Option<Key> {
        let armed = self.at().map(|_| self.key);
        self.at = UNARMED;
        armed
    }

    /// Make sure `waker` is woken at tick `at` or earlier: arms if nothing is armed or the armed
    /// tick is later (an earlier armed tick is kept: when it fires, the owner re-arms).
    pub fn arm(&mut self, at: u64, waker: &Waker) {
        if self.at().is_some_and(|armed| armed <= at) {
            return;
        }
        let timers = Timers::global();
        let mut wheel = timers.lock();
        if let Some(key) = self.take() {
            wheel.remove(key);
        }
        self.key = wheel.insert(at, waker.clone());
        // A tick past the clock's reach is armed as the last one it reaches.
        self.at = at.max(wheel.now() + 1).min(UNARMED - 1);
        let sooner = self.at < timers.planned.load(Ordering::Relaxed);
        if sooner {
            // Signalled: it plans again with every entry, so the arms until then need not signal.
            timers.planned.store(0, Ordering::Relaxed);
        }
        drop(wheel);
        if sooner {
            timers.wake.notify_one();
        }
    }

    /// Forget the armed tick once it has passed (the entry fired); the next `arm` inserts anew.
    pub fn fired(&mut self, now: u64) {
        if self.at().is_some_and(|at| at <= now) {
            self.at = UNARMED;
        }
    }

    /// Cancel the armed entry, if any.
    pub fn disarm(&mut self) {
        if let Some(key) = self.take() {
            Timers::global().lock().remove(key);
        }
    }
}

impl Drop for Alarm {
    fn drop(&mut self) {
        self.disarm();
    }
}

/// A task's deadline for successive waits, on the process's timers (see the module doc): each
/// `within` bounds one wait by its own timeout, and all of them share one wheel entry. Resolution
/// one `TICK`: a wait times out within a tick after its timeout, never before it.
#[derive(Debug, Default)]
pub struct Deadline {
    alarm: Alarm,
}

impl Deadline {
    /// `fut` until it completes (`Some` of its output) or `timeout` from now has passed (`None`;
    /// `fut` is dropped).
    pub fn within<F: Future>(&mut self, timeout: Duration, fut: F) -> Within<'_, F> {
        let (start, due) = Self::due_in(timeout);
        self.until(start, due, fut)
    }

    /// Now and the moment `timeout` from now, as `until` takes them (nanoseconds after the
    /// epoch, `mono`): for several waits that share one timeout.
    pub fn due_in(timeout: Duration) -> (u64, u64) {
        let start = mono::now();
        (start, start.saturating_add(mono::nanos_in(timeout)))
    }

    /// `within`, for a deadline `due` nanoseconds after the epoch (`mono`), `start` being now.
    pub fn until<F: Future>(&mut self, start: u64, due: u64, fut: F) -> Within<'_, F> {
        Within { alarm: &mut self.alarm, start, due, fut }
    }

    /// Now, as `until` counts (nanoseconds after the epoch, `mono`).
    pub fn now() -> u64 {
        mono::now()
    }
}

pin_project_lite::pin_project! {
    /// A wait bounded by a `Deadline` (`Deadline::within`). A plain struct, not an `async fn`:
    /// an `async fn` wrapping the wait kept room for it twice (the argument and the pinned
    /// copy), which took a plain connection's handshake future from 1 464 to 1 560 bytes and an
    /// upgrade's from 2 848 to 3 096 (test profile); with this struct they are 1 440 and 2 832
    /// (`gateway::listen` and `gateway::upgrade`'s size tests).
    #[must_use = "futures do nothing unless polled"]
    pub struct Within<'a, F> {
        alarm: &'a mut Alarm,
        // Now, for the first poll; 0 after it (one clock read per wait that completes at once).
        start: u64,
        due: u64,
        #[pin]
        fut: F,
    }
}

impl<F: Future> Future for Within<'_, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.fut.poll(cx) {
            return Poll::Ready(Some(out));
        }
        let now = match std::mem::take(this.start) {
            0 => mono::now(),
            start => start,
        };
        if now >= *this.due {
            return Poll::Ready(None);
        }
        // An entry an earlier wait armed may have fired since: forget it, or `arm` keeps it.
        this.alarm.fired(Timers::ticks_of(now));
        // The first tick that starts at or after `due`: never early.
        this.alarm.arm(this.due.div_ceil(mono::nanos_in(TICK)), cx.waker());
        Poll::Pending
    }
}

impl Timers {
    /// The process's facility; its driver thread starts on first use.
    pub fn global() -> &'static Timers {
        static GLOBAL: OnceLock<&'static Timers> = OnceLock::new();
        GLOBAL.get_or_init(|| {
            // Ticks count from the process's epoch: fixed no later than now.
            mono::now();
            let timers: &'static Timers = Box::leak(Box::new(Timers {
                wheel: Mutex::default(),
                wake: Condvar::new(),
                planned: AtomicU64::new(0),
            }));
            let spawned = std::thread::Builder::new().name("weir-timers".into()).spawn(move || timers.drive());
            if let Err(e) = spawned {
                // Without the driver no guard deadline fires; connections still end normally.
                tracing::error!(error = %e, "cannot start the timer thread; connection guards will not fire");
            }
            timers
        })
    }

    /// The current tick (rounded down).
    pub fn now(&self) -> u64 {
        self.ticks(Instant::now())
    }

    /// The tick of `t` (rounded down; ticks count from the process's epoch, `mono`).
    pub fn ticks(&self, t: Instant) -> u64 {
        mono::ticks(t, TICK)
    }

    /// The tick of the instant `n` nanoseconds after the epoch (`mono::nanos`).
    pub fn ticks_of(n: u64) -> u64 {
        mono::ticks_of(n, TICK)
    }

    /// Ticks in `d`, rounded up (a deadline is never early; saturated at `u64::MAX`). In whole
    /// seconds and the rest, not in `u128` nanoseconds: a guard's deadlines are computed on
    /// every wakeup of its connection, and a `u128` division is a library call (about 75
    /// instructions; issue 14's handshake profile had 3 a cycle).
    pub fn ticks_in(d: Duration) -> u64 {
        d.as_secs().saturating_mul(TICKS_PER_SECOND).saturating_add(u64::from(d.subsec_nanos().div_ceil(TICK_NANOS)))
    }

    /// Entries waiting (for tests and metrics).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no entry waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, Wheel<Waker>> {
        self.wheel.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The driver: sleep until the next due tick, hand out what is due, wake it outside the lock.
    fn drive(&self) {
        let mut due = Vec::new();
        let mut wheel = self.lock();
        loop {
            let now = self.now();
            wheel.advance(now, &mut due);
            if !due.is_empty() {
                drop(wheel);
                for waker in due.drain(..) {
                    waker.wake();
                }
                wheel = self.lock();
                continue;
            }
            let next = wheel.next_due();
            self.planned.store(next.unwrap_or(u64::MAX), Ordering::Relaxed);
            wheel = match next {
                None => self.wake.wait(wheel).unwrap_or_else(|p| p.into_inner()),
                Some(at) => {
                    let at = mono::tick_start(at, TICK);
                    let wait = at.saturating_duration_since(Instant::now());
                    self.wake.wait_timeout(wheel, wait).map(|(g, _)| g).unwrap_or_else(|p| p.into_inner().0)
                }
            };
            // Running: whatever is armed now is seen when it plans again.
            self.planned.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::task::Poll;

    /// A task that arms an alarm a few ticks ahead is woken by the driver thread (real time), and
    /// a disarmed alarm leaves nothing behind.
    #[tokio::test]
    async fn an_armed_alarm_wakes_its_task_and_a_dropped_one_is_removed() {
        let timers = Timers::global();
        let start = Instant::now();
        let target = timers.now() + 3;
        let mut alarm = Alarm::default();
        poll_fn(|cx| {
            if timers.now() >= target {
                return Poll::Ready(());
            }
            alarm.fired(timers.now());
            alarm.arm(target, cx.waker());
            Poll::Pending
        })
        .await;
        assert!(start.elapsed() >= TICK * 2, "not before its tick");
        let mut other = Alarm::default();
        let waker = futures_util::task::noop_waker();
        other.arm(timers.now() + 1000, &waker);
        assert_eq!(other.at().map(|a| a > timers.now()), Some(true));
        drop(other);
        drop(alarm);
    }
    proptest::proptest! {
        /// Whole seconds and the rest, against the tick count of the duration's nanoseconds
        /// (rounded up, saturated), for any duration.
        #[test]
        fn ticks_in_rounds_up_as_the_nanoseconds_do(secs in proptest::prelude::any::<u64>(), nanos in 0u32..1_000_000_000) {
            let d = Duration::new(secs, nanos);
            let want = d.as_nanos().div_ceil(TICK.as_nanos()).min(u128::from(u64::MAX));
            proptest::prop_assert_eq!(u128::from(Timers::ticks_in(d)), want);
            let small = Duration::new(secs % 100_000, nanos);
            let want = small.as_nanos().div_ceil(TICK.as_nanos());
            proptest::prop_assert_eq!(u128::from(Timers::ticks_in(small)), want);
        }
    }

    /// A future that is pending once (and wakes itself), then ready: a wait that arms the
    /// deadline's alarm and completes.
    async fn pending_once() {
        let mut first = true;
        poll_fn(|cx| {
            if std::mem::take(&mut first) {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(())
        })
        .await
    }

    /// A wait that never completes times out after `timeout`: not before, and well before 10 s
    /// (the outer timeout only bounds a broken deadline: it polls the wait once more at 10 s,
    /// and then it times out; the bound on the time taken catches that).
    async fn times_out_after(deadline: &mut Deadline, timeout: Duration) {
        let hang = Duration::from_secs(10);
        let start = Instant::now();
        let waited = tokio::time::timeout(hang, deadline.within(timeout, std::future::pending::<()>()));
        assert_eq!(waited.await.expect("the wait never timed out"), None);
        let took = start.elapsed();
        assert!(took >= timeout && took < hang / 2, "timed out after {took:?}, not {timeout:?}");
    }

    /// A deadline's successive waits: each times out after its own timeout, never before, whether
    /// the entry an earlier wait armed is earlier (it fires, is forgotten, and the later tick is
    /// armed) or later (the earlier tick replaces it); a wait that completes returns its output.
    #[tokio::test]
    async fn a_deadline_bounds_each_wait_by_its_own_timeout() {
        let mut deadline = Deadline::default();
        assert_eq!(deadline.within(Duration::from_millis(40), async { 7 }).await, Some(7));
        // Armed for ~40 ms from here, then a longer wait: the early entry fires first.
        assert_eq!(deadline.within(Duration::from_millis(40), pending_once()).await, Some(()));
        times_out_after(&mut deadline, Duration::from_millis(150)).await;
        // Armed for a minute, then a short wait: its earlier tick replaces the armed one.
        assert_eq!(deadline.within(Duration::from_secs(60), pending_once()).await, Some(()));
        times_out_after(&mut deadline, Duration::from_millis(50)).await;
        // A zero timeout still lets a ready future through, and times out a pending one at once.
        assert_eq!(deadline.within(Duration::ZERO, async { 1 }).await, Some(1));
        assert_eq!(deadline.within(Duration::ZERO, std::future::pending::<()>()).await, None);
    }
}
