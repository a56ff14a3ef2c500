//! `limits:`: validation of the connection guards at each level (top level, object namespace,
//! route) into a `Patch`, and their resolution per route (the most specific setting of each key
//! wins, then the defaults below).
//!
//! Cold path (startup and `weir check`). Every bad value is reported with its key path, like the
//! rest of the file.

use super::file::{FileLimits, FileRate};
use super::model::{KeepaliveLimits, Limits, RateLimit};
use super::validate::Validator;
use std::time::Duration;

/// Default `limits.idle_timeout`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Default `limits.max_lifetime`.
pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Default `limits.close_timeout`.
pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `limits.keepalive.interval`.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// Default `limits.keepalive.timeout`.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Default `limits.max_frame`, bytes.
pub const DEFAULT_MAX_FRAME: u64 = 16 << 20;
/// Default `limits.max_message`, bytes.
pub const DEFAULT_MAX_MESSAGE: u64 = 64 << 20;

/// The `limits:` keys set at one level, validated; `Some(None)` is a guard turned off.
#[derive(Debug, Default, Clone, Copy)]
pub struct Patch {
    idle_timeout: Option<Option<Duration>>,
    control: Option<bool>,
    max_lifetime: Option<Option<Duration>>,
    jitter: Option<Duration>,
    restart: Option<bool>,
    close_timeout: Option<Option<Duration>>,
    keepalive_interval: Option<Option<Duration>>,
    keepalive_timeout: Option<Duration>,
    keepalive_backend: Option<bool>,
    max_frame: Option<u64>,
    max_message: Option<u64>,
    message_rate: Option<Option<RateLimit>>,
    bandwidth: Option<Option<RateLimit>>,
}

impl Patch {
    /// This level's settings, falling back to `base`'s for keys it does not set.
    pub fn over(self, base: Patch) -> Patch {
        Patch {
            idle_timeout: self.idle_timeout.or(base.idle_timeout),
            control: self.control.or(base.control),
            max_lifetime: self.max_lifetime.or(base.max_lifetime),
            jitter: self.jitter.or(base.jitter),
            restart: self.restart.or(base.restart),
            close_timeout: self.close_timeout.or(base.close_timeout),
            keepalive_interval: self.keepalive_interval.or(base.keepalive_interval),
            keepalive_timeout: self.keepalive_timeout.or(base.keepalive_timeout),
            keepalive_backend: self.keepalive_backend.or(base.keepalive_backend),
            max_frame: self.max_frame.or(base.max_frame),
            max_message: self.max_message.or(base.max_message),
            message_rate: self.message_rate.or(base.message_rate),
            bandwidth: self.bandwidth.or(base.bandwidth),
        }
    }

    /// The guards, with the defaults for every key no level set.
    pub fn resolve(self) -> Limits {
        let max_lifetime = self.max_lifetime.unwrap_or(Some(DEFAULT_MAX_LIFETIME));
        let lifetime = max_lifetime.unwrap_or_default();
        // At most half the lifetime: a connection always lives at least half of it.
        let jitter = self.jitter.unwrap_or(lifetime / 10).min(lifetime / 2);
        let interval = self.keepalive_interval.unwrap_or(Some(DEFAULT_KEEPALIVE_INTERVAL));
        Limits {
            idle_timeout: self.idle_timeout.unwrap_or(Some(DEFAULT_IDLE_TIMEOUT)),
            control_frames_are_activity: self.control.unwrap_or(false),
            max_lifetime,
            lifetime_jitter: jitter,
            lifetime_restart: self.restart.unwrap_or(false),
            close_timeout: self.close_timeout.unwrap_or(Some(DEFAULT_CLOSE_TIMEOUT)),
            keepalive: interval.map(|interval| KeepaliveLimits {
                interval,
                timeout: self.keepalive_timeout.unwrap_or(DEFAULT_KEEPALIVE_TIMEOUT),
                backend: self.keepalive_backend.unwrap_or(false),
            }),
            max_frame: self.max_frame.unwrap_or(DEFAULT_MAX_FRAME),
            max_message: self.max_message.unwrap_or(DEFAULT_MAX_MESSAGE),
            message_rate: self.message_rate.flatten(),
            bandwidth: self.bandwidth.flatten(),
        }
    }
}

