//! `weir-bench`: a loopback benchmark that compares weir with a direct connection and
//! with the cheapest possible relay, in one run, and prints one Markdown table.
//!
//! # Running
//!
//! ```text
//! cargo build --release            # builds both `weir` and `weir-bench`
//! cargo run --release --bin weir-bench -- [--quick]
//!     [--only direct,weir,floor,nginx,haproxy]
//!     [--scenarios small,bulk,huge,handshake,latency,idle,keepalive,idle-echo,idle-room,idle-builtin]
//!     [--weir-bin PATH]
//!     [--baseline-bin PATH] [--runs N]
//!     [--nginx-bin PATH] [--haproxy-bin PATH]
//! ```
//!
//! The table goes to stdout, progress to stderr. `--quick` is a smoke test (at most 1 s per
//! throughput scenario, 1 000 idle relayed connections, a 3 s keepalive window, 500 idle
//! connections to each built-in); without it a full run takes a few minutes. `--runs N` repeats
//! every scenario N times (its targets in turn within each repetition, in reverse order in every
//! second one): each cell is the best of
//! the N, and a second table gives, per row and peer (the `--baseline-bin` weir, floor, NGINX,
//! HAProxy: whichever ran), the median and range of the N `weir / peer` ratios, each taken
//! within one repetition (on a noisy shared host the paired ratio moves far less than either
//! figure).
//! The exit status is 0 whenever the benchmark ran, whether or not weir meets its targets
//! (this is a report, not a test); it is non-zero only if something failed.
//!
//! # Targets
//!
//! Every target is measured with the same client load against the same echo server:
//!
//! * `direct`: client → echo server.
//! * `weir`:   client → weir (1 worker thread, metering on) → echo server.
//! * `floor`:  client → plain TCP relay (`tokio::io::copy_bidirectional_with_sizes`, 64 KiB
//!   buffers each way, per connection;
//!   nothing else, 1 worker thread) → echo server. This is the floor weir is compared with.
//! * `nginx` (only with `--only …,nginx`; needs `nginx`, e.g. `apt-get install nginx-light`, and
//!   then `systemctl disable --now nginx`: the bench never uses a system nginx): client → NGINX
//!   as a WebSocket proxy (`proxy_http_version 1.1`, `Upgrade`/`Connection` headers passed,
//!   `proxy_buffer_size 64k`, `proxy_buffers 4 64k`, `access_log off`) → echo server. One process
//!   (`master_process off`, `worker_processes 1`), so the measured PID is the one doing the work,
//!   with `-p <scratch dir>` and every path (pid, logs, temp dirs) in the scratch directory.
//! * `haproxy` (only with `--only …,haproxy`, likewise): client → HAProxy 2.x in `mode http`
//!   (the upgrade becomes a tunnel), `nbthread 1`, `tune.bufsize 65536`, no logging, started
//!   with `-db` (foreground, one process) → echo server.
//!
//! NGINX and HAProxy listen on an ephemeral loopback port (picked by binding 127.0.0.1:0 and
//! releasing it), are ready when that port accepts TCP, and are killed by PID like the others.
//!
//! The echo server and the floor relay are this binary re-executed with hidden subcommands
//! (`weir-bench echo --listen 127.0.0.1:0 --port-file F`, `weir-bench floor --listen ..
//! --upstream .. --port-file F`); each writes its bound port to `F`, which the parent polls
//! with a deadline. Both use a multi-thread Tokio runtime with one worker thread, so their load
//! is comparable to weir configured with `server.threads: 1`. weir is started as
//! `<directory of this executable>/weir run --config <tmp>/weir-N.yaml` (or `--weir-bin`) and is
//! ready when its listener accepts TCP and its admin `GET /readyz` answers 200. Each scenario
//! gets a fresh echo server and a fresh relay, so no scenario inherits another's heap. Every
//! child is killed by PID when its scenario ends, on error and on Ctrl-C (a Drop guard), and
//! also gets `PR_SET_PDEATHSIG` in case the bench itself is killed. Everything listens on
//! 127.0.0.1 only, and `RLIMIT_NOFILE` is raised to the hard limit in the bench and its children.
//!
//! Every weir the bench starts runs with every connection guard on, written out in its config
//! (`weir_config`), at limits no scenario reaches: `limits: {idle_timeout: 5m, close_timeout: 10s,
//! max_lifetime: 24h, keepalive: {interval: 30s, timeout: 20s}, max_frame: 16777216,
//! max_message: 67108864, message_rate: {per_second: 1000000, burst: 1000000, action: close},
//! bandwidth: {per_second: 10000000000, burst: 10000000000, action: close}}` (the `keepalive`
//! scenario changes `keepalive` only). So the figures include what the guards cost when they do
//! not fire. A `--baseline-bin` weir gets the same config, so it must know `limits:`.
//!
//! "Relay process" below means weir or the floor relay; for `direct`, which has no relay, the
//! CPU and RSS figures are the echo server's and are marked with †. CPU time is
//! utime + stime from `/proc/<pid>/stat` (all threads, in `sysconf(_SC_CLK_TCK)` ticks, so
//! about 10 ms of resolution); RSS is `VmRSS` from `/proc/<pid>/status`.
//!
//! # Scenarios
//!
//! Every scenario is bounded by a message/handshake count and by time, whichever comes first.
//!
//! * `small`: 50 connections, each with a writer and a reader half, pipelining 64-byte binary
//!   messages with up to 64 in flight, for 100 000 messages per connection or 10 s. Every echo
//!   is checked (length and sequence number). `msgs/s` = round trips completed / wall time;
//!   `CPU µs/msg` = relay CPU time over the run / messages relayed, where a round trip is two
//!   messages through the relay (one each way).
//! * `bulk`: 4 connections sending 64 KiB binary messages, 4 in flight each, for 5 000
//!   messages per connection or 10 s. `MB/s` = payload echoed back (10^6 bytes) / wall time;
//!   `CPU µs/MB` = relay CPU time / MB relayed, where each echoed MB crosses the relay twice and
//!   so counts as 2 MB (the same convention as `small`).
//! * `handshake`: 64 concurrent loops of TCP connect + WebSocket handshake (upgrade, 101) + one
//!   16-byte echo + close handshake, for 5 s or 20 000 cycles. `handshakes/s` = completed / wall
//!   time; `CPU µs/handshake cycle` = relay CPU time over the run / cycles completed (issue 14;
//!   before it the scenario ran 8 loops and had no CPU row).
//! * `latency`: 100 connections each send a 64-byte binary message every 5 ms (20 000 msgs/s in
//!   all) for 10 s, their schedules spread over one period; each message carries the time it was
//!   scheduled to go, so a sender that falls behind counts its delay (no coordinated omission).
//!   `round trip p50/p99 µs` over every echo. Issue 14's "added p99" is a target's p99 minus
//!   `direct`'s, judged against haproxy's when both run.
//! * `idle`: opens N = 9 900 idle WebSocket connections (200 handshakes in flight at a time),
//!   each after one 16-byte echo. N is limited by `RLIMIT_NOFILE` (20 000 here): a proxied
//!   connection costs the relay two descriptors. RSS is read before opening, at N/10 and at N,
//!   each after it settles (2 s after the last connection opened, twice weir's allocator decay
//!   time, then until two reads 500 ms apart differ by ≤ 64 KiB, at most 10 s more).
//!   `KiB/conn` = (RSS at N − RSS before) / N; `slope` = (RSS at N − RSS at N/10) / (N − N/10),
//!   which leaves out one-off warm-up allocations. If the hard `RLIMIT_NOFILE` is lower, N is
//!   lowered to fit and a note is printed. RSS is user-space memory only: kernel socket buffers
//!   are not in it. For weir, `heap B/conn` = (`weir_heap_allocated_bytes` at N − at N/10) /
//!   (N − N/10), read from its admin `/metrics` after each settled RSS: jemalloc's count of the
//!   bytes weir holds, which does not move with page-level noise as RSS does (it includes the
//!   growth of weir's per-connection tables, amortised). The echo server uses tokio-tungstenite's default config, whose 128 KiB read
//!   buffer is zero-filled on first read, so `direct`'s idle figure is mostly that buffer.
//! * `idle-echo`, `idle-room`, `idle-builtin`: the same measurement (N = 2 000 connections,
//!   RSS before, at N/10 and at N) for what weir serves itself, so they run on `weir` (and
//!   `baseline`) only; `direct` and `floor` show `-`. weir is configured with a built-in echo
//!   object at `/echo/{id}` (`idle-echo`: one object id per connection), a built-in room at
//!   `/rooms/{id}` (`idle-room`: ten members per room; the probe is the room's welcome, rooms do
//!   not echo) and a pool with the built-in echo backend at `/builtin` (`idle-builtin`: relayed
//!   to `builtin:echo`, so weir holds the relay and the echo server's WebSocket state; three
//!   descriptors per connection). The figure is weir's whole cost of one such connection.
//! * `keepalive` (weir only; `direct`, `floor` and `baseline` show `-`): what weir's keepalive
//!   pings cost. Two weir runs, each opening N idle relayed connections as `idle` does (same N,
//!   same `RLIMIT_NOFILE` cap) whose clients do answer pings: every client connection has its own
//!   task looping on `next()`, and tungstenite queues the pong and flushes it on that task's next
//!   read. One run has `keepalive: {interval: 1s, timeout: 10s}` (one ping per connection and
//!   second), the other `keepalive: {interval: 0s}` (no pings); everything else is as above. Once
//!   all N are open and 2 s have passed (every connection is then in its ping cycle), weir's CPU
//!   time is read over a 10 s window (`CPU ms/s`). Pings sent in the window are the pings the
//!   clients received; `CPU µs per ping` = (CPU ms/s with pings − without) / pings per second.
//!   `pongs matched` is the increase of `weir_peer_rtt_seconds_count` (summed over its labels,
//!   from weir's admin `/metrics`) over the window: the pongs weir recognised as answers to its
//!   pings. The scenario fails if that is below N × window / interval / 2 (pings not answered, or
//!   answers not matched), if the run without pings saw any ping, or if weir closed a connection.
//!   More than 1.5 pings per connection and interval is not a failure (the µs per ping is still
//!   per ping sent) but is printed as a WARNING, on stderr and after the table: weir then pings
//!   answered connections before their interval has passed, and the ms/s with pings is not that
//!   of one ping per interval.
//!
//! After each relayed idle and keepalive run, weir's `weir_connections_active` must still be N (no
//! guard closed an idle connection while it was measured), else the run fails.
//!
//! The `weir / floor` column is computed from the same run; with `--baseline-bin` a second weir
//! binary (say, the previous commit's) runs right before weir in every scenario, and the
//! `weir / baseline` column compares the two. After the table the tool checks
//! the issues' targets: handshake-cycle CPU ≤ 0.75× floor's and, with `nginx` measured, ≤
//! nginx's, with handshakes/s ≥ nginx's (issue 14); CPU per small message ≤ 1.3× floor, bulk MB/s ≥ 0.8× floor and
//! ≤ 16 KiB RSS per idle connection for weir (judged on `KiB/conn`), then, with every guard on
//! (issue 10), CPU per small message ≤ 1.15× floor and ≤ 8 KiB RSS per idle connection at
//! 9 900 connections (not judged when N is lower, as with `--quick`); it also prints the
//! keepalive figures on one line and lists the idle cost of each built-in endpoint measured.
//!
//! The host is small and shared: treat differences of a few percent as noise, and compare
//! columns of one run rather than numbers from different runs.

