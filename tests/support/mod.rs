//! Shared test helpers: start the real `weir` binary on free loopback ports with a generated
//! config, real backends (tokio-tungstenite and raw TCP), raw HTTP, metric and usage-record
//! readers. Every wait is a poll with a deadline; nothing sleeps as synchronisation.

#![allow(dead_code)]

pub mod backends;
pub mod browser;
pub mod etcd;
pub mod hosts;
pub mod postgres;
pub mod slow_reader;
pub mod tls;
pub mod wire;

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use weir::admin::owner::{listener_owner, Owner};
use weir::billing::UsageRecord;

/// A tokio-tungstenite client connection through weir.
pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Longest time any single wait in the tests may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

static ISSUED: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A loopback port that was free a moment ago and was never handed out before in this process.
pub fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("bind :0");
        let mut issued = ISSUED.lock().unwrap_or_else(|p| p.into_inner());
        if issued.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

/// Poll `f` until it returns `Some`, or panic with `what` after `DEADLINE`.
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    let mut delay = Duration::from_millis(5);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(delay).await; // poll interval, not synchronisation: the loop re-checks
        delay = (delay * 2).min(Duration::from_millis(100));
    }
}

/// A running `weir` process (killed on drop).
pub struct Weir {
    child: Child,
    /// The public listener.
    pub addr: SocketAddr,
    /// The admin listener.
    pub admin: SocketAddr,
    /// The usage file.
    pub usage: PathBuf,
    /// The config file used.
    pub config: PathBuf,
    /// Temporary directory holding config, usage file and log.
    pub dir: tempfile::TempDir,
    log: PathBuf,
}

impl Weir {
    /// Start weir with `pools_and_routes` (YAML for `pools:` and `routes:`, plus any other
    /// top-level keys) and the harness's listener, admin, usage and timeouts.
    pub async fn start(pools_and_routes: &str) -> Weir {
        Self::start_with(pools_and_routes, "").await
    }

    /// Like `start`, with `extra` YAML appended (e.g. `timeouts:` or `server:` overrides).
    pub async fn start_with(pools_and_routes: &str, extra: &str) -> Weir {
        Self::start_full(pools_and_routes, extra, "", "").await
    }

    /// Like `start_with`, with `admin` (YAML lines of the `admin:` section, indented by two
    /// spaces, e.g. `  token: "..."\n`).
    pub async fn start_with_admin(pools_and_routes: &str, extra: &str, admin: &str) -> Weir {
        Self::start_full(pools_and_routes, extra, "", admin).await
    }

    /// Like `start`, with TLS terminated on the public listener with these PEM files.
    pub async fn start_tls(pools_and_routes: &str, cert: &std::path::Path, key: &std::path::Path) -> Weir {
        let tls = format!("    tls:\n      cert: \"{}\"\n      key: \"{}\"\n", cert.display(), key.display());
        Self::start_full(pools_and_routes, "", &tls, "").await
    }

    /// Like `start_with`, with `listener` (YAML lines of the public listener's entry, indented
    /// by four spaces, e.g. `    proxy_protocol: true\n`).
    pub async fn start_listener(pools_and_routes: &str, extra: &str, listener: &str) -> Weir {
        Self::start_full(pools_and_routes, extra, listener, "").await
    }

    /// Like `start_with`, with weir started through `wrapper` (a command and its arguments that
    /// end by running the command after them in the same process, e.g. `prlimit --nofile=…`).
    pub async fn start_wrapped(wrapper: &[&str], pools_and_routes: &str, extra: &str) -> Weir {
        Self::start_in(wrapper, pools_and_routes, extra, "", "").await
    }

    async fn start_full(pools_and_routes: &str, extra: &str, tls_yaml: &str, admin_yaml: &str) -> Weir {
        Self::start_in(&[], pools_and_routes, extra, tls_yaml, admin_yaml).await
    }

    async fn start_in(wrapper: &[&str], pools_and_routes: &str, extra: &str, tls_yaml: &str, admin_yaml: &str) -> Weir {
        let mut last_log = String::new();
        for _attempt in 0..3 {
            let dir = tempfile::tempdir().expect("tempdir");
            let (port, admin_port) = (free_port(), free_port());
            let usage = dir.path().join("usage.jsonl");
            let has = |k: &str| extra.lines().any(|l| l.starts_with(k));
            let mut yaml = format!(
                "listeners:\n  - address: \"127.0.0.1:{port}\"\n{tls_yaml}admin:\n  address: \"127.0.0.1:{admin_port}\"\n{admin_yaml}log:\n  level: debug\n"
            );
            if !has("usage:") {
                yaml.push_str(&format!(
                    "usage:\n  file: \"{}\"\n  spool_dir: \"{}\"\n  fsync_interval: 20ms\n",
                    usage.display(),
                    dir.path().join("spool").display()
                ));
            }
            if !has("server:") {
                yaml.push_str("server:\n  threads: 2\n  grace_period: 1s\n");
            }
            if !has("timeouts:") {
                yaml.push_str("timeouts:\n  request_head: 5s\n  backend_connect: 2s\n  backend_handshake: 3s\n");
            }
            yaml.push_str(extra);
            yaml.push('\n');
            yaml.push_str(pools_and_routes);
            let config = dir.path().join("weir.yaml");
            std::fs::write(&config, &yaml).expect("write config");
            let mut command = match wrapper.split_first() {
                Some((program, args)) => {
                    let mut c = Command::new(program);
                    c.args(args).arg(env!("CARGO_BIN_EXE_weir"));
                    c
                }
                None => Command::new(env!("CARGO_BIN_EXE_weir")),
            };
            command.args(["run", "--config"]).arg(&config).current_dir(dir.path());
            let addr = format!("127.0.0.1:{port}").parse().unwrap();
            let admin = format!("127.0.0.1:{admin_port}").parse().unwrap();
            match Weir::spawn(command, dir, config, addr, admin, usage).await {
                Ok(weir) => return weir,
                Err(log) => last_log = log,
            }
        }
        panic!("weir did not become ready; last log:\n{last_log}");
    }

