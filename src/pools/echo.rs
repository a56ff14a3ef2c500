//! The built-in echo backend (`builtin:echo` in a pool): a WebSocket server on loopback that
//! sends every text and binary message back and answers pings and closes (tokio-tungstenite),
//! with the one echo loop (`ws::echo`) the echo *object* runs too.
//!
//! It is a real backend behind the relay, so traffic to it is metered like any other. Messages
//! are limited to `echo.max_message` (1009 beyond it) and echoed one at a time with bounded
//! buffers (`ws::ws_config`), so a client that never reads stalls in TCP instead of growing
//! weir's memory. Warm path per connection; it runs on its own background service runtime.
//!
//! The accept loop backs off when `accept(2)` fails for want of descriptors (EMFILE, ENFILE) or
//! memory: 10 ms, doubling to 1 s, until an accept succeeds. Every failure is counted in
//! `weir_accept_errors_total{listener="echo"}`; the log gets at most one line a second, with the
//! failures since the last line.

use crate::metrics::Metrics;
use crate::ws::{close, echo, ws_config};
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::{background_service, BackgroundService, GenBackgroundService};
use prometheus::IntCounter;
use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The `listener` label of the echo backend's accept errors.
pub const LISTENER: &str = "echo";
/// First pause after a failed accept that calls for one.
pub const BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest pause between accepts while they keep failing.
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Shortest time between two log lines about failed accepts.
pub const LOG_EVERY: Duration = Duration::from_secs(1);
/// Time a connection gets to complete its upgrade before it is dropped (it holds a descriptor).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The echo server's accept loop.
pub struct Echo {
    listener: Mutex<Option<std::net::TcpListener>>,
    max_message: usize,
    fd_limit: IntCounter,
    other: IntCounter,
}

/// A background service serving `listener`: messages of at most `max_message` bytes, accept
/// errors counted in `metrics`.
pub fn service(listener: std::net::TcpListener, max_message: usize, metrics: &Metrics) -> GenBackgroundService<Echo> {
    let errors = |reason: &str| metrics.accept_errors.with_label_values(&[LISTENER, reason]);
    background_service(
        "builtin echo",
        Echo {
            listener: Mutex::new(Some(listener)),
            max_message,
            fd_limit: errors(Reason::FdLimit.as_str()),
            other: errors(Reason::Other.as_str()),
        },
    )
}

#[async_trait]
impl BackgroundService for Echo {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let taken = self.listener.lock().ok().and_then(|mut l| l.take());
        let Some(listener) = taken.and_then(|l| tokio::net::TcpListener::from_std(l).ok()) else {
            tracing::error!("built-in echo: no listener to serve");
            return;
        };
        let mut failures = AcceptFailures::default();
        loop {
            let pause = tokio::select! {
                _ = shutdown.changed() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        failures.accepted();
                        tokio::spawn(serve(stream, self.max_message));
                        continue;
                    }
                    Err(e) => {
                        let failed = failures.failed(&e, Instant::now());
                        match failed.reason {
                            Reason::FdLimit => self.fd_limit.inc(),
                            Reason::Other => self.other.inc(),
                        }
                        if let Some(count) = failed.log {
                            tracing::warn!(
                                error = %e,
                                reason = failed.reason.as_str(),
                                failures = count,
                                pause_ms = failed.pause.map_or(0, |p| p.as_millis() as u64),
                                "built-in echo: accept failed; backing off (failures: count since the last such line)"
                            );
                        }
                        failed.pause
                    }
                },
            };
            if let Some(pause) = pause {
                tokio::select! {
                    _ = shutdown.changed() => return,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

async fn serve(stream: tokio::net::TcpStream, max_message: usize) {
    let _ = stream.set_nodelay(true);
    let config = ws_config(max_message, max_message);
    let handshake = tokio_tungstenite::accept_async_with_config(stream, Some(config));
    let Ok(Ok(mut ws)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await else {
        return;
    };
    if let Some(c) = echo(&mut ws, || {}, std::future::pending()).await.close() {
        close(&mut ws, c).await;
    }
}

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