// libc calls for RLIMIT_NOFILE, the clock tick and PR_SET_PDEATHSIG; each block is one FFI call.
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::future::Future;
use std::io::{self, Read as _, Seek as _, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use clap::{Parser, Subcommand, ValueEnum};
use futures_util::{FutureExt as _, SinkExt as _, StreamExt as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, timeout, timeout_at, Instant};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TcpStream>;

/// How long a child may take to report its port or become ready.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// Interval between readiness polls (port file, weir listener and /readyz).
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Bound on any single network operation outside the measured loops (connect, handshake,
/// probe echo, close handshake).
const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// After a pipelined run's deadline, how long in-flight echoes may take to come back.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on opening all idle connections of one step.
const IDLE_OPEN_TIMEOUT: Duration = Duration::from_secs(180);
/// RSS is read only after this long without new connections: twice weir's allocator decay
/// time (`dirty_decay_ms: 1000`), so pages a burst of handshakes freed are not counted as held
/// by the idle connections (glibc's processes return or keep them at once: no change there).
const SETTLE_QUIET: Duration = Duration::from_secs(2);
/// RSS is settled when two reads this far apart differ by at most `SETTLE_TOLERANCE_KIB`.
const SETTLE_INTERVAL: Duration = Duration::from_millis(500);
const SETTLE_TOLERANCE_KIB: u64 = 64;
const SETTLE_MAX_READS: usize = 20;
/// File descriptors kept in reserve (stdio, listeners, admin, log and usage files, ...).
const FD_RESERVE: u64 = 200;
/// weir's own `server.fd_reserve` in the bench: below `FD_RESERVE`, so the idle scenarios reach
/// their N before weir starts refusing upgrades with 503.
const WEIR_FD_RESERVE: u64 = 64;
/// In the echo server: at most this many already-buffered messages are echoed before a flush.
const ECHO_BATCH_MAX: usize = 256;
/// Back-off after a failed accept() (e.g. EMFILE), so the accept loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
/// Payload of the probe echo done on every connection before it is used.
const PROBE: &[u8; 16] = b"weir-bench-probe";

// ---------------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------------

#[derive(Parser, Debug)]
#[command(
    name = "weir-bench",
    version,
    about = "Loopback benchmark: direct vs weir vs a plain TCP relay (floor); prints a Markdown table",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    helper: Option<Helper>,

    /// Targets to measure, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "direct,weir,floor")]
    only: Vec<Target>,

    /// Scenarios to run, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "small,bulk,huge,handshake,idle,keepalive,idle-echo,idle-room,idle-builtin"
    )]
    scenarios: Vec<Scenario>,

    /// Smoke test: short durations, 1000 idle relayed connections (also for keepalive, with a
    /// 3 s window) and 500 to each built-in.
    #[arg(long)]
    quick: bool,

    /// Repetitions of every scenario, its targets run in turn within each, in reverse order in
    /// every second (a noisy host's drift, and what one target's run leaves behind for the next,
    /// then hit every column alike). Each cell is the best of the repetitions (highest rate,
    /// lowest CPU, memory and latency), and the median of the repetitions' `weir / peer` ratios
    /// is printed too (per peer: baseline, floor, NGINX, HAProxy): the figure noise moves least.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    runs: u32,

    /// The weir binary [default: `weir` in the directory of this executable].
    #[arg(long, value_name = "PATH")]
    weir_bin: Option<PathBuf>,

    /// A second weir binary (e.g. a build of the previous commit) measured in the same run as
    /// the `baseline` column, with a `weir / baseline` ratio.
    #[arg(long, value_name = "PATH")]
    baseline_bin: Option<PathBuf>,

    /// The nginx binary for `--only …,nginx` [default: `nginx` on `PATH`, or /usr/sbin/nginx].
    #[arg(long, value_name = "PATH")]
    nginx_bin: Option<PathBuf>,

    /// The haproxy binary for `--only …,haproxy` [default: `haproxy` on `PATH`, or
    /// /usr/sbin/haproxy].
    #[arg(long, value_name = "PATH")]
    haproxy_bin: Option<PathBuf>,
}

/// Processes the benchmark starts by re-executing itself.
#[derive(Subcommand, Debug)]
enum Helper {
    /// WebSocket echo server.
    #[command(hide = true)]
    Echo {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        port_file: PathBuf,
    },
    /// Plain TCP relay: copy_bidirectional per connection.
    #[command(hide = true)]
    Floor {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        upstream: SocketAddr,
        #[arg(long)]
        port_file: PathBuf,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum Target {
    Direct,
    Weir,
    Floor,
    /// NGINX as a WebSocket proxy (`nginx` on `PATH` or `--nginx-bin`): one process, 64 KiB
    /// proxy buffers.
    Nginx,
    /// HAProxy in HTTP mode (`haproxy` on `PATH` or `--haproxy-bin`): one process, one thread,
    /// 64 KiB buffers (`tune.bufsize`).
    Haproxy,
    /// The `--baseline-bin` weir (not selectable with `--only`; added when that flag is given).
    #[value(skip)]
    Baseline,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Weir => "weir",
            Target::Floor => "floor",
            Target::Nginx => "nginx",
            Target::Haproxy => "haproxy",
            Target::Baseline => "baseline",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum Scenario {
    Small,
    Bulk,
    /// 1 MiB messages: the splice path (issue 14's zero copy).
    Huge,
    Handshake,
    Idle,
    /// What weir's keepalive pings cost: idle relayed connections, pings on and off.
    Keepalive,
    /// Idle connections to weir's built-in echo object.
    IdleEcho,
    /// Idle members of weir's built-in rooms.
    IdleRoom,
    /// Idle connections relayed to weir's built-in echo backend.
    IdleBuiltin,
    /// Round-trip latency of paced small echoes (p50 and p99; issue 14's "added p99").
    Latency,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Small => "small",
            Scenario::Bulk => "bulk",
            Scenario::Huge => "huge",
            Scenario::Handshake => "handshake",
            Scenario::Idle => "idle",
            Scenario::Keepalive => "keepalive",
            Scenario::IdleEcho => "idle-echo",
            Scenario::IdleRoom => "idle-room",
            Scenario::IdleBuiltin => "idle-builtin",
            Scenario::Latency => "latency",
        }
    }

    fn rows(self) -> Vec<Row> {
        match self {
            Scenario::Small => vec![Row::SmallRate, Row::SmallCpu],
            Scenario::Bulk => vec![Row::BulkRate, Row::BulkCpu],
            Scenario::Huge => vec![Row::HugeRate, Row::HugeCpu],
            Scenario::Handshake => vec![Row::Handshakes, Row::HandshakeCpu],
            Scenario::Latency => vec![Row::LatencyP50, Row::LatencyP99],
            Scenario::Keepalive => vec![
                Row::KeepaliveCpuOff,
                Row::KeepaliveCpuOn,
                Row::KeepalivePerPing,
                Row::KeepalivePingRate,
                Row::KeepalivePings,
                Row::KeepalivePongs,
            ],
            Scenario::Idle | Scenario::IdleEcho | Scenario::IdleRoom | Scenario::IdleBuiltin => {
                let kind = self.idle().unwrap_or(IdleKind::Relay);
                vec![Row::IdleKib(kind), Row::IdleSlope(kind), Row::IdleHeap(kind)]
            }
        }
    }

    /// What an idle scenario's connections reach (`None`: not an idle scenario).
    fn idle(self) -> Option<IdleKind> {
        match self {
            Scenario::Idle => Some(IdleKind::Relay),
            Scenario::IdleEcho => Some(IdleKind::EchoObject),
            Scenario::IdleRoom => Some(IdleKind::Room),
            Scenario::IdleBuiltin => Some(IdleKind::EchoBackend),
            Scenario::Small
            | Scenario::Bulk
            | Scenario::Huge
            | Scenario::Handshake
            | Scenario::Keepalive
            | Scenario::Latency => None,
        }
    }

    /// Scenarios that measure what weir serves itself: weir then also serves its built-ins.
    fn builtins(self) -> bool {
        self.idle().is_some_and(IdleKind::builtin)
    }

    /// Whether the scenario runs on `target`: the built-in ones have nothing to compare on direct
    /// or floor, and keepalive measures weir's own pings (on weir only).
    fn runs_on(self, target: Target) -> bool {
        match self {
            Scenario::Keepalive => target == Target::Weir,
            _ if self.builtins() => matches!(target, Target::Weir | Target::Baseline),
            _ => true,
        }
    }
}

/// `limits.keepalive` of every weir the bench starts, except in the `keepalive` scenario.
const GUARD_KEEPALIVE: &str = "{interval: 30s, timeout: 20s}";
/// The `keepalive` scenario's pings: one per connection and second.
const KEEPALIVE_ON: &str = "{interval: 1s, timeout: 10s}";
/// Its `interval` (ping rate per connection is its inverse).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// More pings per connection than this × 1 / interval is reported as a weir bug.
const KEEPALIVE_RATE_SLACK: f64 = 1.5;
/// The `keepalive` scenario's comparison run: no pings.
const KEEPALIVE_OFF: &str = "{interval: 0s}";
/// After the last connection opens, how long before the CPU window starts (longer than the
/// interval, so every connection is in its ping cycle).
const KEEPALIVE_WARMUP: Duration = Duration::from_secs(2);

/// The issue 10 idle target (≤ 8 KiB per connection) is judged at this many connections.
const IDLE_TARGET_N: usize = 9_900;

/// Members per room in `idle-room`.
const ROOM_MEMBERS: usize = 10;

/// What the connections of an idle scenario reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum IdleKind {
    /// `/`, relayed to the bench's echo server (`idle`).
    Relay,
    /// weir's built-in echo object, one object id per connection (`idle-echo`).
    EchoObject,
    /// weir's built-in room, `ROOM_MEMBERS` members per room (`idle-room`).
    Room,
    /// `/builtin`, relayed to weir's built-in echo backend (`idle-builtin`).
    EchoBackend,
}

impl IdleKind {
    /// Served by weir itself (configured only for these scenarios).
    fn builtin(self) -> bool {
        self != IdleKind::Relay
    }

    /// The request path of connection `i`.
    fn path(self, i: usize) -> String {
        match self {
            IdleKind::Relay => "/".into(),
            IdleKind::EchoObject => format!("/echo/c{i}"),
            IdleKind::Room => format!("/rooms/r{}", i / ROOM_MEMBERS),
            IdleKind::EchoBackend => "/builtin".into(),
        }
    }

    /// How a new connection is checked before it is left idle.
    fn probe(self) -> Probe {
        match self {
            IdleKind::Room => Probe::Welcome,
            IdleKind::Relay | IdleKind::EchoObject | IdleKind::EchoBackend => Probe::Echo,
        }
    }

    /// Descriptors one connection costs the relay process (weir): client side, plus the
    /// upstream side when relayed, plus the echo backend's side when that is weir too.
    fn relay_fds(self) -> u64 {
        match self {
            IdleKind::Relay => 2,
            IdleKind::EchoObject | IdleKind::Room => 1,
            IdleKind::EchoBackend => 3,
        }
    }
}