    /// Spawn `command` (`weir run` with its arguments, environment and working directory set by
    /// the caller; stdout and stderr are taken here) and wait for `/readyz` on `admin`. `Err`
    /// holds weir's log if it exited first (e.g. a port race). `addr` is the public listener,
    /// `usage` the usage file and `config` the config file the caller wrote into `dir`.
    pub async fn spawn(
        mut command: Command,
        dir: tempfile::TempDir,
        config: PathBuf,
        addr: SocketAddr,
        admin: SocketAddr,
        usage: PathBuf,
    ) -> Result<Weir, String> {
        let log = dir.path().join("weir.log");
        let child = command
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn weir");
        let mut weir = Weir { child, addr, admin, usage, config, dir, log };
        if weir.wait_ready().await {
            Ok(weir)
        } else {
            Err(weir.log())
        }
    }

    /// Wait for `/readyz` to answer 200 (which it does only once the public listener is weir's
    /// own); false if the process exited first or another process holds its port: the port was
    /// free when `free_port` handed it out, another test's listener bound it before weir did, and
    /// Pingora retries its bind for up to 30 s (`weir::admin::owner`).
    async fn wait_ready(&mut self) -> bool {
        let start = Instant::now();
        while start.elapsed() < DEADLINE {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            match http_get(self.admin, "/readyz").await {
                Ok((200, _, _)) => return true,
                _ if listener_owner(self.child.id(), self.addr) == Owner::Other => return false,
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// weir's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Set weir's descriptor limit with prlimit(1): `soft` and, when given, `hard` (else the
    /// hard limit stays).
    pub fn set_nofile(&self, soft: u64, hard: Option<u64>) {
        let hard = hard.map(|h| h.to_string()).unwrap_or_default();
        let status = std::process::Command::new("prlimit")
            .args(["--pid", &self.pid().to_string(), &format!("--nofile={soft}:{hard}")])
            .status()
            .expect("prlimit");
        assert!(status.success(), "prlimit failed");
    }

    /// `ws://` URL for `path` on the public listener.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// Kill the process with SIGKILL (no shutdown at all) and reap it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Send SIGTERM and wait (bounded) for the process to exit; returns its exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        signal(self.child.id(), "TERM");
        self.exited_within(DEADLINE)
    }

    /// Wait up to `within` for the process to exit (after a signal sent elsewhere).
    pub fn exited_within(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < within {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The current `/metrics` text.
    pub async fn metrics(&self) -> String {
        match http_get(self.admin, "/metrics").await {
            Ok((200, _, body)) => body,
            other => panic!("GET /metrics failed: {other:?}"),
        }
    }

    /// Wait until the metric `name{labels}` satisfies `ok`, returning its value.
    pub async fn metric_eventually(&self, name: &str, labels: &[(&str, &str)], ok: impl Fn(f64) -> bool) -> f64 {
        let what = format!("{name}{labels:?}");
        eventually(&what, || async {
            let text = self.metrics().await;
            metric(&text, name, labels).filter(|v| ok(*v))
        })
        .await
    }

    /// Every complete line of the usage file so far, as JSON. A last line without its newline is
    /// still being written by the file sink (a reader can see part of a write): it is left for
    /// the next look.
    pub fn usage_lines(&self) -> Vec<serde_json::Value> {
        complete_lines(&self.usage)
            .iter()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad usage line {l}: {e}")))
            .collect()
    }

    /// Every connection `stop` record delivered to the file sink so far (one per connection).
    pub fn records(&self) -> Vec<UsageRecord> {
        self.usage_lines()
            .into_iter()
            .filter(|v| v["record"] == "stop")
            .map(|v| serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("bad connection record {v}: {e}")))
            .collect()
    }

    /// Every object usage record written so far.
    pub fn object_records(&self) -> Vec<weir::billing::ObjectRecord> {
        self.usage_lines()
            .into_iter()
            .filter(|v| v["record"] == "object")
            .map(|v| serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("bad object record {v}: {e}")))
            .collect()
    }

    /// Wait until at least `n` object records exist; returns all of them.
    pub async fn object_records_eventually(&self, n: usize) -> Vec<weir::billing::ObjectRecord> {
        eventually(&format!("{n} object records"), || async {
            let r = self.object_records();
            (r.len() >= n).then_some(r)
        })
        .await
    }

    /// Wait until at least `n` usage records exist; returns all of them.
    pub async fn records_eventually(&self, n: usize) -> Vec<UsageRecord> {
        eventually(&format!("{n} usage records"), || async {
            let r = self.records();
            (r.len() >= n).then_some(r)
        })
        .await
    }
}

impl Drop for Weir {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Send `signal` (e.g. `TERM`) to a process the test started, via the `kill` command.
pub fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status();
}

/// The complete lines of a file another process appends to (none if it cannot be read): a last
/// line without its newline is still being written (a reader can see part of a `write(2)`) and is
/// left out.
pub fn complete_lines(path: &std::path::Path) -> Vec<String> {
    let Ok(bytes) = std::fs::read(path) else { return Vec::new() };
    let end = bytes.iter().rposition(|b| *b == b'\n').unwrap_or(0);
    String::from_utf8_lossy(&bytes[..end]).lines().map(String::from).collect()
}

/// The value of `name{labels…}` in Prometheus text (labels are a subset match), if present.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else { continue };
        let (label_part, value) = if let Some(r) = rest.strip_prefix('{') {
            let Some((l, v)) = r.split_once('}') else { continue };
            (l, v)
        } else if rest.starts_with(' ') {
            ("", rest)
        } else {
            continue;
        };
        let matches = labels.iter().all(|(k, v)| label_part.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
        if matches {
            if let Ok(v) = value.trim().parse::<f64>() {
                *total.get_or_insert(0.0) += v;
            }
        }
    }
    total
}

/// A raw HTTP/1.1 GET; returns (status, head text, body). Reads until the peer closes.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String, String)> {
    raw_request(addr, &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")).await
}

/// Send `request` as is, read the whole answer until EOF (bounded by `DEADLINE`).
pub async fn raw_request(addr: SocketAddr, request: &str) -> std::io::Result<(u16, String, String)> {
    let io = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(request.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(DEADLINE, io).await.map_err(|_| std::io::Error::other("timed out"))??;
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, head.to_string(), body.to_string()))
}

