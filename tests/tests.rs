//! weir's integration tests: one binary; every test starts the real `weir` process on free
//! loopback ports, with real backends and real WebSocket clients.

// Harness: the weir process, backends, raw HTTP, metrics and usage-record readers.
mod support;

// The command line: --version, check, run with a bad config, usage.
mod cli;

// Installing and running as a service (issue 16): the Debian package from scripts/package.sh,
// its unit and config, WEIR_CONFIG, secrets from the environment, paths relative to the config.
mod package;

// The handshake: client checks, rejections, backend answers (400/426/404/502/503/504/403).
mod handshake;

// Admission before the 101: API keys, JWTs, origins, caps and rates.
mod admission;

// Live operations: the admin API (list, inspect, kick), drains, admin auth.
mod operations;

// Config reload (SIGHUP, POST /api/reload) with open connections.
mod reload;

// Zero-downtime binary upgrade: `weir run --upgrade` and SIGQUIT to the old process.
mod upgrade;

// Guards on open connections: idle, keepalive, close timeout, size and rate limits, lifetime.
mod guards;

// TLS termination on a public listener.
mod tls;

// Mutual TLS on a listener: client_auth required/optional, auth.client_cert, CA reload.
mod mtls;

// The demo page in headless Chromium, against the built-in echo backend.
mod demo_page;
// The admin status page in headless Chromium: login, totals, backends, kicking a connection.
mod status_page;

// The relay: messages, fragments, control frames, closes, headers, extensions, ends, backpressure.
mod relay;

// The usage record compared with ground truth, frame by frame.
mod metering;

// /metrics during and after a connection.
mod metrics;

// A real Prometheus scraping weir: every dashboard panel and alert expression evaluated, exact
// counts, `promtool check metrics` (issue 15).
mod prometheus;

// Object namespaces: placement, failover with 1012, id rules, the built-in room, object records.
mod objects;

// Room sequence numbers and `?since=N` resume; the shared PostgreSQL room history's fence.
mod rooms;

// Several instances sharing objects through a private etcd (issue 13): one owner per object,
// the peer hop, 1012 when the owner dies, 503 while etcd is down.
mod cluster;

// The billing pipeline: start/interim/stop, tenants, active time, kill -9, a flaky collector, a full disk.
mod billing;
// Billing against a private PostgreSQL: file and postgres sinks agree, a 30 s outage under load,
// `weir usage` from either sink.
mod billing_pg;

// Hardening (issue 9): each test failed before its fix.
// Headers and paths on the upgrade and http paths: Host, Connection, forged forwarding headers,
// dot segments, pipelining.
mod hardening_headers;
// The spool under corruption: a torn or damaged tail, checksums, quarantine, `weir usage`.
mod hardening_spool;
// Built-in rooms under members that never read, and many rooms on disk.
mod hardening_rooms;
// The built-in echo (backend and object): big messages, clients that never read, idle cost,
// accept errors.
mod hardening_echo;
// Descriptors, accept errors, rejection floods, built-in object violations, defaults.
mod hardening_limits;
// The admin listener through a SIGTERM drain: answers until exit, final counts, final scrape window.
mod drain;

// `server.threads: 1`: the single-threaded schedulers, through relaying, splicing, billing, drain.
mod single_thread;

// Transparency under protocol errors: data after a close, a close between fragments, a
// violation after a valid message (issue 10).
mod transparency;