/// The first thing a new connection must get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Probe {
    /// `PROBE` echoed back.
    Echo,
    /// A room's welcome event (a text message with `"weir":"welcome"`).
    Welcome,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.helper {
        Some(Helper::Echo { listen, ref port_file }) => {
            serve(listen, port_file, "echo server", echo_conn).map(|()| ExitCode::SUCCESS)
        }
        Some(Helper::Floor { listen, upstream, ref port_file }) => {
            if upstream.ip().is_loopback() {
                serve(listen, port_file, "floor relay", move |tcp| floor_conn(tcp, upstream))
                    .map(|()| ExitCode::SUCCESS)
            } else {
                Err(anyhow!("refusing non-loopback upstream {upstream}"))
            }
        }
        None => run_bench(cli),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("weir-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------------------------

/// A pipelined load: `conns` connections, each keeping up to `window` messages of `size`
/// bytes in flight, until `per_conn` round trips or `dur` have passed.
#[derive(Clone, Copy, Debug)]
struct PipeLoad {
    conns: usize,
    size: usize,
    window: usize,
    per_conn: u64,
    dur: Duration,
}

#[derive(Clone, Copy, Debug)]
struct Params {
    small: PipeLoad,
    bulk: PipeLoad,
    /// `huge`: 1 MiB messages.
    huge: PipeLoad,
    hs_loops: usize,
    hs_max: u64,
    hs_dur: Duration,
    idle_n: usize,
    /// Connections of the idle scenarios on weir's built-ins.
    builtin_idle_n: usize,
    idle_concurrency: usize,
    /// The `keepalive` scenario's CPU window (it opens `idle_n` connections).
    keepalive_window: Duration,
    /// `latency`: connections, messages per second on each, and for how long.
    lat_conns: usize,
    lat_rate: u32,
    lat_dur: Duration,
}

impl Params {
    fn new(quick: bool) -> Self {
        let secs = |full: u64, quick_ms: u64| {
            if quick {
                Duration::from_millis(quick_ms)
            } else {
                Duration::from_secs(full)
            }
        };
        Params {
            small: PipeLoad {
                conns: 50,
                size: 64,
                window: 64,
                per_conn: if quick { 10_000 } else { 100_000 },
                dur: secs(10, 1_000),
            },
            bulk: PipeLoad {
                conns: 4,
                size: 64 * 1024,
                window: 4,
                per_conn: if quick { 500 } else { 5_000 },
                dur: secs(10, 1_000),
            },
            huge: PipeLoad {
                conns: 4,
                size: 1024 * 1024,
                window: 2,
                per_conn: if quick { 50 } else { 1_000 },
                dur: secs(10, 1_000),
            },
            hs_loops: 64,
            hs_max: if quick { 2_000 } else { 20_000 },
            hs_dur: secs(5, 1_000),
            idle_n: if quick { 1_000 } else { 9_900 },
            builtin_idle_n: if quick { 500 } else { 2_000 },
            idle_concurrency: 200,
            keepalive_window: secs(10, 3_000),
            lat_conns: 100,
            lat_rate: 200,
            lat_dur: secs(10, 1_000),
        }
    }

    fn describe(&self, scenario: Scenario) -> String {
        let pipe = |p: &PipeLoad| {
            format!(
                "{} conns × {} B binary, window {}, ≤ {} msgs/conn or {:?}",
                p.conns, p.size, p.window, p.per_conn, p.dur
            )
        };
        match scenario {
            Scenario::Small => pipe(&self.small),
            Scenario::Bulk => pipe(&self.bulk),
            Scenario::Huge => pipe(&self.huge),
            Scenario::Handshake => format!(
                "{} loops of connect + handshake + 16 B echo + close, ≤ {} or {:?}",
                self.hs_loops, self.hs_max, self.hs_dur
            ),
            Scenario::Idle => format!(
                "N = {} idle conns (RSS at N/10 and N), {} handshakes in flight",
                self.idle_n, self.idle_concurrency
            ),
            Scenario::Keepalive => format!(
                "N = {} idle relayed conns whose clients answer pings; weir CPU over {:?} with \
                 `keepalive: {KEEPALIVE_ON}` vs a second weir with `{KEEPALIVE_OFF}`, weir only",
                self.idle_n, self.keepalive_window
            ),
            Scenario::IdleEcho => format!(
                "N = {} idle conns to weir's built-in echo object (one id each; RSS at N/10 and N), weir only",
                self.builtin_idle_n
            ),
            Scenario::IdleRoom => format!(
                "N = {} idle members of weir's built-in rooms ({ROOM_MEMBERS} per room; RSS at N/10 and N), weir only",
                self.builtin_idle_n
            ),
            Scenario::IdleBuiltin => format!(
                "N = {} idle conns relayed to weir's built-in echo backend (RSS at N/10 and N), weir only",
                self.builtin_idle_n
            ),
            Scenario::Latency => format!(
                "{} conns × {} msgs/s of 64 B ({} msgs/s in all) for {:?}; round trip from each message's scheduled send time",
                self.lat_conns,
                self.lat_rate,
                self.lat_conns as u32 * self.lat_rate,
                self.lat_dur
            ),
        }
    }

    /// Connections opened by an idle scenario of this kind.
    fn idle_count(&self, kind: IdleKind) -> usize {
        if kind.builtin() {
            self.builtin_idle_n
        } else {
            self.idle_n
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Benchmark driver
// ---------------------------------------------------------------------------------------------

fn run_bench(cli: Cli) -> Result<ExitCode> {
    let nofile = raise_nofile().context("raising RLIMIT_NOFILE")?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("building the Tokio runtime")?;
    rt.block_on(async {
        tokio::select! {
            r = bench(cli, nofile) => r,
            r = tokio::signal::ctrl_c() => {
                r.context("waiting for Ctrl-C")?;
                // Dropping `bench` runs the guards, which kill every child.
                bail!("interrupted")
            }
        }
    })
}

/// Shared state of one benchmark run.
struct Ctx {
    exe: PathBuf,
    weir: Option<PathBuf>,
    /// The `--baseline-bin` weir, measured as the `baseline` target.
    baseline: Option<PathBuf>,
    /// The nginx binary (with `--only …,nginx`).
    nginx: Option<PathBuf>,
    /// The haproxy binary (with `--only …,haproxy`).
    haproxy: Option<PathBuf>,
    tmp: TempDir,
    clk_tck: f64,
    params: Params,
    /// `--runs`: repetitions of every scenario; a cell is the best of them.
    runs: u32,
    next_tag: AtomicU32,
}

impl Ctx {
    fn tag(&self) -> u32 {
        self.next_tag.fetch_add(1, Ordering::Relaxed)
    }
}

type Cell = Result<f64, String>;

async fn bench(cli: Cli, nofile: u64) -> Result<ExitCode> {
    let mut targets = cli.only.clone();
    targets.sort();
    targets.dedup();
    let mut scenarios = cli.scenarios.clone();
    scenarios.sort();
    scenarios.dedup();
    ensure!(!targets.is_empty(), "--only selects no target");
    ensure!(!scenarios.is_empty(), "--scenarios selects no scenario");

    let exe = std::env::current_exe().context("locating the current executable")?;
    let weir = if targets.contains(&Target::Weir) { Some(resolve_weir(cli.weir_bin.as_deref(), &exe)?) } else { None };
    let baseline = match cli.baseline_bin.as_deref() {
        Some(p) => {
            targets.push(Target::Baseline);
            Some(resolve_weir(Some(p), &exe)?)
        }
        None => None,
    };
    let nginx = if targets.contains(&Target::Nginx) {
        Some(resolve_tool("nginx", cli.nginx_bin.as_deref(), "--nginx-bin", "apt-get install nginx-light")?)
    } else {
        None
    };
    let haproxy = if targets.contains(&Target::Haproxy) {
        Some(resolve_tool("haproxy", cli.haproxy_bin.as_deref(), "--haproxy-bin", "apt-get install haproxy")?)
    } else {
        None
    };

    // SAFETY: sysconf has no preconditions.
    let clk_tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ensure!(clk_tck > 0, "sysconf(_SC_CLK_TCK) failed");

    let mut params = Params::new(cli.quick);
    // A proxied connection costs the relay two descriptors (client side and upstream side).
    // The keepalive scenario opens as many relayed connections as idle.
    let max_idle = (nofile.saturating_sub(FD_RESERVE) / 2) as usize;
    let relayed_idle = scenarios.contains(&Scenario::Idle) || scenarios.contains(&Scenario::Keepalive);
    if relayed_idle && params.idle_n > max_idle {
        eprintln!(
            "weir-bench: RLIMIT_NOFILE is {nofile}: idle and keepalive scenarios lowered from {} to \
             {max_idle} connections",
            params.idle_n
        );
        params.idle_n = max_idle;
    }
    ensure!(
        params.idle_n >= 100 || !relayed_idle,
        "RLIMIT_NOFILE {nofile} is too low for the idle and keepalive scenarios"
    );
    // The costliest built-in scenario: three descriptors per connection in weir.
    let max_builtin = (nofile.saturating_sub(FD_RESERVE) / IdleKind::EchoBackend.relay_fds()) as usize;
    if scenarios.iter().any(|s| s.builtins()) && params.builtin_idle_n > max_builtin {
        eprintln!(
            "weir-bench: RLIMIT_NOFILE is {nofile}: built-in idle scenarios lowered from {} to {max_builtin} connections",
            params.builtin_idle_n
        );
        params.builtin_idle_n = max_builtin;
    }
    ensure!(
        params.builtin_idle_n >= 100 || !scenarios.iter().any(|s| s.builtins()),
        "RLIMIT_NOFILE {nofile} is too low for the built-in idle scenarios"
    );

    let mut ctx = Ctx {
        exe,
        weir,
        baseline,
        nginx,
        haproxy,
        tmp: TempDir::new().context("creating a temporary directory")?,
        clk_tck: clk_tck as f64,
        params,
        runs: cli.runs,
        next_tag: AtomicU32::new(0),
    };
    eprintln!(
        "weir-bench: {} run, targets {}, scenarios {}, scratch dir {}",
        if cli.quick { "quick" } else { "full" },
        join(targets.iter().map(|t| t.name())),
        join(scenarios.iter().map(|s| s.name())),
        ctx.tmp.path().display()
    );

    // Targets run in the order direct, floor, NGINX, HAProxy, baseline, weir for every scenario
    // (reversed in every second repetition), so that slow drifts on the shared host hit all
    // columns of a row alike.
    let run_order: Vec<Target> =
        [Target::Direct, Target::Floor, Target::Nginx, Target::Haproxy, Target::Baseline, Target::Weir]
            .into_iter()
            .filter(|t| targets.contains(t))
            .collect();
    let mut results: BTreeMap<(Row, Target), Cell> = BTreeMap::new();
    // Per row and peer (every target but weir and direct), `weir / peer` of each repetition in
    // which both were measured.
    let mut paired: BTreeMap<(Row, Target), Vec<f64>> = BTreeMap::new();
    let mut failures = 0usize;
    for &scenario in &scenarios {
        for run in 1..=ctx.runs {
            let mut this_run: BTreeMap<(Row, Target), f64> = BTreeMap::new();
            // Every second repetition runs the targets in reverse order: what a run leaves behind
            // for the next (tens of thousands of TIME_WAIT sockets after a handshake run, which
            // make every later connect(2) search longer for a free port) then falls on each
            // target in turn instead of always on the last (weir).
            let order: Vec<Target> =
                if run % 2 == 0 { run_order.iter().rev().copied().collect() } else { run_order.clone() };
            for &target in &order {
                if !scenario.runs_on(target) {
                    continue;
                }
                let label = match ctx.runs {
                    1 => format!("{}/{}", scenario.name(), target.name()),
                    n => format!("{}/{} run {run}/{n}", scenario.name(), target.name()),
                };
                eprintln!("[{label}] {}", ctx.params.describe(scenario));
                let backstop = backstop(&ctx.params, scenario);
                let outcome = match timeout(backstop, run_one(&ctx, scenario, target, &label)).await {
                    Ok(r) => r,
                    Err(_) => Err(anyhow!("scenario exceeded its overall limit of {backstop:?}")),
                };
                match outcome {
                    Ok(values) => {
                        for (row, v) in values {
                            this_run.insert((row, target), v);
                            let best = match results.get(&(row, target)) {
                                Some(Ok(old)) => row.better(*old, v),
                                _ => v,
                            };
                            results.insert((row, target), Ok(best));
                        }
                    }
                    Err(e) => {
                        failures += 1;
                        eprintln!("[{label}] error: {e:#}");
                        for row in scenario.rows() {
                            results.entry((row, target)).or_insert_with(|| Err(format!("{e:#}")));
                        }
                    }
                }
            }
            for row in scenario.rows() {
                let Some(w) = this_run.get(&(row, Target::Weir)) else { continue };
                for &peer in run_order.iter().filter(|t| !matches!(t, Target::Weir | Target::Direct)) {
                    if let Some(b) = this_run.get(&(row, peer)).filter(|b| **b != 0.0) {
                        paired.entry((row, peer)).or_default().push(w / b);
                    }
                }
            }
        }
    }

    print!("{}", report(&ctx, &targets, &scenarios, &results));
    if ctx.runs > 1 {
        print!("{}", paired_report(&ctx.params, ctx.runs, &paired));
    }
    if failures > 0 {
        ctx.tmp.keep();
        eprintln!(
            "weir-bench: {failures} scenario run(s) failed; see the errors above (logs and configs \
             kept in {})",
            ctx.tmp.path().display()
        );
        Ok(ExitCode::FAILURE)
    } else {
        Ok(ExitCode::SUCCESS)
    }
}

fn resolve_weir(explicit: Option<&Path>, exe: &Path) -> Result<PathBuf> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => exe.parent().context("the current executable has no parent directory")?.join("weir"),
    };
    if !path.is_file() {
        bail!(
            "weir binary not found at {}: build it with `cargo build --release` (builds both \
             `weir` and `weir-bench`), point --weir-bin at it, or leave it out with \
             `--only direct,floor`",
            path.display()
        );
    }
    Ok(path)
}

/// A third-party proxy's binary: `explicit`, else `name` on `PATH`, else `/usr/sbin/<name>`.
fn resolve_tool(name: &str, explicit: Option<&Path>, flag: &str, install: &str) -> Result<PathBuf> {
    let found = match explicit {
        Some(p) => Some(p.to_path_buf()),
        None => std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
            .map(|dir| dir.join(name))
            .find(|p| p.is_file()),
    };
    match found {
        Some(p) if p.is_file() => Ok(p),
        _ => bail!("{name} not found: install it (`{install}`; stop and disable the service the package starts) or point {flag} at it, or leave it out of --only"),
    }
}

/// Upper bound on one (scenario, target) run, including process start-up and teardown.
fn backstop(p: &Params, scenario: Scenario) -> Duration {
    let slack = STARTUP_TIMEOUT + 2 * OP_TIMEOUT + DRAIN_TIMEOUT;
    match scenario {
        Scenario::Small => p.small.dur + slack + OP_TIMEOUT * 2,
        Scenario::Bulk => p.bulk.dur + slack + OP_TIMEOUT * 2,
        Scenario::Huge => p.huge.dur + slack + OP_TIMEOUT * 2,
        Scenario::Handshake => p.hs_dur + slack,
        Scenario::Latency => p.lat_dur + slack + OP_TIMEOUT * 3,
        Scenario::Idle | Scenario::IdleEcho | Scenario::IdleRoom | Scenario::IdleBuiltin => {
            2 * IDLE_OPEN_TIMEOUT + 3 * (SETTLE_QUIET + SETTLE_INTERVAL * SETTLE_MAX_READS as u32) + slack
        }
        // Two weir runs, each: start-up, opening, warm-up, window, four scrapes.
        Scenario::Keepalive => {
            2 * (IDLE_OPEN_TIMEOUT + KEEPALIVE_WARMUP + p.keepalive_window + slack + 4 * SCRAPE_TIMEOUT)
        }
    }
}

async fn run_one(ctx: &Ctx, scenario: Scenario, target: Target, label: &str) -> Result<Vec<(Row, f64)>> {
    if scenario == Scenario::Keepalive {
        // Two deployments of its own.
        return run_keepalive(ctx, target, label).await;
    }
    let dep = deploy(ctx, target, scenario.builtins(), GUARD_KEEPALIVE).await?;
    eprintln!("[{label}] ready on {} (measuring {} pid {})", dep.addr, dep.measured_name(), dep.pid);
    let p = &ctx.params;
    let values = match scenario {
        Scenario::Small => {
            let out = run_pipelined(ctx, &dep, &p.small, label).await?;
            let msgs = 2.0 * out.round_trips as f64;
            let rate = out.round_trips as f64 / out.elapsed.as_secs_f64();
            let cpu = out.cpu.as_secs_f64() * 1e6 / msgs;
            eprintln!(
                "[{label}] {} round trips in {:.2?}: {rate:.0} msgs/s, {} CPU {:.2?} = {cpu:.3} µs/msg",
                out.round_trips,
                out.elapsed,
                dep.measured_name(),
                out.cpu
            );
            vec![(Row::SmallRate, rate), (Row::SmallCpu, cpu)]
        }
        Scenario::Bulk => {
            let (rate, cpu) = run_volume(ctx, &dep, &p.bulk, label).await?;
            vec![(Row::BulkRate, rate), (Row::BulkCpu, cpu)]
        }
        Scenario::Huge => {
            let (rate, cpu) = run_volume(ctx, &dep, &p.huge, label).await?;
            vec![(Row::HugeRate, rate), (Row::HugeCpu, cpu)]
        }
        Scenario::Handshake => {
            let (user0, kernel0) = cpu_times(ctx, dep.pid)?;
            let (n, elapsed) = run_handshakes(&dep, p).await?;
            let (user1, kernel1) = cpu_times(ctx, dep.pid)?;
            let (user, kernel) = (user1.saturating_sub(user0), kernel1.saturating_sub(kernel0));
            let cpu = user + kernel;
            let rate = n as f64 / elapsed.as_secs_f64();
            let per = cpu.as_secs_f64() * 1e6 / n as f64;
            let per_user = user.as_secs_f64() * 1e6 / n as f64;
            eprintln!(
                "[{label}] {n} handshakes in {elapsed:.2?}: {rate:.0}/s, {} CPU {cpu:.2?} = {per:.1} µs/cycle \
                 ({per_user:.1} user, {:.1} kernel)",
                dep.measured_name(),
                per - per_user
            );
            vec![(Row::Handshakes, rate), (Row::HandshakeCpu, per)]
        }
        Scenario::Latency => {
            let (p50, p99, n) = run_latency(&dep, p).await?;
            eprintln!("[{label}] {n} round trips: p50 {p50:.0} µs, p99 {p99:.0} µs");
            vec![(Row::LatencyP50, p50), (Row::LatencyP99, p99)]
        }
        Scenario::Idle | Scenario::IdleEcho | Scenario::IdleRoom | Scenario::IdleBuiltin => {
            let kind = scenario.idle().context("an idle scenario without a kind")?;
            run_idle(&dep, p, kind, label).await?
        }
        Scenario::Keepalive => bail!("keepalive runs on its own deployments"),
    };
    drop(dep);
    Ok(values)
}

// ---------------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------------

/// A child process, killed (SIGKILL, by PID) and reaped when dropped.
struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    /// Call from the thread that runs the benchmark (the runtime's `block_on` thread, which
    /// lives as long as the process): `PR_SET_PDEATHSIG` fires when the *thread* that forked
    /// the child exits.
    fn spawn(name: &str, mut cmd: Command) -> Result<Proc> {
        let parent = std::process::id();
        // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
        // system calls (prctl, getppid, _exit).
        unsafe {
            cmd.pre_exec(move || {
                // Die with the bench even if it is SIGKILLed and its Drop guards never run.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if libc::getppid() as u32 != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let child =
            cmd.spawn().with_context(|| format!("starting {name} ({})", cmd.get_program().to_string_lossy()))?;
        Ok(Proc { name: name.to_string(), child })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn check_running(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!("{} (pid {}) exited: {status}", self.name, self.pid()),
            Err(e) => Err(e).with_context(|| format!("checking on {} (pid {})", self.name, self.pid())),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // Child::kill sends SIGKILL to this child's PID only.
            if let Err(e) = self.child.kill() {
                eprintln!("weir-bench: killing {} (pid {}): {e}", self.name, self.pid());
            }
        }
        // Reap it; after SIGKILL this returns promptly.
        let _ = self.child.wait();
    }
}

/// The processes behind one target and where clients connect.
struct Deployment {
    target: Target,
    /// Address clients connect to.
    addr: SocketAddr,
    /// PID whose CPU and RSS are reported: the relay, or the echo server for `direct`.
    pid: u32,
    /// weir's admin listener (`/metrics`); `None` for direct and floor.
    admin: Option<SocketAddr>,
    /// Dropping these kills them.
    _procs: Vec<Proc>,
}

impl Deployment {
    fn measured_name(&self) -> &'static str {
        match self.target {
            Target::Direct => "echo server",
            Target::Weir => "weir",
            Target::Floor => "floor relay",
            Target::Nginx => "nginx",
            Target::Haproxy => "haproxy",
            Target::Baseline => "baseline weir",
        }
    }
}

/// Starts `target`; with `builtins`, weir also serves its built-in echo object, rooms and echo
/// backend (see `weir_config`); `keepalive` is weir's `limits.keepalive` (YAML flow map).
async fn deploy(ctx: &Ctx, target: Target, builtins: bool, keepalive: &str) -> Result<Deployment> {
    let tag = ctx.tag();
    let dir = ctx.tmp.path();

    let echo_port_file = dir.join(format!("echo-{tag}.port"));
    let mut echo = spawn_helper(
        ctx,
        "echo server",
        &[
            OsStr::new("echo"),
            OsStr::new("--listen"),
            OsStr::new("127.0.0.1:0"),
            OsStr::new("--port-file"),
            echo_port_file.as_os_str(),
        ],
    )?;
    let echo_addr = loopback(wait_port_file(&mut echo, &echo_port_file).await?);
    let echo_pid = echo.pid();
    let mut procs = vec![echo];

    match target {
        Target::Direct => Ok(Deployment { target, addr: echo_addr, pid: echo_pid, admin: None, _procs: procs }),
        Target::Floor => {
            let port_file = dir.join(format!("floor-{tag}.port"));
            let upstream = echo_addr.to_string();
            let mut floor = spawn_helper(
                ctx,
                "floor relay",
                &[
                    OsStr::new("floor"),
                    OsStr::new("--listen"),
                    OsStr::new("127.0.0.1:0"),
                    OsStr::new("--upstream"),
                    OsStr::new(&upstream),
                    OsStr::new("--port-file"),
                    port_file.as_os_str(),
                ],
            )?;
            let addr = loopback(wait_port_file(&mut floor, &port_file).await?);
            let pid = floor.pid();
            procs.push(floor);
            Ok(Deployment { target, addr, pid, admin: None, _procs: procs })
        }
        Target::Nginx | Target::Haproxy => {
            let bin = if target == Target::Nginx { &ctx.nginx } else { &ctx.haproxy };
            let bin = bin.as_ref().context("the proxy binary was not resolved")?;
            let (listen, _) = free_loopback_ports()?;
            let name = target.name();
            let config_path = dir.join(format!("{name}-{tag}.conf"));
            let log_path = dir.join(format!("{name}-{tag}.log"));
            let scratch = dir.join(format!("{name}-{tag}"));
            fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
            let config = if target == Target::Nginx {
                nginx_config(listen, echo_addr, &scratch)
            } else {
                haproxy_config(listen, echo_addr)
            };
            fs::write(&config_path, config).with_context(|| format!("writing {}", config_path.display()))?;
            let log = File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
            let mut cmd = Command::new(bin);
            if target == Target::Nginx {
                // -e: the error log before the config is read (else /var/log/nginx).
                cmd.arg("-p").arg(&scratch).arg("-e").arg(scratch.join("error.log")).arg("-c").arg(&config_path);
            } else {
                // -db: foreground, no daemon; one process.
                cmd.arg("-db").arg("-f").arg(&config_path);
            }
            cmd.stdin(Stdio::null()).stdout(log.try_clone().context("duplicating the log handle")?).stderr(log);
            let mut proxy = Proc::spawn(name, cmd)?;
            wait_listening(&mut proxy, listen, &log_path).await?;
            let pid = proxy.pid();
            procs.push(proxy);
            Ok(Deployment { target, addr: listen, pid, admin: None, _procs: procs })
        }
        Target::Weir | Target::Baseline => {
            let bin = if target == Target::Weir { &ctx.weir } else { &ctx.baseline };
            let bin = bin.as_ref().context("weir binary was not resolved")?;
            let (listen, admin) = free_loopback_ports()?;
            let config_path = dir.join(format!("weir-{tag}.yaml"));
            let usage_path = dir.join(format!("usage-{tag}.jsonl"));
            let log_path = dir.join(format!("weir-{tag}.log"));
            let data_dir = builtins.then(|| dir.join(format!("data-{tag}")));
            let config = weir_config(listen, admin, echo_addr, &usage_path, data_dir.as_deref(), keepalive)?;
            fs::write(&config_path, config).with_context(|| format!("writing {}", config_path.display()))?;
            let log = File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
            let mut cmd = Command::new(bin);
            cmd.arg("run")
                .arg("--config")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone().context("duplicating the weir log handle")?)
                .stderr(log);
            let mut weir = Proc::spawn("weir", cmd)?;
            wait_weir_ready(&mut weir, listen, admin, &log_path).await?;
            let pid = weir.pid();
            procs.push(weir);
            Ok(Deployment { target, addr: listen, pid, admin: Some(admin), _procs: procs })
        }
    }
}

fn spawn_helper(ctx: &Ctx, name: &str, args: &[&OsStr]) -> Result<Proc> {
    let mut cmd = Command::new(&ctx.exe);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::inherit());
    Proc::spawn(name, cmd)
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Polls `path` for the port a helper writes once it has bound, until `STARTUP_TIMEOUT`.
async fn wait_port_file(proc: &mut Proc, path: &Path) -> Result<u16> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        proc.check_running().context("helper failed during start-up")?;
        match fs::read_to_string(path) {
            Ok(text) => {
                if let Ok(port) = text.trim().parse::<u16>() {
                    if port != 0 {
                        return Ok(port);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
        if Instant::now() >= deadline {
            bail!(
                "{} (pid {}) did not write its port to {} within {STARTUP_TIMEOUT:?}",
                proc.name,
                proc.pid(),
                path.display()
            );
        }
        sleep(POLL_INTERVAL).await;
    }
}

/// Writes the port atomically (write + rename) so the parent never reads a partial file.
fn write_port_file(path: &Path, port: u16) -> Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, format!("{port}\n")).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// Two distinct free loopback ports: bound together on 127.0.0.1:0, then released.
fn free_loopback_ports() -> Result<(SocketAddr, SocketAddr)> {
    let a = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("picking a free port")?;
    let b = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("picking a free port")?;
    Ok((a.local_addr()?, b.local_addr()?))
}

/// weir's config: everything at `/` relayed to the bench's echo server. With `builtins` (a data
/// directory), also a built-in echo object at `/echo/{id}`, a built-in room at `/rooms/{id}` and
/// a pool with the built-in echo backend at `/builtin`. Every guard is on (`limits:`), at limits
/// no scenario reaches, with `keepalive` as `limits.keepalive`.
fn weir_config(
    listen: SocketAddr,
    admin: SocketAddr,
    echo: SocketAddr,
    usage: &Path,
    builtins: Option<&Path>,
    keepalive: &str,
) -> Result<String> {
    // A JSON string literal is also a valid YAML double-quoted scalar.
    let usage = serde_json::to_string(&usage.to_string_lossy()).context("quoting the usage path")?;
    let (data_dir, objects, pools, routes) = match builtins {
        None => Default::default(),
        Some(dir) => (
            format!(
                "data_dir: {}\n",
                serde_json::to_string(&dir.to_string_lossy()).context("quoting the data directory")?
            ),
            "objects:
  - name: echo
    id: {path: \"/echo/{id}\"}
    builtin: echo
  - name: rooms
    id: {path: \"/rooms/{id}\"}
    builtin: room
"
            .to_string(),
            "  - name: builtin
    backends: [\"builtin:echo\"]
    health_check:
      kind: none
"
            .to_string(),
            "  - path_prefix: /echo
    object: echo
  - path_prefix: /rooms
    object: rooms
  - path_prefix: /builtin
    pool: builtin
"
            .to_string(),
        ),
    };
    Ok(format!(
        r#"# Generated by weir-bench.
server:
  threads: 1
  grace_period: 1s
  fd_reserve: {WEIR_FD_RESERVE}
log:
  level: warn
  format: text
listeners:
  - address: "{listen}"
admin:
  address: "{admin}"
timeouts:
  request_head: 10s
  backend_connect: 3s
  backend_handshake: 10s
usage:
  file: {usage}
limits:
  idle_timeout: 5m
  close_timeout: 10s
  max_lifetime: 24h
  keepalive: {keepalive}
  max_frame: 16777216
  max_message: 67108864
  message_rate: {{per_second: 1000000, burst: 1000000, action: close}}
  bandwidth: {{per_second: 10000000000, burst: 10000000000, action: close}}
{data_dir}{objects}pools:
  - name: echo
    backends: ["{echo}"]
    selection: round_robin
    health_check:
      kind: none
{pools}routes:
  - path_prefix: /
    kind: websocket
    pool: echo
{routes}"#
    ))
}

/// NGINX as a WebSocket proxy to `echo`: one process (`master_process off`, so the measured PID
/// is the one doing the work), 64 KiB proxy buffers, no access log, every path under `scratch`.
fn nginx_config(listen: SocketAddr, echo: SocketAddr, scratch: &Path) -> String {
    let d = scratch.display();
    format!(
        r#"# Generated by weir-bench.
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{
    worker_connections 20480;
}}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen {listen};
        location / {{
            proxy_pass http://{echo};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_buffer_size 64k;
            proxy_buffers 4 64k;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }}
    }}
}}
"#
    )
}

/// HAProxy in HTTP mode in front of `echo` (the upgrade becomes a tunnel): one process, one
/// thread, 64 KiB buffers, no logging.
fn haproxy_config(listen: SocketAddr, echo: SocketAddr) -> String {
    format!(
        r#"# Generated by weir-bench.
global
    nbthread 1
    tune.bufsize 65536
defaults
    mode http
    timeout connect 10s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h
frontend bench
    bind {listen}
    default_backend echo
backend echo
    server echo {echo}
"#
    )
}

/// Waits until `proxy` accepts TCP on `listen`.
async fn wait_listening(proxy: &mut Proc, listen: SocketAddr, log: &Path) -> Result<()> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        if let Err(e) = proxy.check_running() {
            bail!("during start-up, {e:#}; end of its log ({}):\n{}", log.display(), log_tail(log));
        }
        if let Ok(Ok(_)) = timeout(POLL_INTERVAL * 10, TcpStream::connect(listen)).await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{} (pid {}) did not accept on {listen} within {STARTUP_TIMEOUT:?}; end of its log:\n{}",
                proxy.name,
                proxy.pid(),
                log_tail(log)
            );
        }
        sleep(POLL_INTERVAL).await;
    }
}

