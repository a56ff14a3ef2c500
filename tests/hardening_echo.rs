//! Hardening (issue 9): see tests/tests.rs. The built-in echo (backend and object): big messages,
//! clients that never read, idle cost, accept errors. Each test failed before its fix.

use crate::support::wire::{frame, raw_client, RawConn, BINARY, CLOSE, FIN, MASK, TEXT};
use crate::support::{rss_kib, Weir, DEADLINE};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The default `echo.max_message`, bytes.
const LIMIT: usize = 1 << 20;

/// A pool with the built-in echo backend at `/echo`, the echo object at `/obj/{id}` and rooms at
/// `/rooms/{id}`.
const BUILTINS: &str = "pools:
  - name: be
    backends: [\"builtin:echo\"]
    health_check: {kind: none}
objects:
  - {name: eo, id: {path: \"/obj/{id}\"}, builtin: echo}
  - {name: rooms, id: {path: \"/rooms/{id}\"}, builtin: room}
routes:
  - {name: echo, path_prefix: /echo, pool: be}
  - {name: obj, path_prefix: /obj, object: eo}
  - {name: rooms, path_prefix: /rooms, object: rooms}
";

/// Upgrade on `path` and check one echo of a small text message.
async fn echo_client(weir: &Weir, path: &str) -> RawConn {
    let (mut c, head) = raw_client(weir.addr, path, "", b"").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{path}: {head}");
    c.write(&frame(FIN | TEXT, Some(MASK), b"probe")).await;
    let f = c.read_frame().await.expect("the probe's echo");
    assert_eq!(f.payload, b"probe", "{path}");
    c
}

/// Join a room on `path` and read its welcome.
async fn room_member(weir: &Weir, path: &str) -> RawConn {
    let (mut c, head) = raw_client(weir.addr, path, "", b"").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{path}: {head}");
    let f = c.read_frame().await.expect("the welcome");
    assert!(String::from_utf8_lossy(&f.payload).contains("\"welcome\""), "{path}: {f:?}");
    c
}

/// The header of a masked binary frame announcing `len` (≥ 126) payload bytes, length in its
/// minimal form.
fn header(len: usize) -> Vec<u8> {
    let mut h = vec![FIN | BINARY];
    match u16::try_from(len) {
        Ok(short) => {
            h.push(0x80 | 126);
            h.extend_from_slice(&short.to_be_bytes());
        }
        Err(_) => {
            h.push(0x80 | 127);
            h.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    h.extend_from_slice(&MASK);
    h
}

/// Send a header announcing `len` bytes on `path`; the answer must be weir's 1009.
async fn assert_too_big(weir: &Weir, path: &str, len: usize) {
    let mut c = echo_client(weir, path).await;
    c.write(&header(len)).await;
    let f = c.read_frame().await.unwrap_or_else(|| panic!("{path}: a close frame for {len} bytes"));
    assert_eq!((f.opcode(), f.close_code()), (CLOSE, Some(1009)), "{path}, {len} bytes: {f:?}");
    assert_eq!(&f.payload[2..], b"message too big", "{path}");
}

/// Issue 9, item 2: the built-in echo backend took messages up to 16 MiB and kept a copy in its
/// read buffer and another in its write buffer for as long as the client did not read them
/// (8 clients × 48 MiB added 787 MB). Now messages are limited to `echo.max_message` (1 MiB by
/// default, 1009 beyond it), the echo writes through a bounded buffer and reads nothing while it
/// cannot write, so clients that never read cost weir at most a few times the limit each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_backend_memory_stays_bounded_for_big_messages_and_clients_that_never_read() {
    /// Clients that send messages just under the limit and never read, and their messages each.
    const STALLED: usize = 8;
    const MESSAGES: usize = 3;
    /// Clients that send one message the old limit allowed (15 MiB).
    const BIG: usize = 4;
    const BIG_MESSAGE: usize = 15 << 20;
    // Generous: a message in the echo's read buffer and one in its write buffer is 2 × LIMIT.
    let bound_kib = |clients: usize| (clients * 4 * LIMIT + (32 << 20)) as u64 >> 10;

    let weir = Weir::start(BUILTINS).await;
    let _warm = echo_client(&weir, "/echo").await;
    let rss0 = rss_kib(weir.pid());

    // Clients that send messages near the limit and never read. Their writers stall once weir
    // stops reading them (that is the backpressure); they are aborted at the end.
    let near = frame(FIN | BINARY, Some(MASK), &vec![0x5A; LIMIT - 64]);
    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        let c = echo_client(&weir, "/echo").await;
        let (reader, mut writer) = c.stream.into_split();
        let near = near.clone();
        stalled.push(tokio::spawn(async move {
            for _ in 0..MESSAGES {
                if writer.write_all(&near).await.is_err() {
                    break;
                }
            }
            std::future::pending::<()>().await;
            drop((reader, writer));
        }));
    }
    // Every stalled client's first message has gone round (the probe echoes count too).
    weir.metric_eventually("weir_messages_total", &[("route", "echo"), ("direction", "backend_to_client")], |v| {
        v >= (1 + 2 * STALLED) as f64
    })
    .await;
    let rss1 = rss_kib(weir.pid());
    eprintln!("{STALLED} clients that never read: weir RSS {rss0} → {rss1} KiB");
    assert!(
        rss1.saturating_sub(rss0) < bound_kib(STALLED),
        "{STALLED} clients sending {MESSAGES} × {} KiB and never reading grew weir by {} KiB (bound {} KiB)",
        LIMIT >> 10,
        rss1.saturating_sub(rss0),
        bound_kib(STALLED)
    );

    // Clients that send one 15 MiB message: refused with 1009 now (echoed and kept twice before).
    let mut big = Vec::new();
    for _ in 0..BIG {
        let c = echo_client(&weir, "/echo").await;
        let (mut reader, mut writer) = c.stream.into_split();
        big.push(tokio::spawn(async move {
            let write = tokio::spawn(async move {
                let message = frame(FIN | BINARY, Some(MASK), &vec![0xA5; BIG_MESSAGE]);
                let _ = writer.write_all(&message).await;
                writer
            });
            // Read until weir ends the connection, or until the echo starts coming back.
            let mut got = 0usize;
            let mut chunk = vec![0u8; 64 << 10];
            let read = async {
                while got < 64 << 10 {
                    match reader.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got += n,
                    }
                }
            };
            tokio::time::timeout(DEADLINE, read).await.expect("weir neither closed nor echoed the big message");
            (reader, write)
        }));
    }
    let mut held = Vec::new();
    for b in big {
        held.push(b.await.unwrap());
    }
    let rss2 = rss_kib(weir.pid());
    eprintln!("and {BIG} clients that sent {} MiB: weir RSS {rss2} KiB", BIG_MESSAGE >> 20);
    assert!(
        rss2.saturating_sub(rss0) < bound_kib(STALLED + BIG),
        "{BIG} clients sending {} MiB grew weir by {} KiB in all (bound {} KiB)",
        BIG_MESSAGE >> 20,
        rss2.saturating_sub(rss0),
        bound_kib(STALLED + BIG)
    );

    // A message over the limit gets a 1009, on the backend and on the echo object alike.
    assert_too_big(&weir, "/echo", LIMIT + 1).await;
    assert_too_big(&weir, "/obj/x", LIMIT + 1).await;
    for s in stalled {
        s.abort();
    }
    for (_, w) in held {
        w.abort();
    }
}

/// Issue 9, item 2: the limit is `echo.max_message`, one value for the echo backend (its service
/// gets it from the config) and the echo object.
#[tokio::test]
async fn echo_max_message_is_configured_for_the_backend_and_the_object() {
    let weir = Weir::start_with(BUILTINS, "echo:\n  max_message: 4096\n").await;
    for path in ["/echo", "/obj/y"] {
        let mut c = echo_client(&weir, path).await;
        let full = vec![0x42; 4096];
        c.write(&frame(FIN | BINARY, Some(MASK), &full)).await;
        assert_eq!(c.read_frame().await.expect("the echo of 4096 bytes").payload, full, "{path}");
        assert_too_big(&weir, path, 4097).await;
    }
}

/// Issue 9, item 3: tungstenite's default 128 KiB read buffer (allocated and zero-filled per
/// connection) made an idle `/echo` connection cost ~137 KiB (relay + the echo backend's state)
/// and an idle room member ~142 KiB, 20× a relayed connection. Now the built-ins read through a
/// 4 KiB buffer grown on demand: each idle connection costs a few KiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_builtin_connections_cost_a_few_kib_each() {
    const N: usize = 300;
    const BOUND_KIB: f64 = 40.0;
    let weir = Weir::start(BUILTINS).await;
    // Warm every path once, so one-off allocations are not counted.
    let _warm = (
        echo_client(&weir, "/echo").await,
        echo_client(&weir, "/obj/warm").await,
        room_member(&weir, "/rooms/warm").await,
    );
    let mut held = Vec::new();
    let mut costs = Vec::new();
    for kind in ["echo object", "room member", "echo backend (relayed)"] {
        let before = rss_kib(weir.pid());
        for i in 0..N {
            held.push(match kind {
                "echo object" => echo_client(&weir, &format!("/obj/idle{i}")).await,
                // Rooms of ten members.
                "room member" => room_member(&weir, &format!("/rooms/idle{}", i / 10)).await,
                _ => echo_client(&weir, "/echo").await,
            });
        }
        let after = rss_kib(weir.pid());
        let per = after.saturating_sub(before) as f64 / N as f64;
        eprintln!("{N} idle {kind} connections: weir RSS {before} → {after} KiB, {per:.1} KiB each");
        costs.push((kind, per));
    }
    for (kind, per) in costs {
        assert!(per < BOUND_KIB, "an idle {kind} connection costs {per:.1} KiB (bound {BOUND_KIB} KiB)");
    }
}

/// `text` without ANSI escape sequences (weir colours its log).
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters, then a final byte in @..~.
            chars.by_ref().skip(1).find(|c| ('@'..='~').contains(c));
        } else {
            out.push(c);
        }
    }
    out
}

