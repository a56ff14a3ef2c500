//! Accept loops weir runs itself (the gateway's plain-TCP listeners, the built-in echo backend,
//! the admin listener, the cluster's peer listener): what a failed `accept(2)` means and what the
//! loop does about it (`AcceptErrors::next`, the one accept-with-backoff they all use). Running
//! out of descriptors (EMFILE/ENFILE) or memory does not go away by retrying at once: the loop
//! pauses, 10 ms doubling to 1 s, as tokio and hyper servers do; it logs at most one line a
//! second with a count, and counts every failure in `weir_accept_errors_total{listener,reason}`.
//! A leaf: state, the counters and the accept itself.
//!
//! Warm path (once per accept). Pingora's own listeners (the gateway's TLS ones) have their own
//! loop: see the README, "Security".

use prometheus::{IntCounter, IntCounterVec};
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

/// First pause after a failed accept that calls for one.
pub const BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest pause between accepts while they keep failing.
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Shortest time between two log lines about failed accepts.
pub const LOG_EVERY: Duration = Duration::from_secs(1);
/// Why an accept failed, as counted (`reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Out of descriptors: EMFILE (the process's limit) or ENFILE (the system's).
    FdLimit,
    /// Anything else (ENOBUFS, ENOMEM, a connection aborted before it was accepted, ...).
    Other,
}

impl Reason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::FdLimit => "fd_limit",
            Reason::Other => "other",
        }
    }
}

/// What to do about one failed accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failed {
    /// How it is counted.
    pub reason: Reason,
    /// Pause before the next accept (`None`: retry at once, the listener is fine).
    pub pause: Option<Duration>,
    /// `Some(n)`: log it now, with the `n` failures since the last line (this one included).
    pub log: Option<u64>,
}

/// The accept loop's error state: the current backoff and the failures not yet logged.
#[derive(Debug, Default)]
pub struct AcceptFailures {
    backoff: Option<Duration>,
    unlogged: u64,
    last_log: Option<Instant>,
}

/// What a listener's failed accepts are counted and logged as.
pub struct AcceptErrors {
    /// The `listener` label.
    listener: &'static str,
    /// What the log line calls the listener (e.g. `built-in echo`).
    name: &'static str,
    fd_limit: IntCounter,
    other: IntCounter,
    failures: AcceptFailures,
}

impl AcceptErrors {
    /// The failures of `listener`, counted in `weir_accept_errors_total{listener}` and logged as
    /// `<name>: accept failed`.
    pub fn new(listener: &'static str, name: &'static str, accept_errors: &IntCounterVec) -> AcceptErrors {
        let counter = |r: Reason| accept_errors.with_label_values(&[listener, r.as_str()]);
        AcceptErrors {
            listener,
            name,
            fd_limit: counter(Reason::FdLimit),
            other: counter(Reason::Other),
            failures: AcceptFailures::default(),
        }
    }

    /// An accept succeeded.
    pub fn accepted(&mut self) {
        self.failures.accepted();
    }

    /// The next connection on `listener`. A failed accept is counted, logged and followed by its
    /// pause (`failed`) before the next try. Cancel-safe: dropped during an accept or a pause,
    /// it loses no connection (a caller selects it against its shutdown signal).
    pub async fn next(&mut self, listener: &TcpListener) -> (TcpStream, SocketAddr) {
        loop {
            match listener.accept().await {
                Ok(accepted) => {
                    self.accepted();
                    return accepted;
                }
                Err(e) => {
                    if let Some(pause) = self.failed(&e) {
                        tokio::time::sleep(pause).await;
                    }
                }
            }
        }
    }