/// Waits until weir accepts TCP on its listener and its admin `/readyz` answers 200.
async fn wait_weir_ready(weir: &mut Proc, listen: SocketAddr, admin: SocketAddr, log: &Path) -> Result<()> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        if let Err(e) = weir.check_running() {
            bail!("during start-up, {e:#}; end of its log ({}):\n{}", log.display(), log_tail(log));
        }
        let last = match timeout(POLL_INTERVAL * 10, TcpStream::connect(listen)).await {
            Ok(Ok(_)) => match http_get_status(admin, "/readyz").await {
                Ok(200) => return Ok(()),
                Ok(status) => format!("/readyz answered {status}"),
                Err(e) => format!("/readyz: {e:#}"),
            },
            Ok(Err(e)) => format!("listener {listen}: {e}"),
            Err(_) => format!("listener {listen}: connect timed out"),
        };
        if Instant::now() >= deadline {
            bail!(
                "weir (pid {}) not ready within {STARTUP_TIMEOUT:?} (last: {last}); end of its log ({}):\n{}",
                weir.pid(),
                log.display(),
                log_tail(log)
            );
        }
        sleep(POLL_INTERVAL).await;
    }
}

/// Bound on one `/metrics` scrape.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest `/metrics` body read.
const SCRAPE_MAX: usize = 16 << 20;