/// weir's log so far, without colours.
fn log_of(weir: &Weir) -> String {
    plain(&weir.log())
}

/// The built-in echo backend's address, from weir's `pool` log line.
fn echo_backend_addr(log: &str) -> std::net::SocketAddr {
    let line = log
        .lines()
        .find(|l| l.contains("pool") && l.contains("backends=[\"127.0.0.1:"))
        .unwrap_or_else(|| panic!("no pool line with the echo backend's address in the log:\n{log}"));
    let start = line.find("[\"").unwrap() + 2;
    let end = start + line[start..].find('"').unwrap();
    line[start..end].parse().unwrap()
}

const ACCEPT_FAILED: &str = "built-in echo: accept failed";

/// Issue 9, item 5: out of descriptors, the built-in echo's accept loop retried at once and
/// logged every failure (9.2 million lines in 20 s, a busy core). Now it backs off (10 ms
/// doubling to 1 s), logs at most once a second with a count, and counts every failure in
/// `weir_accept_errors_total{listener="echo",reason="fd_limit"}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_accept_loop_backs_off_when_descriptors_run_out() {
    const WINDOW: Duration = Duration::from_secs(3);
    let weir = Weir::start(BUILTINS).await;
    let _warm = echo_client(&weir, "/echo").await;
    let backend = echo_backend_addr(&log_of(&weir));
    let open = std::fs::read_dir(format!("/proc/{}/fd", weir.pid())).unwrap().count() as u64;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", weir.pid())).unwrap();
    let soft: u64 = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("Max open files in /proc/PID/limits");
    weir.set_nofile(open + 30, None);

    // Use the descriptors up: connections to /echo (three descriptors each in weir, until weir
    // refuses them), then connections straight to the echo backend, which accepts until it
    // cannot; the rest wait in its backlog while accept(2) fails with EMFILE.
    let exhausting = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..20 {
        let attempt = async {
            let (c, head) = raw_client(weir.addr, "/echo", "", b"").await;
            head.starts_with("HTTP/1.1 101").then_some(c)
        };
        match tokio::time::timeout(Duration::from_secs(2), attempt).await {
            Ok(Some(c)) => clients.push(c),
            _ => break,
        }
    }
    let mut direct = Vec::new();
    for _ in 0..60 {
        match tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(backend)).await {
            Ok(Ok(s)) => direct.push(s),
            _ => break,
        }
    }
    let log_lines = |log: &str| log.lines().filter(|l| l.contains(ACCEPT_FAILED)).count();
    crate::support::eventually("the echo backend's first accept error in the log", || async {
        (log_lines(&log_of(&weir)) > 0).then_some(())
    })
    .await;
    // The interval the log is judged over (not a synchronisation: nothing is waited for).
    tokio::time::sleep(WINDOW).await;
    let log = log_of(&weir);
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(ACCEPT_FAILED)).collect();
    let elapsed = exhausting.elapsed();
    eprintln!("{} accept-error lines in {elapsed:?}; the last: {:?}", lines.len(), lines.last());
    // At most one line a second since the descriptors ran out, plus the first.
    let most = elapsed.as_secs_f64().ceil() as usize + 1;
    assert!(lines.len() <= most, "{} accept-error log lines in {elapsed:?} (at most {most})", lines.len());
    let logged: u64 = lines
        .iter()
        .map(|l| {
            let n = l.split("failures=").nth(1).unwrap_or_else(|| panic!("no failure count in {l}"));
            n.split(|c: char| !c.is_ascii_digit()).next().unwrap().parse::<u64>().unwrap()
        })
        .sum();
    assert!(lines.iter().all(|l| l.contains("fd_limit")), "{lines:?}");

    // Free the descriptors and restore the limit; the metric counts every failure (at least
    // those logged).
    drop(direct);
    drop(clients);
    weir.set_nofile(soft, None);
    let counted = weir
        .metric_eventually("weir_accept_errors_total", &[("listener", "echo"), ("reason", "fd_limit")], |v| {
            v >= logged as f64
        })
        .await;
    eprintln!("weir_accept_errors_total{{listener=\"echo\",reason=\"fd_limit\"}} = {counted}; {logged} logged");
    assert!(counted >= 1.0);
    // Accepting works again once descriptors are free.
    crate::support::eventually("an echo once descriptors are free", || async {
        let (mut c, head) = raw_client(weir.addr, "/echo", "", b"").await;
        if !head.starts_with("HTTP/1.1 101") {
            return None;
        }
        c.write(&frame(FIN | TEXT, Some(MASK), b"back")).await;
        c.read_frame().await.filter(|f| f.payload == b"back").map(|_| ())
    })
    .await;
}
