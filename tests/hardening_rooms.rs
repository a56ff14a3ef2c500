//! Hardening (issue 9): built-in rooms under members that never read, and many rooms on disk.
//! Each test failed before its fix.

use crate::support::wire::{raw_client, RawConn};
use crate::support::{connect, eventually, metric, recv, rss_kib, Client, Weir, DEADLINE};
use futures_util::SinkExt;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// YAML for namespace `rooms` at `/rooms/{id}` with these `room:` settings.
fn rooms(settings: &str) -> String {
    format!(
        "objects:\n  - {{name: rooms, id: {{path: \"/rooms/{{id}}\"}}, builtin: room, room: {{{settings}}}}}\nroutes:\n  - {{name: rooms, path_prefix: /rooms, object: rooms}}\n"
    )
}

/// A weir event, parsed.
fn event(m: &Message) -> Option<Value> {
    let Message::Text(t) = m else { return None };
    let v: Value = serde_json::from_str(t.as_str()).ok()?;
    v.get("weir").is_some().then_some(v)
}

/// `socket:[inode]` of weir's end of `conn` (from /proc/net/tcp: the connection whose local
/// address is weir's listener and whose remote address is `conn`'s).
fn weir_end(weir: &Weir, conn: &RawConn) -> String {
    let hex = |a: std::net::SocketAddr| match a {
        std::net::SocketAddr::V4(v4) => format!("{:08X}:{:04X}", u32::from_le_bytes(v4.ip().octets()), v4.port()),
        std::net::SocketAddr::V6(_) => panic!("loopback IPv4 only"),
    };
    let (local, remote) = (hex(weir.addr), hex(conn.stream.local_addr().unwrap()));
    let table = std::fs::read_to_string("/proc/self/net/tcp").expect("read /proc/self/net/tcp");
    let inode = table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 9 && f[1] == local && f[2] == remote)
        .map(|f| f[9].to_string())
        .unwrap_or_else(|| panic!("no connection {local} -> {remote} in /proc/net/tcp"));
    format!("socket:[{inode}]")
}

/// How many of `sockets` (`socket:[inode]`) process `pid` has open.
fn still_open(pid: u32, sockets: &[String]) -> usize {
    let links: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|l| l.to_string_lossy().into_owned())
        .collect();
    sockets.iter().filter(|s| links.contains(s)).count()
}

/// Join `id` with a client that completes the upgrade and never reads.
async fn never_reads(weir: &Weir, id: &str) -> RawConn {
    let (conn, head) = raw_client(weir.addr, &format!("/rooms/{id}"), "", b"").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    conn
}

/// Send `n` binary messages of `size` bytes (tagged with `tag`) from `ws`.
async fn publish(ws: &mut Client, tag: u8, n: usize, size: usize) {
    for i in 0..n {
        ws.send(Message::binary(vec![tag.wrapping_add(i as u8); size])).await.expect("publish");
    }
}

/// The value of `name{namespace="rooms"}` in weir's metrics (0 if absent).
async fn rooms_metric(weir: &Weir, name: &str) -> f64 {
    metric(&weir.metrics().await, name, &[("namespace", "rooms")]).unwrap_or(0.0)
}