/// The sum over all label sets of metric `name` (a counter, gauge, or a histogram's `_count`) in
/// weir's admin `/metrics`; 0 when the metric is absent.
async fn scrape_sum(admin: SocketAddr, name: &str) -> Result<f64> {
    let body = timeout(SCRAPE_TIMEOUT, async {
        let mut s = TcpStream::connect(admin).await.with_context(|| format!("connecting to {admin}"))?;
        let req = format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.context("sending the request")?;
        let mut buf = Vec::new();
        // The admin listener answers with `Connection: close`: read to the end.
        (&mut s).take(SCRAPE_MAX as u64).read_to_end(&mut buf).await.context("reading the response")?;
        Ok::<_, anyhow::Error>(String::from_utf8_lossy(&buf).into_owned())
    })
    .await
    .with_context(|| format!("GET {admin}/metrics timed out"))??;
    let (head, body) = body.split_once("\r\n\r\n").context("no end of head in the /metrics response")?;
    ensure!(head.starts_with("HTTP/1.1 200"), "/metrics answered {:?}", head.lines().next().unwrap_or(""));
    let mut sum = 0.0;
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        if line.split(['{', ' ']).next() == Some(name) {
            let value = line.rsplit(' ').next().unwrap_or("");
            sum += value.parse::<f64>().with_context(|| format!("bad /metrics line {line:?}"))?;
        }
    }
    Ok(sum)
}

/// Minimal HTTP/1.1 GET returning the status code.
async fn http_get_status(addr: SocketAddr, path: &str) -> Result<u16> {
    timeout(Duration::from_secs(2), async {
        let mut s = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.context("sending the request")?;
        let mut buf = Vec::with_capacity(512);
        let mut chunk = [0u8; 512];
        while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < 8192 {
            let n = s.read(&mut chunk).await.context("reading the response")?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let head = String::from_utf8_lossy(&buf);
        let mut parts = head.split_whitespace();
        match (parts.next(), parts.next().map(str::parse::<u16>)) {
            (Some(v), Some(Ok(code))) if v.starts_with("HTTP/1.") => Ok(code),
            _ => bail!("malformed response from {addr}{path}: {:?}", head.lines().next().unwrap_or("")),
        }
    })
    .await
    .with_context(|| format!("GET {addr}{path} timed out"))?
}

/// The last 4 KiB of a log file, for error messages.
fn log_tail(path: &Path) -> String {
    let read = || -> io::Result<String> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(4096)))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    match read() {
        Ok(s) if s.trim().is_empty() => "(empty)".into(),
        Ok(s) => s,
        Err(e) => format!("(cannot read: {e})"),
    }
}

/// A scratch directory, removed on drop unless `keep` was called.
struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    fn new() -> Result<TempDir> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let path = std::env::temp_dir().join(format!("weir-bench-{}-{nanos}", std::process::id()));
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir { path, keep: false })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// Leaves the directory (logs, configs) in place for a post-mortem.
    fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// /proc and rlimits
// ---------------------------------------------------------------------------------------------

/// utime + stime of a process, all threads included.
fn cpu_time(ctx: &Ctx, pid: u32) -> Result<Duration> {
    let (user, kernel) = cpu_times(ctx, pid)?;
    Ok(user + kernel)
}

/// utime and stime of a process (user, kernel), all threads included.
fn cpu_times(ctx: &Ctx, pid: u32) -> Result<(Duration, Duration)> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) is in parentheses and may contain spaces: split after it.
    let rest = stat.rfind(')').and_then(|i| stat.get(i + 1..)).with_context(|| format!("malformed {path}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
    let ticks = |i: usize| -> Result<Duration> {
        let n: u64 = fields.get(i - 3).and_then(|f| f.parse().ok()).with_context(|| format!("field {i} of {path}"))?;
        Ok(Duration::from_secs_f64(n as f64 / ctx.clk_tck))
    };
    Ok((ticks(14)?, ticks(15)?))
}

/// VmRSS of a process in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no VmRSS in {path}"))
}

/// Waits `SETTLE_QUIET`, then reads RSS every `SETTLE_INTERVAL` until two reads agree within `SETTLE_TOLERANCE_KIB`
/// (at most `SETTLE_MAX_READS` reads).
async fn settled_rss_kib(pid: u32) -> Result<u64> {
    sleep(SETTLE_QUIET).await;
    let mut prev = rss_kib(pid)?;
    for _ in 0..SETTLE_MAX_READS {
        sleep(SETTLE_INTERVAL).await;
        let cur = rss_kib(pid)?;
        if cur.abs_diff(prev) <= SETTLE_TOLERANCE_KIB {
            return Ok(cur);
        }
        prev = cur;
    }
    eprintln!(
        "weir-bench: warning: RSS of pid {pid} still moving after {:?}; using the last reading",
        SETTLE_INTERVAL * SETTLE_MAX_READS as u32
    );
    Ok(prev)
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit.
fn raise_nofile() -> Result<u64> {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `rl` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return Err(io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    let mut want = rl.rlim_max;
    if want == libc::RLIM_INFINITY {
        // An infinite soft limit is refused; the kernel's ceiling is fs.nr_open.
        want = fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(1 << 20);
    }
    if rl.rlim_cur < want {
        rl.rlim_cur = want;
        // SAFETY: `rl` is a valid rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) } != 0 {
            return Err(io::Error::last_os_error()).context("setrlimit(RLIMIT_NOFILE)");
        }
    }
    Ok(rl.rlim_cur)
}

// ---------------------------------------------------------------------------------------------
// Client side
// ---------------------------------------------------------------------------------------------

/// Client config for connections that carry little data (handshake and idle scenarios):
/// a small read buffer keeps the bench's own memory and allocation cost down.
fn light_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4096)
}

/// Connects, performs the WebSocket handshake and one probe echo.
async fn open_ws(addr: SocketAddr, config: WebSocketConfig) -> Result<Ws> {
    open_ws_at(addr, "/", config, Probe::Echo).await
}

/// Connects to `path`, performs the WebSocket handshake and the `probe`.
async fn open_ws_at(addr: SocketAddr, path: &str, config: WebSocketConfig, probe: Probe) -> Result<Ws> {
    timeout(OP_TIMEOUT, async {
        let tcp = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
        tcp.set_nodelay(true).context("setting TCP_NODELAY")?;
        let (mut ws, _response) =
            tokio_tungstenite::client_async_with_config(format!("ws://{addr}{path}"), tcp, Some(config))
                .await
                .with_context(|| format!("WebSocket handshake with {addr}{path}"))?;
        match probe {
            Probe::Echo => probe_echo(&mut ws).await?,
            Probe::Welcome => probe_welcome(&mut ws).await?,
        }
        Ok(ws)
    })
    .await
    .with_context(|| format!("opening a WebSocket to {addr}{path} timed out after {OP_TIMEOUT:?}"))?
}

/// Waits for a room's welcome event, the first message a member gets.
async fn probe_welcome(ws: &mut Ws) -> Result<()> {
    for _ in 0..16 {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                ensure!(t.as_str().contains("\"weir\":\"welcome\""), "expected the room's welcome, got {t}");
                return Ok(());
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => bail!("unexpected first message from the room: {other:?}"),
            Some(Err(e)) => return Err(e).context("reading the room's welcome"),
            None => bail!("connection closed before the room's welcome"),
        }
    }
    bail!("no welcome among the first 16 frames")
}

/// Sends `PROBE` and waits for it to come back unchanged.
async fn probe_echo(ws: &mut Ws) -> Result<()> {
    ws.send(Message::binary(PROBE.to_vec())).await.context("sending the probe")?;
    // Control frames may precede the echo; a handful is plenty.
    for _ in 0..16 {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => {
                ensure!(b.as_ref() == PROBE, "probe echo corrupted ({} bytes)", b.len());
                return Ok(());
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => bail!("unexpected reply to the probe: {other:?}"),
            Some(Err(e)) => return Err(e).context("reading the probe echo"),
            None => bail!("connection closed before the probe echo"),
        }
    }
    bail!("no probe echo among the first 16 frames")
}

/// Close handshake: send Close, then read until the peer's Close / end of stream.
async fn close_ws(mut ws: Ws) -> Result<()> {
    timeout(OP_TIMEOUT, async {
        ws.close(None).await.context("sending Close")?;
        for _ in 0..64 {
            match ws.next().await {
                None | Some(Ok(Message::Close(_))) => return Ok(()),
                Some(Ok(_)) => continue,
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => return Ok(()),
                Some(Err(e)) => return Err(e).context("waiting for the peer's Close"),
            }
        }
        bail!("no Close from the peer among 64 frames")
    })
    .await
    .context("close handshake timed out")?
}

/// A binary message of `size` bytes whose first 8 bytes are `seq` (little endian).
fn payload(seq: u64, size: usize) -> Message {
    let mut v = vec![0u8; size];
    v[..8].copy_from_slice(&seq.to_le_bytes());
    Message::Binary(v.into())
}

struct PipeOut {
    round_trips: u64,
    elapsed: Duration,
    /// CPU time of the measured process between start and end of the run.
    cpu: Duration,
}

/// A volume scenario (`bulk`, `huge`): MB/s echoed, and the measured process's CPU µs per MB
/// relayed (an echoed MB is 2 MB relayed).
async fn run_volume(ctx: &Ctx, dep: &Deployment, load: &PipeLoad, label: &str) -> Result<(f64, f64)> {
    let out = run_pipelined(ctx, dep, load, label).await?;
    let mb = out.round_trips as f64 * load.size as f64 / 1e6;
    let rate = mb / out.elapsed.as_secs_f64();
    let cpu = out.cpu.as_secs_f64() * 1e6 / (2.0 * mb);
    eprintln!(
        "[{label}] {mb:.1} MB echoed in {:.2?}: {rate:.1} MB/s, {} CPU {:.2?} = {cpu:.1} µs/MB relayed",
        out.elapsed,
        dep.measured_name(),
        out.cpu
    );
    Ok((rate, cpu))
}

async fn run_pipelined(ctx: &Ctx, dep: &Deployment, load: &PipeLoad, label: &str) -> Result<PipeOut> {
    ensure!(load.size >= 16 && load.window > 0, "bad load parameters");
    let mut conns = Vec::with_capacity(load.conns);
    for _ in 0..load.conns {
        conns.push(open_ws(dep.addr, WebSocketConfig::default()).await?);
    }
    eprintln!("[{label}] {} connections open, running", conns.len());

    let cpu0 = cpu_time(ctx, dep.pid)?;
    let t0 = Instant::now();
    let deadline = t0 + load.dur;
    let hard = deadline + DRAIN_TIMEOUT;
    let mut tasks = JoinSet::new();
    for ws in conns {
        tasks.spawn(pipeline_conn(ws, *load, deadline, hard));
    }
    let mut round_trips = 0u64;
    let mut finished = Vec::with_capacity(load.conns);
    let mut first_err: Option<anyhow::Error> = None;
    // Each task ends by `hard` at the latest, so this loop is bounded.
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok((ws, n))) => {
                round_trips += n;
                finished.push(ws);
            }
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(e) => {
                first_err.get_or_insert(anyhow!("connection task failed: {e}"));
            }
        }
    }
    let elapsed = t0.elapsed();
    let cpu1 = cpu_time(ctx, dep.pid)?;
    if let Some(e) = first_err {
        return Err(e);
    }
    ensure!(round_trips > 0, "no round trip completed");

    let closes = futures_util::future::join_all(finished.into_iter().map(close_ws)).await;
    if let Some(Err(e)) = closes.into_iter().find(Result::is_err) {
        eprintln!("[{label}] warning: close handshake after the run: {e:#}");
    }
    Ok(PipeOut { round_trips, elapsed, cpu: cpu1.saturating_sub(cpu0) })
}