    /// An accept failed with `error`: count it, log it (at most once a second, with a count),
    /// and return the pause before the next accept.
    pub fn failed(&mut self, error: &io::Error) -> Option<Duration> {
        let failed = self.failures.failed(error, Instant::now());
        match failed.reason {
            Reason::FdLimit => self.fd_limit.inc(),
            Reason::Other => self.other.inc(),
        }
        if let Some(count) = failed.log {
            tracing::warn!(
                listener = self.listener,
                error = %error,
                reason = failed.reason.as_str(),
                failures = count,
                pause_ms = failed.pause.map_or(0, |p| p.as_millis() as u64),
                "{}: accept failed; backing off (failures: count since the last such line)",
                self.name
            );
        }
        failed.pause
    }
}

impl AcceptFailures {
    /// An accept succeeded: the next failure starts the backoff from `BACKOFF_MIN` again.
    pub fn accepted(&mut self) {
        self.backoff = None;
    }

    /// An accept failed with `error` at `now`.
    ///
    /// A connection that went away before it was accepted (ECONNABORTED and the like) says
    /// nothing about the listener: retry at once. Running out of descriptors or memory does not
    /// go away by retrying: pause, doubling the pause from `BACKOFF_MIN` to `BACKOFF_MAX`, as
    /// tokio and hyper servers do.
    pub fn failed(&mut self, error: &io::Error, now: Instant) -> Failed {
        let reason = match error.raw_os_error() {
            Some(libc::EMFILE | libc::ENFILE) => Reason::FdLimit,
            _ => Reason::Other,
        };
        let transient = matches!(
            error.kind(),
            io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::Interrupted
        );
        let pause = if transient {
            None
        } else {
            let next = self.backoff.map_or(BACKOFF_MIN, |b| (b * 2).min(BACKOFF_MAX));
            self.backoff = Some(next);
            Some(next)
        };
        self.unlogged += 1;
        let due = self.last_log.is_none_or(|at| now.saturating_duration_since(at) >= LOG_EVERY);
        let log = due.then(|| {
            self.last_log = Some(now);
            std::mem::take(&mut self.unlogged)
        });
        Failed { reason, pause, log }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emfile() -> io::Error {
        io::Error::from_raw_os_error(libc::EMFILE)
    }

    #[test]
    fn descriptor_exhaustion_backs_off_doubling_to_a_second_and_resets_on_success() {
        let mut f = AcceptFailures::default();
        let now = Instant::now();
        let pauses: Vec<u64> = (0..10).map(|_| f.failed(&emfile(), now).pause.unwrap().as_millis() as u64).collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
        f.accepted();
        assert_eq!(f.failed(&emfile(), now).pause, Some(BACKOFF_MIN));
        let enfile = f.failed(&io::Error::from_raw_os_error(libc::ENFILE), now);
        assert_eq!((enfile.reason, enfile.pause), (Reason::FdLimit, Some(BACKOFF_MIN * 2)));
    }

    #[test]
    fn other_errors_are_counted_as_other_and_aborted_connections_retry_at_once() {
        let mut f = AcceptFailures::default();
        let now = Instant::now();
        let nobufs = f.failed(&io::Error::from_raw_os_error(libc::ENOBUFS), now);
        assert_eq!((nobufs.reason, nobufs.pause), (Reason::Other, Some(BACKOFF_MIN)));
        let aborted = f.failed(&io::Error::from_raw_os_error(libc::ECONNABORTED), now);
        assert_eq!((aborted.reason, aborted.pause), (Reason::Other, None));
    }

    #[test]
    fn the_log_gets_one_line_a_second_with_the_failures_since_the_last() {
        let mut f = AcceptFailures::default();
        let t0 = Instant::now();
        assert_eq!(f.failed(&emfile(), t0).log, Some(1), "the first failure is logged at once");
        let ms = |n| t0 + Duration::from_millis(n);
        let logged: Vec<Option<u64>> = (1..=2500).map(|i| f.failed(&emfile(), ms(i)).log).collect();
        let lines: Vec<(usize, u64)> = logged.iter().enumerate().filter_map(|(i, l)| l.map(|n| (i + 1, n))).collect();
        assert_eq!(lines, [(1000, 1000), (2000, 1000)], "one line a second, each with its count");
    }
}