/// A member that never read used to block in the welcome and history send forever: when its
/// queue filled it was announced as removed, but its task kept its queue and the history, and
/// its socket stayed open. Now the send watches the kick: the member is closed (1013, at most a
/// second for the close) and dropped, and what it held is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_that_never_read_are_dropped_and_their_memory_released() {
    const MESSAGE: usize = 512 << 10;
    const HISTORY: usize = 8;
    const SLOW: usize = 8;
    let data = tempfile::tempdir().unwrap();
    // send_timeout is long: only the kick (a full queue) can remove these members in time.
    let config = rooms(&format!(
        "history: {HISTORY}, history_bytes: {}, send_queue: 16, max_message: {}, send_timeout: 120s",
        HISTORY * MESSAGE,
        MESSAGE
    ));
    let weir = Weir::start_with(&config, &format!("data_dir: \"{}\"\n", data.path().display())).await;
    let pid = weir.pid();
    let mut publisher = connect(&weir, "/rooms/big").await;
    assert_eq!(event(&recv(&mut publisher).await).unwrap()["weir"], "welcome");
    // Warm up with members that read (one message in flight at a time, so they never fall
    // behind): the history fills up and the allocator has seen it all.
    for round in 0..3u8 {
        let mut member = connect(&weir, "/rooms/big").await;
        let welcome = event(&recv(&mut member).await).unwrap();
        for _ in 0..welcome["history"].as_u64().unwrap() {
            recv(&mut member).await;
        }
        for i in 0..HISTORY {
            publisher.send(Message::binary(vec![round * 16 + i as u8; MESSAGE])).await.unwrap();
            while event(&recv(&mut member).await).is_some() {}
        }
        member.close(None).await.unwrap();
        crate::support::drain_until_end(&mut member, DEADLINE).await;
    }
    eventually("the warm-up members to be gone", || async {
        let ended = metric(&weir.metrics().await, "weir_connections_total", &[]).unwrap_or(0.0);
        (ended >= 3.0).then_some(())
    })
    .await;
    let base_rss = rss_kib(pid);

    // Each member that never reads joins, then the room moves on by a whole history (so each
    // one's queue and history are its own), which overflows its queue.
    let (mut slow, mut sockets) = (Vec::new(), Vec::new());
    for i in 0..SLOW {
        let conn = never_reads(&weir, "big").await;
        sockets.push(weir_end(&weir, &conn));
        assert_eq!(still_open(pid, &sockets[i..]), 1, "weir holds the new member's socket");
        slow.push(conn);
        let mut rounds = 0;
        while rooms_metric(&weir, "weir_room_slow_clients_total").await < (i + 1) as f64 {
            assert!(rounds < 16, "member {i} was not removed after {rounds} histories");
            publish(&mut publisher, 100 + i as u8 * 10, HISTORY, MESSAGE).await;
            rounds += 1;
        }
    }
    let peak_rss = rss_kib(pid);
    eprintln!("RSS baseline {base_rss} KiB, with the slow members {peak_rss} KiB");
    // Their sockets are closed and dropped by weir while they still have not read a byte.
    eventually("weir to close every member that never reads", || async {
        (still_open(pid, &sockets) == 0).then_some(())
    })
    .await;
    // ... and what they held is released: RSS comes back near where it was.
    let rss = eventually("weir's memory to come back near its baseline", || async {
        let rss = rss_kib(pid);
        (rss <= base_rss + 16 * 1024).then_some(rss)
    })
    .await;
    eprintln!("RSS after the slow members are gone: {rss} KiB");
    // Each of them finds the end of its stream after what its socket buffers held.
    for mut conn in slow {
        let rest = tokio::time::timeout(DEADLINE, conn.read_to_end()).await.expect("EOF or RST within the deadline");
        assert!(rest.len() <= 64 << 20, "{} bytes", rest.len());
    }
    assert_eq!(rooms_metric(&weir, "weir_room_slow_clients_total").await, SLOW as f64);
    // The room goes on: a new member gets the whole history and the publisher's messages.
    let mut late = connect(&weir, "/rooms/big").await;
    assert_eq!(event(&recv(&mut late).await).unwrap()["history"], HISTORY);
    for _ in 0..HISTORY {
        recv(&mut late).await;
    }
    publisher.send(Message::text("still here")).await.unwrap();
    loop {
        let m = recv(&mut late).await;
        if event(&m).is_none() {
            assert_eq!(m, Message::text("still here"));
            break;
        }
    }
}