/// One pipelined connection: a writer half keeps up to `window` messages in flight, a reader
/// half checks every echo (length and sequence number) and reopens the window. Returns the
/// connection and the number of round trips completed.
async fn pipeline_conn(ws: Ws, load: PipeLoad, deadline: Instant, hard: Instant) -> Result<(Ws, u64)> {
    let (mut sink, mut stream) = ws.split();
    let window = Semaphore::new(load.window);
    // Shared by the two halves below, which run in the same task; atomic only for `Send`.
    let sent = AtomicU64::new(0);
    let writer_done = Notify::new();

    let writer = async {
        let result: Result<()> = async {
            let stop = sleep_until(deadline);
            tokio::pin!(stop);
            while sent.load(Ordering::Relaxed) < load.per_conn {
                let permit = tokio::select! {
                    biased;
                    p = window.acquire() => p.context("window semaphore closed")?,
                    _ = &mut stop => break,
                };
                permit.forget();
                // Queue everything the window allows, then flush once.
                loop {
                    timeout_at(hard, sink.feed(payload(sent.load(Ordering::Relaxed), load.size)))
                        .await
                        .context("write timed out")?
                        .context("writing")?;
                    sent.fetch_add(1, Ordering::Relaxed);
                    if sent.load(Ordering::Relaxed) >= load.per_conn {
                        break;
                    }
                    match window.try_acquire() {
                        Ok(p) => p.forget(),
                        Err(_) => break,
                    }
                }
                timeout_at(hard, sink.flush()).await.context("flush timed out")?.context("flushing")?;
            }
            Ok(())
        }
        .await;
        // Stored as a permit if the reader is not waiting yet, so it cannot be missed.
        writer_done.notify_one();
        result
    };

    let reader = async {
        let mut received = 0u64;
        let mut writer_finished = false;
        let give_up = sleep_until(hard);
        tokio::pin!(give_up);
        let done = writer_done.notified();
        tokio::pin!(done);
        loop {
            if received >= load.per_conn || (writer_finished && received >= sent.load(Ordering::Relaxed)) {
                return Ok::<u64, anyhow::Error>(received);
            }
            tokio::select! {
                msg = stream.next() => match msg {
                    Some(Ok(Message::Binary(b))) => {
                        ensure!(
                            b.len() == load.size && b[..8] == received.to_le_bytes(),
                            "echo {received} corrupted or out of order ({} bytes)",
                            b.len()
                        );
                        received += 1;
                        window.add_permits(1);
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(other)) => bail!("unexpected message: {other:?}"),
                    Some(Err(e)) => return Err(e).context("reading echoes"),
                    None => bail!("connection closed by the peer after {received} echoes"),
                },
                _ = &mut done, if !writer_finished => writer_finished = true,
                _ = &mut give_up => bail!(
                    "timed out waiting for echoes ({} of {} outstanding)",
                    sent.load(Ordering::Relaxed) - received,
                    sent.load(Ordering::Relaxed)
                ),
            }
        }
    };

    let ((), received) = tokio::try_join!(writer, reader)?;
    let ws = sink.reunite(stream).map_err(|_| anyhow!("cannot reunite the WebSocket halves"))?;
    Ok((ws, received))
}

/// `latency`: `lat_conns` connections each send a 64-byte message every `1 / lat_rate` s for
/// `lat_dur` (their schedules spread over one period), stamped with the time it was *scheduled*
/// to go (so a sender that falls behind adds its delay to the figure instead of hiding it); every
/// echo's round trip is kept. Returns p50 and p99 in µs and the number of round trips.
async fn run_latency(dep: &Deployment, p: &Params) -> Result<(f64, f64, usize)> {
    let mut conns = Vec::with_capacity(p.lat_conns);
    for _ in 0..p.lat_conns {
        conns.push(open_ws(dep.addr, light_config()).await?);
    }
    let start = Instant::now() + Duration::from_millis(100);
    let mut tasks = JoinSet::new();
    for (i, ws) in conns.into_iter().enumerate() {
        tasks.spawn(latency_conn(ws, *p, start, i));
    }
    let mut all = Vec::new();
    while let Some(done) = tasks.join_next().await {
        all.extend(done.context("latency task")??);
    }
    ensure!(!all.is_empty(), "no round trip measured");
    all.sort_unstable();
    let at = |q: f64| all.get(((all.len() - 1) as f64 * q).round() as usize).copied().unwrap_or(0) as f64 / 1e3;
    Ok((at(0.5), at(0.99), all.len()))
}

/// One `latency` connection (number `i`): round trips in ns.
async fn latency_conn(ws: Ws, p: Params, start: Instant, i: usize) -> Result<Vec<u64>> {
    let (mut sink, mut stream) = ws.split();
    let period = Duration::from_secs_f64(1.0 / f64::from(p.lat_rate));
    let first = start + period.mul_f64(i as f64 / p.lat_conns as f64);
    let n = (p.lat_dur.as_secs_f64() * f64::from(p.lat_rate)) as u64;
    let hard = start + p.lat_dur + OP_TIMEOUT * 2;
    let writer = async {
        for k in 0..n {
            let due = first + period * k as u32;
            sleep_until(due).await;
            let mut m = vec![0u8; 64];
            m[..8].copy_from_slice(&k.to_le_bytes());
            let scheduled = due.saturating_duration_since(start).as_nanos() as u64;
            m[8..16].copy_from_slice(&scheduled.to_le_bytes());
            timeout_at(hard, sink.send(Message::Binary(m.into())))
                .await
                .context("write timed out")?
                .context("writing")?;
        }
        Ok::<(), anyhow::Error>(())
    };
    let reader = async {
        let mut rtts = Vec::with_capacity(n as usize);
        while (rtts.len() as u64) < n {
            match timeout_at(hard, stream.next()).await.context("timed out waiting for echoes")? {
                Some(Ok(Message::Binary(b))) if b.len() == 64 => {
                    let scheduled = u64::from_le_bytes(b[8..16].try_into().unwrap_or_default());
                    let now = Instant::now().saturating_duration_since(start).as_nanos() as u64;
                    rtts.push(now.saturating_sub(scheduled));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(other)) => bail!("unexpected message: {other:?}"),
                Some(Err(e)) => return Err(e).context("reading echoes"),
                None => bail!("connection closed by the peer after {} echoes", rtts.len()),
            }
        }
        Ok(rtts)
    };
    let ((), rtts) = tokio::try_join!(writer, reader)?;
    let ws = sink.reunite(stream).map_err(|_| anyhow!("cannot reunite the WebSocket halves"))?;
    close_ws(ws).await?;
    Ok(rtts)
}

async fn run_handshakes(dep: &Deployment, p: &Params) -> Result<(u64, Duration)> {
    let claimed = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let deadline = t0 + p.hs_dur;
    let mut tasks = JoinSet::new();
    for _ in 0..p.hs_loops {
        let claimed = Arc::clone(&claimed);
        let (addr, max) = (dep.addr, p.hs_max);
        tasks.spawn(async move {
            let mut done = 0u64;
            while Instant::now() < deadline && claimed.fetch_add(1, Ordering::Relaxed) < max {
                let ws = open_ws(addr, light_config()).await?;
                close_ws(ws).await.context("close handshake")?;
                done += 1;
            }
            Ok::<u64, anyhow::Error>(done)
        });
    }
    let mut total = 0;
    let mut first_err = None;
    // Each loop stops at `deadline` plus at most 2 × OP_TIMEOUT for its last iteration.
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(n)) => total += n,
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(e) => {
                first_err.get_or_insert(anyhow!("handshake task failed: {e}"));
            }
        }
    }
    let elapsed = t0.elapsed();
    if let Some(e) = first_err {
        return Err(e.context(format!("after {total} successful handshakes")));
    }
    ensure!(total > 0, "no handshake completed");
    Ok((total, elapsed))
}

/// The idle rows: RSS KiB per connection at N and between N/10 and N, and (from weir's
/// `weir_heap_allocated_bytes`, when it exports it) heap bytes per connection between N/10 and N.
async fn run_idle(dep: &Deployment, p: &Params, kind: IdleKind, label: &str) -> Result<Vec<(Row, f64)>> {
    let n = p.idle_count(kind);
    let n1 = n / 10;
    // weir's heap figures are sampled every 500 ms, as settled RSS is read: read after it.
    let heap = |admin: Option<SocketAddr>| async move {
        let Some(admin) = admin else { return Ok::<_, anyhow::Error>(None) };
        let read = |name| scrape_sum(admin, name);
        let [allocated, active, resident] = [
            read("weir_heap_allocated_bytes").await?,
            read("weir_heap_active_bytes").await?,
            read("weir_heap_resident_bytes").await?,
        ];
        Ok((allocated > 0.0).then_some([allocated, active, resident]))
    };
    let rss0 = settled_rss_kib(dep.pid).await?;
    let mut conns: Vec<Ws> = Vec::with_capacity(n);
    open_idle(dep.addr, kind, 0..n1, p.idle_concurrency, label, |ws| conns.push(ws)).await?;
    let rss1 = settled_rss_kib(dep.pid).await?;
    let heap1 = heap(dep.admin).await?;
    open_idle(dep.addr, kind, n1..n, p.idle_concurrency, label, |ws| conns.push(ws)).await?;
    let rss2 = settled_rss_kib(dep.pid).await?;
    let heap2 = heap(dep.admin).await?;
    // The guards are on: none may have closed a connection while it was measured.
    if let (IdleKind::Relay, Some(admin)) = (kind, dep.admin) {
        let active = scrape_sum(admin, "weir_connections_active").await?;
        ensure!(
            active == n as f64,
            "weir has {active} connections active after opening {n}: it closed some while they were \
             measured (a guard?)"
        );
    }

    let per = |rss: u64, base: u64, count: usize| (rss as f64 - base as f64) / count as f64;
    let at_n1 = per(rss1, rss0, n1);
    let at_n = per(rss2, rss0, n);
    let slope = per(rss2, rss1, n - n1);
    eprintln!(
        "[{label}] {} RSS: {rss0} KiB before, {rss1} KiB at {n1} ({at_n1:.2} KiB/conn), \
         {rss2} KiB at {n} ({at_n:.2} KiB/conn), slope {slope:.2} KiB/conn",
        dep.measured_name()
    );
    let mut rows = vec![(Row::IdleKib(kind), at_n), (Row::IdleSlope(kind), slope)];
    if let (Some(h1), Some(h2)) = (heap1, heap2) {
        let [allocated, active, resident] = [0, 1, 2].map(|i| (h2[i] - h1[i]) / (n - n1) as f64);
        eprintln!(
            "[{label}] weir heap N/10→N, bytes per connection: allocated {allocated:.0}, active \
             {active:.0}, resident {resident:.0} (at N: {:.1} / {:.1} / {:.1} MB)",
            h2[0] / 1e6,
            h2[1] / 1e6,
            h2[2] / 1e6
        );
        rows.push((Row::IdleHeap(kind), allocated));
    }
    // The connections are dropped here (TCP FIN); the processes are killed right after.
    drop(conns);
    Ok(rows)
}

/// Opens the idle connections of `kind` numbered `range`, at most `concurrency` handshakes at a
/// time, handing each to `keep` as soon as it is open.
async fn open_idle(
    addr: SocketAddr,
    kind: IdleKind,
    range: std::ops::Range<usize>,
    concurrency: usize,
    label: &str,
    mut keep: impl FnMut(Ws),
) -> Result<()> {
    let deadline = Instant::now() + IDLE_OPEN_TIMEOUT;
    let target = range.end;
    let mut open = range.start;
    let mut opening = futures_util::stream::iter(range)
        .map(|i| async move { open_ws_at(addr, &kind.path(i), light_config(), kind.probe()).await })
        .buffer_unordered(concurrency);
    while let Some(opened) = timeout_at(deadline, opening.next())
        .await
        .with_context(|| format!("opening idle connections timed out after {IDLE_OPEN_TIMEOUT:?}"))?
    {
        keep(opened.with_context(|| format!("opening idle connection {}", open + 1))?);
        open += 1;
        if open.is_multiple_of(2000) || open == target {
            eprintln!("[{label}] {open} idle connections open");
        }
    }
    Ok(())
}

/// What the clients of the `keepalive` scenario saw, counted by their tasks.
#[derive(Default)]
struct PingStats {
    /// Pings received (each answered with a pong by tungstenite on the task's next read).
    pings: AtomicU64,
    /// Connections that ended (close frame, end of stream or error).
    ended: AtomicU64,
    /// Data messages received (none expected).
    data: AtomicU64,
}