/// A valid upgrade request for `path` with `extra` header lines (each ending in `\r\n`).
pub fn upgrade_request(addr: SocketAddr, path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// YAML for one pool named `name` with `backends` and no health probing, and a websocket route
/// at `prefix` to it.
pub fn pool_and_route(name: &str, backends: &[SocketAddr], prefix: &str) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    format!(
        "pools:\n  - name: {name}\n    backends: [{}]\n    health_check: {{kind: none}}\nroutes:\n  - name: {name}\n    path_prefix: {prefix}\n    pool: {name}\n",
        list.join(", ")
    )
}

/// Connect a tokio-tungstenite client to `path` on weir (large-message config), or panic.
pub async fn connect(weir: &Weir, path: &str) -> Client {
    let (ws, resp) = tokio::time::timeout(
        DEADLINE,
        tokio_tungstenite::connect_async_with_config(weir.url(path), Some(backends::ws_config()), false),
    )
    .await
    .expect("connect timed out")
    .unwrap_or_else(|e| panic!("connect to {path} failed: {e}\n{}", weir.log()));
    assert_eq!(resp.status(), 101);
    ws
}

/// The next message from `ws` within `DEADLINE`; panics on the end of the stream or an error.
pub async fn recv<S>(ws: &mut S) -> Message
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    use futures_util::StreamExt;
    match tokio::time::timeout(DEADLINE, ws.next()).await {
        Ok(Some(Ok(m))) => m,
        Ok(other) => panic!("expected a message, got {other:?}"),
        Err(_) => panic!("no message within {DEADLINE:?}"),
    }
}

/// The close frame `ws` gets next, skipping other messages (code, reason); panics on anything
/// else or after `DEADLINE`.
pub async fn next_close<S>(ws: &mut S) -> (u16, String)
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    use futures_util::StreamExt;
    let read = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(f)))) => return (u16::from(f.code), f.reason.to_string()),
                Some(Ok(_)) => {}
                other => panic!("expected a close, got {other:?}"),
            }
        }
    };
    tokio::time::timeout(DEADLINE, read).await.expect("a close within the deadline")
}

/// Read until the stream ends (None or an error) within `within`; returns every message read
/// before the end. Panics if the stream is still open after `within` or after 100 000 messages.
pub async fn drain_until_end<S>(ws: &mut S, within: Duration) -> Vec<Message>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    use futures_util::StreamExt;
    let deadline = tokio::time::Instant::now() + within;
    let mut got = Vec::new();
    for _ in 0..100_000 {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(m))) => got.push(m),
            Ok(Some(Err(_))) | Ok(None) => return got,
            Err(_) => panic!("stream still open after {within:?}; read {got:?}"),
        }
    }
    panic!("stream did not end after 100000 messages");
}

/// Resident set size of process `pid`, KiB (`VmRSS` in /proc/PID/status).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}