/// A member that never reads in a room where nobody talks never overflows its queue: it used to
/// sit in the history send forever. Now the send gives up after `room.send_timeout`; the member
/// is counted and announced as slow and its socket is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_never_reads_its_history_is_closed_after_send_timeout() {
    const MESSAGE: usize = 1 << 20;
    let data = tempfile::tempdir().unwrap();
    let config =
        rooms(&format!("history: 8, history_bytes: {}, max_message: {MESSAGE}, send_timeout: 1s", 8 * MESSAGE));
    let weir = Weir::start_with(&config, &format!("data_dir: \"{}\"\n", data.path().display())).await;
    let pid = weir.pid();
    let mut member = connect(&weir, "/rooms/quiet").await;
    assert_eq!(event(&recv(&mut member).await).unwrap()["weir"], "welcome");
    publish(&mut member, 0, 8, MESSAGE).await;
    let started = std::time::Instant::now();
    let mut slow = never_reads(&weir, "quiet").await;
    let socket = [weir_end(&weir, &slow)];
    assert_eq!(still_open(pid, &socket), 1, "weir holds the member's socket");
    let joined = event(&recv(&mut member).await).unwrap();
    assert_eq!((joined["weir"].as_str(), joined["members"].as_u64()), (Some("join"), Some(2)));
    // Nobody publishes: only the timeout can end it. It is announced as slow.
    let left = event(&recv(&mut member).await).unwrap();
    assert_eq!((left["weir"].as_str(), left["reason"].as_str()), (Some("leave"), Some("slow")), "{left}");
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(5), "{elapsed:?}");
    assert_eq!(rooms_metric(&weir, "weir_room_slow_clients_total").await, 1.0);
    // Closed by weir (1 s for the close handshake at most) while it still has not read.
    eventually("weir to close the member that never reads", || async { (still_open(pid, &socket) == 0).then_some(()) })
        .await;
    let rest = tokio::time::timeout(DEADLINE, slow.read_to_end()).await.expect("EOF or RST within the deadline");
    assert!(!rest.is_empty() && rest.len() <= 16 << 20, "{} bytes", rest.len());
}

/// The same for live messages: a member that stops reading while fewer than `room.send_queue`
/// messages are on their way never overflows its queue, and its write used to wait forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_stops_reading_live_messages_is_closed_after_send_timeout() {
    const MESSAGE: usize = 1 << 20;
    let data = tempfile::tempdir().unwrap();
    let config = rooms(&format!("history: 0, send_queue: 64, max_message: {MESSAGE}, send_timeout: 1s"));
    let weir = Weir::start_with(&config, &format!("data_dir: \"{}\"\n", data.path().display())).await;
    let pid = weir.pid();
    let mut member = connect(&weir, "/rooms/live").await;
    assert_eq!(event(&recv(&mut member).await).unwrap()["weir"], "welcome");
    let mut slow = never_reads(&weir, "live").await;
    let socket = [weir_end(&weir, &slow)];
    assert_eq!(still_open(pid, &socket), 1, "weir holds the member's socket");
    assert_eq!(event(&recv(&mut member).await).unwrap()["weir"], "join");
    // 16 MiB in 16 messages: more than the socket buffers take, far fewer than the queue holds.
    publish(&mut member, 0, 16, MESSAGE).await;
    let left = event(&recv(&mut member).await).unwrap();
    assert_eq!((left["weir"].as_str(), left["reason"].as_str()), (Some("leave"), Some("slow")), "{left}");
    assert_eq!(rooms_metric(&weir, "weir_room_slow_clients_total").await, 1.0);
    eventually("weir to close the member that stopped reading", || async {
        (still_open(pid, &socket) == 0).then_some(())
    })
    .await;
    let rest = tokio::time::timeout(DEADLINE, slow.read_to_end()).await.expect("EOF or RST within the deadline");
    assert!(rest.len() < 16 * MESSAGE, "{} bytes", rest.len());
}

/// Room files (`*.log`, recursively) under `dir`, and their total bytes.
fn room_files(dir: &Path) -> (Vec<PathBuf>, u64) {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.to_string_lossy().ends_with(".log") {
                found.push(path);
            }
        }
    }
    let bytes = found.iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum();
    found.sort();
    (found, bytes)
}

/// Wait until the room directory holds at most `max` files and the gauges agree with it.
async fn store_settles(weir: &Weir, dir: &Path, max: usize) -> Vec<PathBuf> {
    eventually(&format!("at most {max} room files, and gauges that match"), || async {
        let (files, bytes) = room_files(dir);
        let text = weir.metrics().await;
        let rooms = metric(&text, "weir_room_store_rooms", &[("namespace", "rooms")]);
        let gauge_bytes = metric(&text, "weir_room_store_bytes", &[("namespace", "rooms")]);
        (files.len() <= max && rooms == Some(files.len() as f64) && gauge_bytes == Some(bytes as f64)).then_some(files)
    })
    .await
}