/// One keepalive client: reads until the connection ends, so every ping is answered.
async fn answer_pings(mut ws: Ws, stats: Arc<PingStats>) {
    loop {
        match ws.next().await {
            Some(Ok(Message::Ping(_))) => {
                stats.pings.fetch_add(1, Ordering::Relaxed);
            }
            Some(Ok(Message::Pong(_) | Message::Frame(_))) => {}
            Some(Ok(Message::Text(_) | Message::Binary(_))) => {
                stats.data.fetch_add(1, Ordering::Relaxed);
            }
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                stats.ended.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// One weir run of the `keepalive` scenario.
struct KeepaliveOut {
    /// weir's CPU time per second of the window, in ms.
    cpu_ms_per_s: f64,
    /// Pings the clients received during the window.
    pings: u64,
    /// `weir_peer_rtt_seconds_count` increase over the window: pongs weir matched.
    pongs: f64,
    /// The same, over the whole run (read at its end).
    pongs_total: f64,
    elapsed: Duration,
}

/// The `keepalive` scenario: a weir without pings, then one pinging every connection every
/// second; returns its rows.
async fn run_keepalive(ctx: &Ctx, target: Target, label: &str) -> Result<Vec<(Row, f64)>> {
    let p = &ctx.params;
    let off = keepalive_run(ctx, target, KEEPALIVE_OFF, &format!("{label} off")).await?;
    ensure!(
        off.pings == 0 && off.pongs_total == 0.0,
        "weir with `keepalive: {KEEPALIVE_OFF}` sent pings ({} seen by the clients in the window, \
         {} pongs matched)",
        off.pings,
        off.pongs_total
    );
    let on = keepalive_run(ctx, target, KEEPALIVE_ON, &format!("{label} on")).await?;
    let n = p.idle_n as f64;
    let expected = n * on.elapsed.as_secs_f64() / KEEPALIVE_INTERVAL.as_secs_f64();
    ensure!(
        on.pongs >= expected / 2.0,
        "weir matched only {} pongs in the {:.1?} window, far below the ≈ {expected:.0} pings it \
         should have sent (N × window / interval); the clients received {} pings: pings are {}",
        on.pongs,
        on.elapsed,
        on.pings,
        if (on.pings as f64) < expected / 2.0 { "not sent" } else { "answered but the pongs are not matched" }
    );
    let ping_rate = on.pings as f64 / on.elapsed.as_secs_f64();
    ensure!(ping_rate > 0.0, "no ping in the window");
    // Not a failure (the per-ping cost is still measured), but the figures are not those of one
    // ping per interval: said loudly here and in the report.
    let per_conn = ping_rate / n;
    if per_conn > KEEPALIVE_RATE_SLACK / KEEPALIVE_INTERVAL.as_secs_f64() {
        eprintln!(
            "[{label}] WARNING: weir sent {per_conn:.1} pings/s per connection with `keepalive: {KEEPALIVE_ON}` \
             (expected ≈ {:.1}): it pings answered connections again before the interval has passed",
            1.0 / KEEPALIVE_INTERVAL.as_secs_f64()
        );
    }
    // ms/s difference over pings/s = ms per ping; × 1000 = µs.
    let per_ping = (on.cpu_ms_per_s - off.cpu_ms_per_s) / ping_rate * 1e3;
    eprintln!(
        "[{label}] weir CPU {:.2} ms/s without pings, {:.2} ms/s with {ping_rate:.0} pings/s: {per_ping:.2} µs per \
         ping; {} pings received, {} pongs matched in the window ({} over the whole run)",
        off.cpu_ms_per_s, on.cpu_ms_per_s, on.pings, on.pongs, on.pongs_total
    );
    Ok(vec![
        (Row::KeepaliveCpuOff, off.cpu_ms_per_s),
        (Row::KeepaliveCpuOn, on.cpu_ms_per_s),
        (Row::KeepalivePerPing, per_ping),
        (Row::KeepalivePingRate, per_conn),
        (Row::KeepalivePings, on.pings as f64),
        (Row::KeepalivePongs, on.pongs),
    ])
}

/// Starts weir with `keepalive`, opens `idle_n` relayed connections whose clients answer pings,
/// waits `KEEPALIVE_WARMUP` and measures weir's CPU over the window.
async fn keepalive_run(ctx: &Ctx, target: Target, keepalive: &str, label: &str) -> Result<KeepaliveOut> {
    let p = &ctx.params;
    let n = p.idle_n;
    let dep = deploy(ctx, target, false, keepalive).await?;
    let admin = dep.admin.context("the keepalive scenario needs weir's admin listener")?;
    eprintln!(
        "[{label}] ready on {} (measuring {} pid {}), keepalive: {keepalive}",
        dep.addr,
        dep.measured_name(),
        dep.pid
    );
    let stats = Arc::new(PingStats::default());
    // Dropping the set (on return or error) aborts the clients, closing their sockets.
    let mut clients = JoinSet::new();
    // Each client is polled from the moment it is open, so pings during the opening are answered.
    open_idle(dep.addr, IdleKind::Relay, 0..n, p.idle_concurrency, label, |ws| {
        clients.spawn(answer_pings(ws, Arc::clone(&stats)));
    })
    .await?;
    sleep(KEEPALIVE_WARMUP).await;

    let pongs0 = scrape_sum(admin, "weir_peer_rtt_seconds_count").await?;
    let pings0 = stats.pings.load(Ordering::Relaxed);
    let cpu0 = cpu_time(ctx, dep.pid)?;
    let t0 = Instant::now();
    sleep(p.keepalive_window).await;
    let cpu1 = cpu_time(ctx, dep.pid)?;
    let elapsed = t0.elapsed();
    let pings1 = stats.pings.load(Ordering::Relaxed);
    let pongs1 = scrape_sum(admin, "weir_peer_rtt_seconds_count").await?;
    let active = scrape_sum(admin, "weir_connections_active").await?;

    let ended = stats.ended.load(Ordering::Relaxed);
    let data = stats.data.load(Ordering::Relaxed);
    ensure!(
        ended == 0 && active == n as f64,
        "{ended} of {n} connections ended during the run and weir has {active} active: a guard closed \
         them (dead peer?); see weir's log"
    );
    ensure!(data == 0, "the idle clients received {data} data messages");
    let cpu = cpu1.saturating_sub(cpu0);
    let out = KeepaliveOut {
        cpu_ms_per_s: cpu.as_secs_f64() * 1e3 / elapsed.as_secs_f64(),
        pings: pings1 - pings0,
        pongs: pongs1 - pongs0,
        pongs_total: pongs1,
        elapsed,
    };
    eprintln!(
        "[{label}] weir CPU {cpu:.2?} in {elapsed:.2?} = {:.2} ms/s; {} pings received, {} pongs matched \
         ({} since start)",
        out.cpu_ms_per_s, out.pings, out.pongs, out.pongs_total
    );
    clients.shutdown().await;
    drop(dep);
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Helper processes: echo server and floor relay
// ---------------------------------------------------------------------------------------------

/// Runs an accept loop on a one-worker multi-thread runtime, handling each connection with
/// `handle`. Writes the bound port to `port_file` and then runs until killed.
fn serve<F, Fut>(listen: SocketAddr, port_file: &Path, name: &str, handle: F) -> Result<()>
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    ensure!(listen.ip().is_loopback(), "refusing to listen on non-loopback {listen}");
    raise_nofile().context("raising RLIMIT_NOFILE")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("building the Tokio runtime")?;
    let name = name.to_string();
    rt.block_on(async move {
        let listener = TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
        let port = listener.local_addr().context("reading the bound address")?.port();
        write_port_file(port_file, port)?;
        // The accept loop runs as a task so that all work happens on the one worker thread.
        // It serves until the bench kills this process.
        let accept = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((tcp, _)) => {
                        tokio::spawn(handle(tcp));
                    }
                    Err(e) => {
                        eprintln!("weir-bench {name}: accept: {e}");
                        sleep(ACCEPT_BACKOFF).await;
                    }
                }
            }
        });
        accept.await.context("accept loop failed")
    })
}

async fn echo_conn(tcp: TcpStream) {
    let _ = tcp.set_nodelay(true);
    let ws = match timeout(OP_TIMEOUT, tokio_tungstenite::accept_async(tcp)).await {
        Ok(Ok(ws)) => ws,
        _ => return,
    };
    // Errors here are resets and closes by the client: nothing to report.
    let _ = echo_loop(ws).await;
}

/// Echoes Text and Binary messages until the peer closes. Messages already buffered are
/// echoed before a single flush, so a pipelining client gets batched writes; Close and Ping
/// are answered by tungstenite on the next flush or read.
async fn echo_loop(mut ws: Ws) -> Result<(), WsError> {
    while let Some(msg) = ws.next().await {
        echo_one(&mut ws, msg?).await?;
        for _ in 0..ECHO_BATCH_MAX {
            match ws.next().now_or_never() {
                Some(Some(msg)) => echo_one(&mut ws, msg?).await?,
                Some(None) => return Ok(()),
                None => break,
            }
        }
        ws.flush().await?;
    }
    Ok(())
}

async fn echo_one(ws: &mut Ws, msg: Message) -> Result<(), WsError> {
    match msg {
        Message::Text(_) | Message::Binary(_) => ws.feed(msg).await,
        _ => Ok(()),
    }
}

/// The floor's copy buffer per direction, bytes.
const FLOOR_BUF: usize = 64 * 1024;

async fn floor_conn(client: TcpStream, upstream: SocketAddr) {
    // Failures are the client going away or the echo server being killed: nothing to report.
    let _ = floor_relay(client, upstream).await;
}

async fn floor_relay(mut client: TcpStream, upstream: SocketAddr) -> io::Result<()> {
    client.set_nodelay(true)?;
    let mut up = timeout(OP_TIMEOUT, TcpStream::connect(upstream))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "upstream connect timed out"))??;
    up.set_nodelay(true)?;
    // 64 KiB each way, as weir's scratch read and NGINX's and HAProxy's buffers in this bench
    // (issue 14 defines the floor so; tokio's default is 8 KiB).
    tokio::io::copy_bidirectional_with_sizes(&mut client, &mut up, FLOOR_BUF, FLOOR_BUF).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Row {
    SmallRate,
    SmallCpu,
    BulkRate,
    BulkCpu,
    HugeRate,
    HugeCpu,
    Handshakes,
    HandshakeCpu,
    LatencyP50,
    LatencyP99,
    IdleKib(IdleKind),
    IdleSlope(IdleKind),
    /// weir's heap (jemalloc `stats.allocated`) per connection between N/10 and N, bytes.
    IdleHeap(IdleKind),
    KeepaliveCpuOff,
    KeepaliveCpuOn,
    KeepalivePerPing,
    KeepalivePingRate,
    KeepalivePings,
    KeepalivePongs,
}

impl Row {
    fn scenario(self) -> &'static str {
        match self {
            Row::SmallRate | Row::SmallCpu => "small",
            Row::BulkRate | Row::BulkCpu => "bulk",
            Row::HugeRate | Row::HugeCpu => "huge",
            Row::Handshakes | Row::HandshakeCpu => "handshake",
            Row::LatencyP50 | Row::LatencyP99 => "latency",
            Row::IdleKib(kind) | Row::IdleSlope(kind) | Row::IdleHeap(kind) => match kind {
                IdleKind::Relay => "idle",
                IdleKind::EchoObject => "idle-echo",
                IdleKind::Room => "idle-room",
                IdleKind::EchoBackend => "idle-builtin",
            },
            Row::KeepaliveCpuOff
            | Row::KeepaliveCpuOn
            | Row::KeepalivePerPing
            | Row::KeepalivePingRate
            | Row::KeepalivePings
            | Row::KeepalivePongs => "keepalive",
        }
    }

    fn metric(self, p: &Params) -> String {
        match self {
            Row::SmallRate => "msgs/s".into(),
            Row::SmallCpu => "CPU µs/msg".into(),
            Row::BulkRate | Row::HugeRate => "MB/s".into(),
            Row::BulkCpu | Row::HugeCpu => "CPU µs/MB relayed".into(),
            Row::Handshakes => format!("handshakes/s, {} concurrent", p.hs_loops),
            Row::HandshakeCpu => "CPU µs/handshake cycle".into(),
            Row::LatencyP50 => format!("round trip p50 µs ({} msgs/s)", p.lat_conns as u32 * p.lat_rate),
            Row::LatencyP99 => format!("round trip p99 µs ({} msgs/s)", p.lat_conns as u32 * p.lat_rate),
            Row::IdleKib(_) => "RSS KiB/conn".into(),
            Row::IdleSlope(_) => "RSS KiB/conn slope N/10→N".into(),
            Row::IdleHeap(_) => "heap B/conn N/10→N (weir_heap_allocated_bytes)".into(),
            Row::KeepaliveCpuOff => format!("CPU ms/s ({} conns, no pings)", p.idle_n),
            Row::KeepaliveCpuOn => format!("CPU ms/s ({} conns, interval 1s: 1 ping/s each)", p.idle_n),
            Row::KeepalivePerPing => "CPU µs per ping (difference / pings)".into(),
            Row::KeepalivePingRate => "pings/s per connection (≈ 1 expected)".into(),
            Row::KeepalivePings => format!("pings sent in the {:?} window", p.keepalive_window),
            Row::KeepalivePongs => "pongs matched in the window (weir_peer_rtt_seconds_count)".into(),
        }
    }

    /// The better of two measurements of this row: the higher rate, else the lower figure (CPU,
    /// memory, latency); keepalive's informational counts keep the higher.
    fn better(self, a: f64, b: f64) -> f64 {
        let higher = matches!(
            self,
            Row::SmallRate
                | Row::BulkRate
                | Row::HugeRate
                | Row::Handshakes
                | Row::KeepalivePingRate
                | Row::KeepalivePings
                | Row::KeepalivePongs
        );
        if higher == (b > a) {
            b
        } else {
            a
        }
    }

    /// Whether the figure is read from the measured process (echo server for `direct`).
    fn per_process(self) -> bool {
        matches!(
            self,
            Row::SmallCpu
                | Row::BulkCpu
                | Row::HugeCpu
                | Row::HandshakeCpu
                | Row::IdleKib(_)
                | Row::IdleSlope(_)
                | Row::IdleHeap(_)
        )
    }

    fn format(self, v: f64) -> String {
        match self {
            Row::SmallRate | Row::Handshakes | Row::KeepalivePings | Row::KeepalivePongs => format!("{v:.0}"),
            Row::LatencyP50 | Row::LatencyP99 | Row::IdleHeap(_) => format!("{v:.0}"),
            Row::SmallCpu => format!("{v:.3}"),
            Row::IdleKib(_)
            | Row::IdleSlope(_)
            | Row::KeepaliveCpuOff
            | Row::KeepaliveCpuOn
            | Row::KeepalivePerPing
            | Row::KeepalivePingRate => {
                format!("{v:.2}")
            }
            Row::BulkRate | Row::BulkCpu | Row::HugeRate | Row::HugeCpu | Row::HandshakeCpu => format!("{v:.1}"),
        }
    }
}