impl Default for Limits {
    /// Every guard at its default.
    fn default() -> Limits {
        Patch::default().resolve()
    }
}

impl Validator {
    /// Validate one level's `limits:` (at key path `at`); `None` sets nothing.
    pub(super) fn limits(&mut self, at: &str, l: Option<&FileLimits>) -> Patch {
        let Some(l) = l else { return Patch::default() };
        let lifetime_close = match l.lifetime_close.as_deref() {
            None => None,
            Some("going_away") => Some(false),
            Some("restart") => Some(true),
            Some(other) => {
                self.err(format!("{at}.lifetime_close"), other, "must be `going_away` (1001) or `restart` (1012)");
                None
            }
        };
        let k = l.keepalive.as_ref();
        let keepalive_timeout =
            self.off_duration(&format!("{at}.keepalive.timeout"), k.and_then(|k| k.timeout.as_deref()));
        if keepalive_timeout == Some(None) {
            self.err(
                format!("{at}.keepalive.timeout"),
                "0s",
                "must be greater than zero (turn pings off with `interval: 0s`); the default is 20s",
            );
        }
        let patch = Patch {
            idle_timeout: self.off_duration(&format!("{at}.idle_timeout"), l.idle_timeout.as_deref()),
            control: l.control_frames_are_activity,
            max_lifetime: self.off_duration(&format!("{at}.max_lifetime"), l.max_lifetime.as_deref()),
            jitter: self
                .off_duration(&format!("{at}.lifetime_jitter"), l.lifetime_jitter.as_deref())
                .map(Option::unwrap_or_default),
            restart: lifetime_close,
            close_timeout: self.off_duration(&format!("{at}.close_timeout"), l.close_timeout.as_deref()),
            keepalive_interval: self
                .off_duration(&format!("{at}.keepalive.interval"), k.and_then(|k| k.interval.as_deref())),
            keepalive_timeout: keepalive_timeout.flatten(),
            keepalive_backend: k.and_then(|k| k.backend),
            max_frame: l.max_frame,
            max_message: l.max_message,
            message_rate: l.message_rate.as_ref().map(|r| self.rate(&format!("{at}.message_rate"), r, "messages")),
            bandwidth: l.bandwidth.as_ref().map(|r| self.rate(&format!("{at}.bandwidth"), r, "bytes")),
        };
        if let (Some(Some(life)), Some(jitter)) = (patch.max_lifetime, patch.jitter) {
            if jitter > life / 2 {
                self.err(
                    format!("{at}.lifetime_jitter"),
                    humantime::format_duration(jitter),
                    format!(
                        "must be at most half of max_lifetime ({}); the default is a tenth of it",
                        humantime::format_duration(life)
                    ),
                );
            }
        }
        patch
    }

    /// A duration where `0s` turns the guard off: `Some(None)`; `None` when absent or invalid
    /// (reported).
    fn off_duration(&mut self, key: &str, value: Option<&str>) -> Option<Option<Duration>> {
        let s = value?;
        match humantime::parse_duration(s.trim()) {
            Ok(d) if d.is_zero() => Some(None),
            Ok(d) => Some(Some(d)),
            Err(_) if s.trim() == "0" => Some(None),
            Err(_) => {
                self.err(key, s, "is not a duration; write a number with a unit, e.g. \"30s\" or \"1h\" (\"0s\" turns this guard off)");
                None
            }
        }
    }