/// The file of room `id` in `dir` (lowercase hex of the id plus `.log`).
fn room_file(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{}.log", id.bytes().map(|b| format!("{b:02x}")).collect::<String>()))
}

/// Join `id`, check the history it replays, say one thing, and leave.
async fn visit(weir: &Weir, id: &str, history: u64) {
    let mut ws = connect(weir, &format!("/rooms/{id}")).await;
    assert_eq!(event(&recv(&mut ws).await).unwrap()["history"], history, "{id}");
    for _ in 0..history {
        recv(&mut ws).await;
    }
    ws.send(Message::text(format!("hello from a visitor of {id}"))).await.unwrap();
    ws.close(None).await.unwrap();
    crate::support::drain_until_end(&mut ws, DEADLINE).await;
}

/// Every room id ever used used to leave its history file forever. Now the namespace keeps at
/// most `room.max_rooms_on_disk` files once its rooms are idle: the least recently used rooms
/// without members lose theirs, counted, and the store gauges follow the directory (also after
/// a restart, from a scan).
#[tokio::test]
async fn room_files_beyond_max_rooms_on_disk_are_removed_least_recently_used_first() {
    const N: usize = 3;
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("rooms").join("rooms");
    let config = rooms(&format!("history: 5, max_rooms_on_disk: {N}"));
    let extra = format!("data_dir: \"{}\"\n", data.path().display());
    let mut weir = Weir::start_with(&config, &extra).await;
    // N + 4 distinct rooms, one after the other.
    for i in 0..N + 4 {
        visit(&weir, &format!("r{i}"), 0).await;
        let files = store_settles(&weir, &dir, N).await;
        assert!(files.contains(&room_file(&dir, &format!("r{i}"))), "the newest room keeps its file: {files:?}");
    }
    let evicted = rooms_metric(&weir, "weir_room_store_evictions_total").await;
    assert_eq!(evicted, 4.0);
    // Using r4 again makes r5 the least recently used; the next new room pushes r5 out.
    visit(&weir, "r4", 1).await;
    visit(&weir, "new", 0).await;
    let files = store_settles(&weir, &dir, N).await;
    assert_eq!(files, vec![room_file(&dir, "new"), room_file(&dir, "r4"), room_file(&dir, "r6")]);
    // Rooms with members are never removed: N + 1 open rooms go over the cap until they are idle.
    let mut open = Vec::new();
    for id in ["a", "b", "c", "d"] {
        let mut ws = connect(&weir, &format!("/rooms/{id}")).await;
        recv(&mut ws).await;
        ws.send(Message::text("kept while I am here")).await.unwrap();
        open.push(ws);
    }
    eventually("four open rooms on disk", || async { (room_files(&dir).0.len() == 4).then_some(()) }).await;
    for mut ws in open {
        ws.close(None).await.unwrap();
        crate::support::drain_until_end(&mut ws, DEADLINE).await;
    }
    let files = store_settles(&weir, &dir, N).await;
    assert_eq!(files.len(), N);
    assert_eq!(rooms_metric(&weir, "weir_room_store_evictions_total").await, 4.0 + 1.0 + 4.0);
    // An evicted room starts again empty; a kept one still has its history.
    visit(&weir, "r0", 0).await;
    let kept = store_settles(&weir, &dir, N).await;
    assert!(weir.terminate().is_some(), "weir did not stop");

    // After a restart the gauges come from a scan of the directory.
    let weir = Weir::start_with(&config, &extra).await;
    let (files, bytes) = room_files(&dir);
    assert_eq!(files, kept);
    weir.metric_eventually("weir_room_store_rooms", &[("namespace", "rooms")], |v| v == N as f64).await;
    weir.metric_eventually("weir_room_store_bytes", &[("namespace", "rooms")], |v| v == bytes as f64).await;
    visit(&weir, "r0", 1).await;
}