fn report(ctx: &Ctx, targets: &[Target], scenarios: &[Scenario], results: &BTreeMap<(Row, Target), Cell>) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let nproc = std::thread::available_parallelism().map(|n| n.get().to_string()).unwrap_or_else(|_| "?".into());
    let kernel =
        fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_else(|_| "?".into());
    let weir = match &ctx.weir {
        Some(p) => format!("`{}`", p.display()),
        None => "not measured".into(),
    };
    // Writing to a String cannot fail.
    let _ = writeln!(out, "weir-bench · {} · nproc {nproc} · kernel {kernel} · weir: {weir}", utc_now());
    let _ = writeln!(out);
    for &s in scenarios {
        let _ = writeln!(out, "- {}: {}", s.name(), ctx.params.describe(s));
    }
    if ctx.runs > 1 {
        let _ = writeln!(
            out,
            "- each cell: the best of {} runs, the targets in turn within each (reversed in every second)",
            ctx.runs
        );
    }
    let _ = writeln!(out);
    // Columns: direct, weir, floor, weir / floor, then each other target measured with weir's
    // ratio to it (nginx, haproxy, baseline).
    let extra: Vec<Target> =
        [Target::Nginx, Target::Haproxy, Target::Baseline].into_iter().filter(|t| targets.contains(t)).collect();
    let _ = write!(out, "| scenario | metric | direct | weir | floor | weir / floor |");
    for t in &extra {
        let _ = write!(out, " {} | weir / {} |", t.name(), t.name());
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|{}", "---:|---:|".repeat(extra.len()));
    let value = |row: Row, t: Target| match results.get(&(row, t)) {
        Some(Ok(v)) => Some(*v),
        _ => None,
    };
    for &s in scenarios {
        for row in s.rows() {
            let cell = |t: Target| -> String {
                if !targets.contains(&t) {
                    return "-".into();
                }
                match results.get(&(row, t)) {
                    Some(Ok(v)) if t == Target::Direct && row.per_process() => {
                        format!("{} †", row.format(*v))
                    }
                    Some(Ok(v)) => row.format(*v),
                    Some(Err(_)) => "error".into(),
                    None => "-".into(),
                }
            };
            let ratio = |t: Target, digits: usize| match (value(row, Target::Weir), value(row, t)) {
                (Some(w), Some(b)) if b != 0.0 => format!("{:.digits$}", w / b),
                _ => "-".into(),
            };
            let _ = write!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                row.scenario(),
                row.metric(&ctx.params),
                cell(Target::Direct),
                cell(Target::Weir),
                cell(Target::Floor),
                ratio(Target::Floor, 2)
            );
            for &t in &extra {
                let digits = if t == Target::Baseline { 3 } else { 2 };
                let _ = write!(out, " {} | {} |", cell(t), ratio(t, digits));
            }
            let _ = writeln!(out);
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "† direct has no relay: the figure is the echo server's. CPU and RSS are otherwise the \
         relay process's (weir, floor, nginx or haproxy). small msgs/s counts round trips; for CPU a round trip \
         is 2 messages relayed and an echoed MB is 2 MB relayed. Every weir runs with every \
         guard on (`limits:`, none reached); keepalive is measured on weir only."
    );
    let _ = writeln!(out);

    let _ = writeln!(out, "Targets:");
    let verdict = |ok: bool| if ok { "MET" } else { "NOT MET" };
    let cpu = match (value(Row::SmallCpu, Target::Weir), value(Row::SmallCpu, Target::Floor)) {
        (Some(w), Some(f)) if f > 0.0 => {
            format!("weir {w:.3} vs floor {f:.3} µs/msg = {:.2}× — {}", w / f, verdict(w <= 1.3 * f))
        }
        _ => "not measured (needs small on weir and floor)".into(),
    };
    let _ = writeln!(out, "- CPU per small message ≤ 1.3× floor: {cpu}");
    let cpu_guarded = match (value(Row::SmallCpu, Target::Weir), value(Row::SmallCpu, Target::Floor)) {
        (Some(w), Some(f)) if f > 0.0 => {
            format!("weir {w:.3} vs floor {f:.3} µs/msg = {:.2}× — {}", w / f, verdict(w <= 1.15 * f))
        }
        _ => "not measured (needs small on weir and floor)".into(),
    };
    let _ = writeln!(out, "- CPU per small message ≤ 1.15× floor, guards on (issue 10): {cpu_guarded}");
    let bulk = match (value(Row::BulkRate, Target::Weir), value(Row::BulkRate, Target::Floor)) {
        (Some(w), Some(f)) if f > 0.0 => {
            format!("weir {w:.1} vs floor {f:.1} MB/s = {:.2}× — {}", w / f, verdict(w >= 0.8 * f))
        }
        _ => "not measured (needs bulk on weir and floor)".into(),
    };
    let _ = writeln!(out, "- bulk MB/s ≥ 0.8× floor: {bulk}");
    let huge_cpu = match (value(Row::HugeCpu, Target::Weir), value(Row::HugeCpu, Target::Floor)) {
        (Some(w), Some(f)) if f > 0.0 => {
            format!("weir {w:.1} vs floor {f:.1} µs/MB = {:.2}× — {}", w / f, verdict(w <= 0.6 * f))
        }
        _ => "not measured (needs huge on weir and floor)".into(),
    };
    let _ = writeln!(out, "- 1 MiB messages, CPU per MB ≤ 0.6× floor (issue 14, splice): {huge_cpu}");
    let huge_rate = match (value(Row::HugeRate, Target::Weir), value(Row::HugeRate, Target::Floor)) {
        (Some(w), Some(f)) if f > 0.0 => {
            format!("weir {w:.1} vs floor {f:.1} MB/s = {:.2}× — {}", w / f, verdict(w >= f))
        }
        _ => "not measured (needs huge on weir and floor)".into(),
    };
    let _ = writeln!(out, "- 1 MiB messages, MB/s ≥ floor (issue 14, splice): {huge_rate}");
    if let (Some(w), Some(b)) = (value(Row::BulkCpu, Target::Weir), value(Row::BulkCpu, Target::Baseline)) {
        let line = format!("weir {w:.1} vs baseline {b:.1} µs/MB = {:.2}× — {}", w / b, verdict(w <= 1.05 * b));
        let _ = writeln!(out, "- bulk (64 KiB) CPU not worse than the baseline (±5%, issue 14): {line}");
    }
    let hs_cpu = |t: Target| value(Row::HandshakeCpu, t);
    let hs_rate = |t: Target| value(Row::Handshakes, t);
    let handshake_cpu = match (hs_cpu(Target::Weir), hs_cpu(Target::Floor)) {
        (Some(w), Some(f)) if f > 0.0 => {
            format!("weir {w:.1} vs floor {f:.1} µs = {:.2}× — {}", w / f, verdict(w <= 0.75 * f))
        }
        _ => "not measured (needs handshake on weir and floor)".into(),
    };
    let _ = writeln!(out, "- handshake cycle CPU ≤ 0.75× floor (issue 14): {handshake_cpu}");
    if targets.contains(&Target::Nginx) {
        let cpu = match (hs_cpu(Target::Weir), hs_cpu(Target::Nginx)) {
            (Some(w), Some(n)) if n > 0.0 => {
                format!("weir {w:.1} vs nginx {n:.1} µs = {:.2}× — {}", w / n, verdict(w <= n))
            }
            _ => "not measured (needs handshake on weir and nginx)".into(),
        };
        let _ = writeln!(out, "- handshake cycle CPU ≤ nginx (issue 14): {cpu}");
        let rate = match (hs_rate(Target::Weir), hs_rate(Target::Nginx)) {
            (Some(w), Some(n)) if n > 0.0 => {
                format!("weir {w:.0} vs nginx {n:.0}/s = {:.2}× — {}", w / n, verdict(w >= n))
            }
            _ => "not measured (needs handshake on weir and nginx)".into(),
        };
        let _ = writeln!(out, "- handshakes/s ≥ nginx (issue 14): {rate}");
    }
    let p99 = |t: Target| value(Row::LatencyP99, t);
    if let (Some(d), Some(w)) = (p99(Target::Direct), p99(Target::Weir)) {
        let added = |x: f64| x - d;
        let line = match p99(Target::Haproxy) {
            Some(h) => format!(
                "weir +{:.0} µs vs haproxy +{:.0} µs over direct's {d:.0} — {}",
                added(w),
                added(h),
                verdict(added(w) <= added(h))
            ),
            None => format!("weir +{:.0} µs over direct's {d:.0} (haproxy not measured)", added(w)),
        };
        let _ = writeln!(out, "- added p99 ≤ haproxy's (issue 14): {line}");
    }
    let relay = IdleKind::Relay;
    let idle = match (value(Row::IdleKib(relay), Target::Weir), value(Row::IdleSlope(relay), Target::Weir)) {
        (Some(k), slope) => format!(
            "weir {k:.2} KiB/conn (slope {}) — {}",
            slope.map(|s| format!("{s:.2}")).unwrap_or_else(|| "-".into()),
            verdict(k <= 16.0)
        ),
        _ => "not measured (needs idle on weir)".into(),
    };
    let _ = writeln!(out, "- ≤ 16 KiB RSS per idle connection (weir): {idle}");
    let n = ctx.params.idle_n;
    let idle_guarded = match value(Row::IdleKib(relay), Target::Weir) {
        Some(k) if n >= IDLE_TARGET_N => format!("weir {k:.2} KiB/conn at N = {n} — {}", verdict(k <= 8.0)),
        Some(k) => format!("weir {k:.2} KiB/conn at N = {n} — not judged (the target is at N = {IDLE_TARGET_N})"),
        None => "not measured (needs idle on weir)".into(),
    };
    let _ = writeln!(
        out,
        "- ≤ 8 KiB RSS per idle connection at {IDLE_TARGET_N} connections, guards on (weir, issue 10): {idle_guarded}"
    );
    let keepalive = [
        Row::KeepaliveCpuOff,
        Row::KeepaliveCpuOn,
        Row::KeepalivePerPing,
        Row::KeepalivePingRate,
        Row::KeepalivePings,
        Row::KeepalivePongs,
    ]
    .map(|row| value(row, Target::Weir));
    if let [Some(off), Some(on), Some(per), Some(rate), Some(pings), Some(pongs)] = keepalive {
        let _ = writeln!(
            out,
            "- keepalive CPU ms/s ({n} conns, 1 ping/s each; no target): weir {off:.2} without pings, {on:.2} \
             with = {per:.2} µs per ping ({pings:.0} pings sent, {pongs:.0} pongs matched in the {:?} window)",
            ctx.params.keepalive_window
        );
        let expected = 1.0 / KEEPALIVE_INTERVAL.as_secs_f64();
        if rate > KEEPALIVE_RATE_SLACK * expected {
            let _ = writeln!(
                out,
                "- WARNING: weir sent {rate:.1} pings/s per connection, not ≈ {expected:.1} (`keepalive: \
                 {KEEPALIVE_ON}`): answered connections are pinged again before the interval has passed, \
                 so the ms/s with pings is not that of 1 ping/s each (the µs per ping is still per ping sent)"
            );
        }
    }
    let builtins: Vec<String> = [IdleKind::EchoObject, IdleKind::Room, IdleKind::EchoBackend]
        .into_iter()
        .filter_map(|kind| {
            let k = value(Row::IdleKib(kind), Target::Weir)?;
            Some(format!("{} {k:.2} KiB/conn", Row::IdleKib(kind).scenario()))
        })
        .collect();
    if !builtins.is_empty() {
        let _ = writeln!(out, "- idle cost of weir's built-in endpoints (no target): {}", builtins.join(", "));
    }
    out
}

/// The `--runs` summary: per row and peer (baseline, floor, NGINX, HAProxy, whichever ran), the
/// median of the repetitions' `weir / peer` ratios, with their range and count.
fn paired_report(p: &Params, runs: u32, paired: &BTreeMap<(Row, Target), Vec<f64>>) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if paired.is_empty() {
        return out;
    }
    let _ = writeln!(out, "\nweir / peer within each of {runs} runs (median, range, runs with both measured):\n");
    let _ = writeln!(out, "| scenario | metric | peer | median | lowest | highest | runs |");
    let _ = writeln!(out, "|---|---|---|---:|---:|---:|---:|");
    for ((row, peer), ratios) in paired {
        let mut sorted = ratios.clone();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {median:.3} | {:.3} | {:.3} | {n} |",
            row.scenario(),
            row.metric(p),
            peer.name(),
            sorted[0],
            sorted[n - 1]
        );
    }
    out
}

fn join<'a>(items: impl Iterator<Item = &'a str>) -> String {
    items.collect::<Vec<_>>().join(",")
}

/// Current time as `YYYY-MM-DD HH:MM:SS UTC`.
fn utc_now() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = weir::metering::quota::civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}