    /// One rate limit (`unit`: what `per_second` counts); `None` when off (`per_second: 0`).
    fn rate(&mut self, at: &str, r: &FileRate, unit: &str) -> Option<RateLimit> {
        let throttle = match r.action.as_deref() {
            None | Some("close") => false,
            Some("throttle") => true,
            Some(other) => {
                self.err(
                    format!("{at}.action"),
                    other,
                    "must be `close` (1008 \"rate limit\") or `throttle` (stop reading the sender)",
                );
                false
            }
        };
        let from = match r.from.as_deref() {
            None | Some("client") => [true, false],
            Some("backend") => [false, true],
            Some("both") => [true, true],
            Some(other) => {
                self.err(format!("{at}.from"), other, "must be `client`, `backend` or `both`");
                [true, false]
            }
        };
        let per_second = match r.per_second {
            None => {
                self.err(
                    format!("{at}.per_second"),
                    "",
                    format!("is required: {unit} per second (0 turns the limit off)"),
                );
                return None;
            }
            Some(0) => return None,
            Some(n) => n,
        };
        let burst = r.burst.unwrap_or(per_second);
        if burst == 0 {
            self.err(format!("{at}.burst"), 0, format!("must be at least 1 ({unit}); the default is per_second"));
        }
        Some(RateLimit { per_second, burst: burst.max(1), throttle, from })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, Target};

    fn config(extra: &str) -> Result<crate::config::Config, crate::config::ConfigErrors> {
        parse(
            &format!(
                "listeners: [{{address: \"127.0.0.1:0\"}}]\n\
                 pools: [{{name: p, backends: [\"127.0.0.1:1\"]}}]\n\
                 objects: [{{name: rooms, id: {{path: \"/rooms/{{id}}\"}}, builtin: echo, limits: {{idle_timeout: 5m, max_frame: 100}}}}]\n\
                 {extra}"
            ),
            "test",
        )
    }

    #[test]
    fn defaults_then_global_then_namespace_then_route_key_by_key() {
        let c = config(
            "limits: {idle_timeout: 10m, close_timeout: 0s, keepalive: {interval: 5s}, message_rate: {per_second: 10}}\n\
             routes: [{path_prefix: /a, pool: p}, {path_prefix: /rooms, object: rooms, limits: {max_frame: 0, max_lifetime: 1h}}]",
        )
        .unwrap();
        let a = &c.routes[0].limits;
        assert_eq!(a.idle_timeout, Some(Duration::from_secs(600)));
        assert_eq!(a.close_timeout, None, "0s turns it off");
        assert_eq!(
            a.keepalive.map(|k| (k.interval, k.timeout)),
            Some((Duration::from_secs(5), DEFAULT_KEEPALIVE_TIMEOUT))
        );
        assert_eq!(a.max_lifetime, Some(DEFAULT_MAX_LIFETIME));
        assert_eq!(a.lifetime_jitter, DEFAULT_MAX_LIFETIME / 10);
        assert_eq!(a.message_rate, Some(RateLimit { per_second: 10, burst: 10, throttle: false, from: [true, false] }));
        assert_eq!((a.max_frame, a.max_message), (DEFAULT_MAX_FRAME, DEFAULT_MAX_MESSAGE));
        let r = &c.routes[1].limits;
        assert!(matches!(c.routes[1].target, Target::Object(0)));
        assert_eq!(r.idle_timeout, Some(Duration::from_secs(300)), "the namespace's");
        assert_eq!(r.max_frame, 0, "the route's own");
        assert_eq!((r.max_lifetime, r.lifetime_jitter), (Some(Duration::from_secs(3600)), Duration::from_secs(360)));
        assert_eq!(r.message_rate, a.message_rate, "the global one");
    }

    #[test]
    fn every_bad_value_is_reported_with_its_path() {
        let e = config(
            "limits: {idle_timeout: soon, lifetime_close: later, keepalive: {timeout: 0s}, message_rate: {burst: 3}, \
             bandwidth: {per_second: 5, action: drop, from: nobody}, max_lifetime: 10m, lifetime_jitter: 6m}\n\
             routes: [{path_prefix: /a, pool: p, limits: {close_timeout: 3 parsecs}}]",
        )
        .unwrap_err()
        .to_string();
        for key in [
            "limits.idle_timeout",
            "limits.lifetime_close",
            "limits.keepalive.timeout",
            "limits.message_rate.per_second",
            "limits.bandwidth.action",
            "limits.bandwidth.from",
            "limits.lifetime_jitter",
            "routes[0].limits.close_timeout",
        ] {
            assert!(e.contains(key), "{key} missing in:\n{e}");
        }
    }
}
