//! Several instances sharing objects through etcd (issue 13): a private etcd and three `weir`
//! processes on loopback. One owner key per object, one message order for every member however
//! it is relayed, connection records from the instance each client reached and one object
//! record in all, 1012 within a second when the owner dies and a new owner with a higher
//! fencing token, and 503 `cluster_unavailable` on object routes while etcd is down (pool
//! routes go on).

use crate::support::etcd::Etcd;
use crate::support::hosts::ObjectHost;
use crate::support::postgres::Postgres;
use crate::support::wire::trickle_until_closed;
use crate::support::{connect, drain_until_end, eventually, free_port, metric, recv, signal, Client, Weir, DEADLINE};
use futures_util::{SinkExt, StreamExt};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

/// A room namespace and an echo pool, each behind a route.
const CONFIG: &str = "objects:\n  - {name: rooms, id: {path: \"/rooms/{id}\"}, builtin: room, room: {history: 100, send_queue: 256}}\npools:\n  - {name: echo, backends: [\"builtin:echo\"], health_check: {kind: none}}\nroutes:\n  - {name: rooms, path_prefix: /rooms, object: rooms}\n  - {name: echo, path_prefix: /echo, pool: echo}\n";

/// etcd and `n` weir instances `weir-0` … in cluster `t`.
struct Cluster {
    etcd: Etcd,
    weirs: Vec<Weir>,
    /// Each instance's peer listener.
    peers: Vec<String>,
    _secret: tempfile::TempDir,
}

async fn start_cluster(n: usize) -> Cluster {
    start_cluster_with(n, |_| CONFIG.to_string(), "").await
}

/// `start_cluster` with instance `i` running `config(i)` (its pools, objects and routes) and
/// `cluster_extra` lines in `cluster:` (e.g. `  history: {postgres: "…"}\n`).
async fn start_cluster_with(n: usize, config: impl Fn(usize) -> String, cluster_extra: &str) -> Cluster {
    let etcd = Etcd::start().await;
    let secret = tempfile::tempdir().expect("tempdir");
    let secret_file = secret.path().join("peer.secret");
    std::fs::write(&secret_file, "cluster-test-secret-0123456789\n").expect("write the secret");
    let mut weirs = Vec::new();
    let mut peers = Vec::new();
    for i in 0..n {
        let peer = format!("127.0.0.1:{}", free_port());
        let extra = format!(
            "cluster:\n  name: t\n  instance: weir-{i}\n  etcd: [\"127.0.0.1:{}\"]\n  lease_ttl: 2s\n  peer: {{address: \"{peer}\", secret_file: \"{}\"}}\n{cluster_extra}",
            etcd.port,
            secret_file.display()
        );
        weirs.push(Weir::start_with(&config(i), &extra).await);
        peers.push(peer);
    }
    for w in &weirs {
        w.metric_eventually("weir_cluster_healthy", &[], |v| v == 1.0).await;
        w.metric_eventually("weir_cluster_members", &[], |v| v == n as f64).await;
    }
    Cluster { etcd, weirs, peers, _secret: secret }
}

/// Join room `id` through `weir`: the client after its welcome and history, or the refusal's
/// status.
async fn try_join(weir: &Weir, id: &str) -> Result<Client, u16> {
    let connecting = tokio_tungstenite::connect_async(weir.url(&format!("/rooms/{id}")));
    match tokio::time::timeout(DEADLINE, connecting).await.expect("connect timed out") {
        Ok((mut ws, _)) => {
            let Message::Text(welcome) = recv(&mut ws).await else { panic!("expected the welcome") };
            let welcome: serde_json::Value = serde_json::from_str(welcome.as_str()).expect("welcome JSON");
            assert_eq!(welcome["weir"], "welcome");
            for _ in 0..welcome["history"].as_u64().unwrap_or(0) {
                recv(&mut ws).await;
            }
            Ok(ws)
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(e) => panic!("connect failed: {e}\n{}", weir.log()),
    }
}

async fn join(weir: &Weir, id: &str) -> Client {
    try_join(weir, id).await.unwrap_or_else(|status| panic!("join {id}: {status}\n{}", weir.log()))
}

/// The next `n` member messages (weir's own JSON events skipped).
async fn member_messages(ws: &mut Client, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    while got.len() < n {
        if let Message::Text(t) = recv(ws).await {
            let event = serde_json::from_str::<serde_json::Value>(t.as_str()).is_ok_and(|v| v.get("weir").is_some());
            if !event {
                got.push(t.to_string());
            }
        }
    }
    got
}

/// Read until a close frame arrives (within `within`); its code.
async fn close_code(ws: &mut Client, within: Duration) -> Option<u16> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await.expect("no close in time") {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

/// Stop records of route `rooms` written by `weir`.
fn room_records(weir: &Weir) -> Vec<weir::billing::UsageRecord> {
    weir.records().into_iter().filter(|r| r.identity.route.as_deref() == Some("rooms") && r.status == 101).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_clients_on_three_instances_share_one_owner_and_one_order() {
    let c = start_cluster(3).await;
    // The first client makes weir-0 the owner; it only listens (the reference order).
    let mut observer = join(&c.weirs[0], "lobby").await;
    let mut clients = Vec::new();
    for k in 0..30 {
        clients.push((k, join(&c.weirs[k % 3], "lobby").await));
    }
    let keys = c.etcd.keys("t/objects/").await;
    assert_eq!(keys.len(), 1, "one owner key: {keys:?}");
    assert_eq!(keys[0].0, "t/objects/rooms/lobby");
    assert!(keys[0].1.contains("\"weir-0\""), "{keys:?}");
    for w in &c.weirs[1..] {
        w.metric_eventually("weir_peer_relays_active", &[], |v| v == 10.0).await;
    }
    let sends = clients.into_iter().map(|(k, mut ws)| {
        tokio::spawn(async move {
            ws.send(Message::text(format!("m-{k}"))).await.expect("send");
            let got = member_messages(&mut ws, 29).await;
            (k, got, ws)
        })
    });
    let sends: Vec<_> = sends.collect();
    let reference = member_messages(&mut observer, 30).await;
    let mut clients = Vec::new();
    for s in sends {
        let (k, got, ws) = s.await.expect("client task");
        let mine = format!("m-{k}");
        let expected: Vec<String> = reference.iter().filter(|m| **m != mine).cloned().collect();
        assert_eq!(got, expected, "client {k} saw another order");
        clients.push(ws);
    }
    clients.push(observer);
    for ws in &mut clients {
        ws.close(None).await.expect("close");
        drain_until_end(ws, DEADLINE).await;
    }
    // Every connection is billed once, by the instance it reached; the relayed ones name the
    // owner's peer listener as their backend.
    let counts = eventually("31 connection records", || async {
        let counts: Vec<usize> = c.weirs.iter().map(|w| room_records(w).len()).collect();
        (counts.iter().sum::<usize>() == 31).then_some(counts)
    })
    .await;
    assert_eq!(counts, vec![11, 10, 10]);
    for w in &c.weirs[1..] {
        assert!(room_records(w)
            .iter()
            .all(|r| r.identity.backend.map(|a| a.to_string()).as_deref() == Some(c.peers[0].as_str())));
    }
    // One object record in all, from the owner, counting every member.
    let objects = eventually("the object record", || async {
        let all: Vec<_> = c.weirs.iter().flat_map(|w| w.object_records()).collect();
        (!all.is_empty()).then_some(all)
    })
    .await;
    assert_eq!(objects.len(), 1, "{objects:?}");
    assert_eq!(c.weirs[0].object_records().len(), 1);
    assert_eq!(objects[0].connections, 31);
    // The occupancy ended: the owner key is gone.
    eventually("the owner key deleted", || async { c.etcd.keys("t/objects/").await.is_empty().then_some(()) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_owner_gets_its_relayed_clients_1012_and_a_successor_with_a_higher_token() {
    let mut c = start_cluster(3).await;
    let _local = join(&c.weirs[0], "lobby").await;
    let mut relayed = Vec::new();
    for i in [1, 2, 1, 2] {
        relayed.push(join(&c.weirs[i], "lobby").await);
    }
    let before = c.etcd.keys("t/objects/").await;
    assert_eq!(before.len(), 1);
    let killed = Instant::now();
    c.weirs[0].kill9();
    for ws in &mut relayed {
        assert_eq!(close_code(ws, Duration::from_secs(2)).await, Some(1012));
    }
    let closed_after = killed.elapsed();
    assert!(closed_after < Duration::from_secs(1), "1012 came after {closed_after:?}");
    // Until the dead owner's lease expires its key stands: 503 object_moving, then a new owner.
    let refused = std::sync::atomic::AtomicUsize::new(0);
    let mut ws = eventually("a new owner", || async {
        match try_join(&c.weirs[1], "lobby").await {
            Ok(ws) => Some(ws),
            Err(status) => {
                assert_eq!(status, 503);
                refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                None
            }
        }
    })
    .await;
    let refused = refused.into_inner();
    let moved_after = killed.elapsed();
    let after = c.etcd.keys("t/objects/").await;
    assert_eq!(after.len(), 1);
    assert!(after[0].2 > before[0].2, "the fencing token grows: {before:?} → {after:?}");
    assert!(after[0].1.contains("\"weir-1\""), "{after:?}");
    // The room works again across instances.
    let mut other = join(&c.weirs[2], "lobby").await;
    other.send(Message::text("after")).await.expect("send");
    assert_eq!(member_messages(&mut ws, 1).await, vec!["after".to_string()]);
    eprintln!("cluster failover: 1012 after {closed_after:?}; new owner after {moved_after:?} ({refused} refusals)");
}

/// Issue 13, test 3: an owner paused (SIGSTOP) longer than its lease TTL. etcd expires its lease
/// and another instance claims the room while it is frozen; once resumed, the old owner serves
/// nothing more: its clients (local and relayed) get 1012 within a second, a message one of them
/// sends at once reaches nobody and is not in the shared history (PostgreSQL), and the successor
/// keeps the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_owner_evicts_its_objects_itself_and_never_serves_beside_its_successor() {
    let pg = Postgres::start_new().await;
    let history = format!("  history: {{postgres: \"{}\"}}\n", pg.url());
    let c = start_cluster_with(3, |_| CONFIG.to_string(), &history).await;
    let mut local = join(&c.weirs[0], "lobby").await;
    let mut relayed = join(&c.weirs[1], "lobby").await;
    local.send(Message::text("before")).await.expect("send");
    assert_eq!(member_messages(&mut relayed, 1).await, vec!["before".to_string()]);
    let before = c.etcd.keys("t/objects/").await;
    assert!(before.len() == 1 && before[0].1.contains("\"weir-0\""), "{before:?}");
    signal(c.weirs[0].pid(), "STOP");
    // The lease (TTL 2 s) expires on etcd's side: the owner key goes with it.
    eventually("the paused owner's key expired", || async {
        let keys = c.etcd.keys("t/objects/").await;
        keys.iter().all(|k| !k.1.contains("\"weir-0\"")).then_some(())
    })
    .await;
    let mut successor = join(&c.weirs[1], "lobby").await;
    let after = c.etcd.keys("t/objects/").await;
    assert!(after.len() == 1 && after[0].1.contains("\"weir-1\""), "{after:?}");
    assert!(after[0].2 > before[0].2, "the fencing token grows: {before:?} → {after:?}");
    signal(c.weirs[0].pid(), "CONT");
    let resumed = Instant::now();
    // A message sent the moment the old owner resumes must not be ordered by it.
    let _ = local.send(Message::text("late")).await;
    assert_eq!(close_code(&mut local, Duration::from_secs(2)).await, Some(1012), "{}", c.weirs[0].log());
    assert_eq!(close_code(&mut relayed, Duration::from_secs(2)).await, Some(1012));
    let evicted_after = resumed.elapsed();
    assert!(evicted_after < Duration::from_secs(1), "1012 came {evicted_after:?} after SIGCONT");
    // The successor's room goes on, without the late message, and keeps its key.
    let mut other = join(&c.weirs[2], "lobby").await;
    other.send(Message::text("marker")).await.expect("send");
    assert_eq!(member_messages(&mut successor, 1).await, vec!["marker".to_string()]);
    assert_eq!(c.etcd.keys("t/objects/").await, after);
    let text = c.weirs[0].metrics().await;
    assert!(metric(&text, "weir_cluster_lease_losses_total", &[]).unwrap_or(0.0) >= 1.0, "{text}");
    let moves = metric(&text, "weir_object_moves_total", &[("namespace", "rooms"), ("reason", "claim_lost")]);
    assert_eq!(moves, Some(1.0), "{text}");
    // The old owner joins again with a new lease, and relays its clients to the successor.
    c.weirs[0].metric_eventually("weir_cluster_healthy", &[], |v| v == 1.0).await;
    let mut back = join(&c.weirs[0], "lobby").await;
    c.weirs[0].metric_eventually("weir_peer_relays_active", &[], |v| v == 1.0).await;
    successor.send(Message::text("welcome back")).await.expect("send");
    assert_eq!(member_messages(&mut back, 1).await, vec!["welcome back".to_string()]);
    // The shared history holds the room's messages in order, and never the late one.
    let (_ws, welcome, kept) = try_join_path(&c.weirs[2], "/rooms/lobby?since=0").await.expect("join");
    assert_eq!(kept, ["before", "marker", "welcome back"], "{welcome}");
    assert_eq!(welcome["seq"].as_u64(), Some(3), "{welcome}");
    eprintln!("cluster pause: the old owner evicted its clients {evicted_after:?} after SIGCONT");
}

/// Issue 13, test 4: etcd stopped, then started again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn while_etcd_is_down_object_routes_answer_503_and_pool_routes_work() {
    let mut c = start_cluster(2).await;
    let mut ws = join(&c.weirs[1], "lobby").await;
    ws.close(None).await.expect("close");
    drain_until_end(&mut ws, DEADLINE).await;
    let stopped = Instant::now();
    c.etcd.stop();
    for w in &c.weirs {
        eventually("503 cluster_unavailable", || async {
            (try_join(w, "lobby").await.err() == Some(503)).then_some(())
        })
        .await;
    }
    let refused_after = stopped.elapsed();
    for w in &c.weirs {
        w.metric_eventually("weir_cluster_healthy", &[], |v| v == 0.0).await;
        let text = w.metrics().await;
        let n = metric(&text, "weir_handshake_rejections_total", &[("reason", "cluster_unavailable")]);
        assert!(n.unwrap_or(0.0) >= 1.0, "{text}");
        // A pool route never touches etcd.
        let mut echo = connect(w, "/echo").await;
        echo.send(Message::text("ping")).await.expect("send");
        assert_eq!(recv(&mut echo).await, Message::text("ping"));
    }
    // etcd returns (same data): every instance joins again and the room works across them.
    c.etcd.restart().await;
    let restarted = Instant::now();
    for w in &c.weirs {
        w.metric_eventually("weir_cluster_healthy", &[], |v| v == 1.0).await;
        w.metric_eventually("weir_cluster_members", &[], |v| v == 2.0).await;
    }
    let mut a = eventually("a room after etcd returned", || async { try_join(&c.weirs[0], "lobby").await.ok() }).await;
    let recovered_after = restarted.elapsed();
    let mut b = join(&c.weirs[1], "lobby").await;
    b.send(Message::text("again")).await.expect("send");
    assert_eq!(member_messages(&mut a, 1).await, vec!["again".to_string()]);
    eprintln!("cluster: object routes refused {refused_after:?} after etcd stopped; served again {recovered_after:?} after it returned");
}

/// Issue 13, test 5: a host-namespace id. Two instances see host `a` differently (weir-1's
/// health check finds it failing, weir-0 checks nothing), yet every client of one id reaches the
/// one host recorded in etcd, whichever instance placed it first; the records go when the last
/// connection anywhere ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_with_different_health_views_send_an_id_to_its_one_recorded_host() {
    let a = ObjectHost::start("a").await;
    let b = ObjectHost::start("b").await;
    let keys = [a.addr.to_string(), b.addr.to_string()];
    let config = |i: usize| {
        let health = if i == 0 { "{kind: none}" } else { "{kind: handshake, interval: 200ms, path: /healthz}" };
        format!(
            "objects:\n  - {{name: ns, id: {{path: \"/o/{{id}}\"}}, hosts: [\"{}\", \"{}\"], health_check: {health}}}\nroutes:\n  - {{name: objects, path_prefix: /o, object: ns}}\n",
            keys[0], keys[1]
        )
    };
    let c = start_cluster_with(2, config, "").await;
    a.set_healthy(false);
    let a_label = keys[0].clone();
    c.weirs[1]
        .metric_eventually("weir_backend_healthy", &[("namespace", "ns"), ("backend", &a_label)], |v| v == 0.0)
        .await;
    // Ids whose rendezvous owner (both hosts up) is `a`.
    let ids: Vec<String> = (0..)
        .map(|k| format!("doc-{k}"))
        .filter(|id| {
            weir::objects::placement::owner("ns", id, [(0, keys[0].as_str()), (1, keys[1].as_str())]) == Some(0)
        })
        .take(2)
        .collect();
    // First id: placed by weir-0 (a looks healthy there) on a; weir-1's clients follow the
    // record to a, though weir-1 would never place an id on a now.
    let mut live = Vec::new();
    let (ws, host) = hello(&c.weirs[0], &ids[0]).await;
    assert_eq!(host, "a");
    live.push(ws);
    for _ in 0..4 {
        let (ws, host) = hello(&c.weirs[1], &ids[0]).await;
        assert_eq!(host, "a", "weir-1 must use the recorded host, not its own health view");
        live.push(ws);
    }
    // Second id: placed by weir-1 first (on b, as a is down in its view); weir-0's clients
    // follow to b, though b is not the id's rendezvous owner in weir-0's view.
    let (ws, host) = hello(&c.weirs[1], &ids[1]).await;
    assert_eq!(host, "b");
    live.push(ws);
    for _ in 0..4 {
        let (ws, host) = hello(&c.weirs[0], &ids[1]).await;
        assert_eq!(host, "b", "weir-0 must use the recorded host");
        live.push(ws);
    }
    // One host per id, as both hosts saw it; each instance holds one record per id.
    for (id, host, other) in [(&ids[0], &a, &b), (&ids[1], &b, &a)] {
        assert_eq!(host.visits().iter().filter(|v| &v.id == id).count(), 5);
        assert_eq!(other.visits().iter().filter(|v| &v.id == id).count(), 0, "{id} reached two hosts");
        let recorded = c.etcd.keys(&format!("t/hosts/ns/{id}/")).await;
        assert_eq!(recorded.len(), 2, "{recorded:?}");
        assert!(recorded.iter().all(|r| r.1.contains(&format!("\"{}\"", host.addr))), "{recorded:?}");
    }
    for ws in &mut live {
        ws.close(None).await.expect("close");
        drain_until_end(ws, DEADLINE).await;
    }
    eventually("the host records deleted", || async { c.etcd.keys("t/hosts/").await.is_empty().then_some(()) }).await;
    // With no connection left anywhere, the id is placed afresh: weir-1 now places it on b.
    let (_ws, host) = hello(&c.weirs[1], &ids[0]).await;
    assert_eq!(host, "b");
}

/// Connect to host-namespace object `id` through `weir`; the client and the name its host greets
/// with.
async fn hello(weir: &Weir, id: &str) -> (Client, String) {
    let mut ws = connect(weir, &format!("/o/{id}")).await;
    let Message::Text(t) = recv(&mut ws).await else { panic!("expected the host's greeting") };
    (ws, t.as_str().trim_start_matches("host:").to_string())
}

/// Join `path` through `weir`: the client, its welcome and the history it announces; `None`
/// while the owner is moving (503).
async fn try_join_path(weir: &Weir, path: &str) -> Option<(Client, serde_json::Value, Vec<String>)> {
    let connecting = tokio_tungstenite::connect_async(weir.url(path));
    match tokio::time::timeout(DEADLINE, connecting).await.expect("connect timed out") {
        Ok((mut ws, _)) => {
            let first = recv(&mut ws).await;
            let Message::Text(welcome) = first else {
                // The room may refuse the join right after the 101 while it moves (1012).
                return None;
            };
            let welcome: serde_json::Value = serde_json::from_str(welcome.as_str()).expect("welcome JSON");
            assert_eq!(welcome["weir"], "welcome");
            let mut history = Vec::new();
            for _ in 0..welcome["history"].as_u64().unwrap_or(0) {
                history.push(recv(&mut ws).await.into_text().expect("text").to_string());
            }
            Some((ws, welcome, history))
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 503, "{}", weir.log());
            None
        }
        Err(e) => panic!("connect failed: {e}\n{}", weir.log()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_a_postgres_history_a_client_resumes_exactly_after_the_owner_is_killed() {
    // An upper bound: the sender goes on until the owner's death closes its connection (a fixed
    // small count could all be stored before the kill on a fast run).
    const SENT: usize = 100_000;
    let pg = Postgres::start_new().await;
    // History for every message the sender can send: what a resuming client missed is then
    // always in the window, however far the room got before the kill took effect (with 10 000,
    // a fast sender once had 11 503 stored by then, and the client resuming from 10 rightly got
    // a gap).
    let config = CONFIG.replace("room: {history: 100, send_queue: 256}", "room: {history: 100000, send_queue: 4096}");
    let history = format!("  history: {{postgres: \"{}\"}}\n", pg.url());
    let mut c = start_cluster_with(3, |_| config.clone(), &history).await;
    // weir-0 owns the room; the listeners and the sender are relayed from weir-1 and weir-2.
    let _owner_side = join(&c.weirs[0], "lobby").await;
    let (mut gone, welcome, _) = try_join_path(&c.weirs[1], "/rooms/lobby").await.expect("join");
    assert_eq!((welcome["seq"].as_u64(), welcome["from"].as_u64()), (Some(0), Some(1)), "{welcome}");
    let (mut through, _, _) = try_join_path(&c.weirs[2], "/rooms/lobby").await.expect("join");
    let mut sender = join(&c.weirs[2], "lobby").await;
    let sending = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        for i in 1..=SENT {
            if sender.send(Message::text(format!("m{i}"))).await.is_err() || tokio::time::Instant::now() > deadline {
                return;
            }
        }
    });
    // `through` reads until the owner's death closes it with 1012. Listeners number what they
    // receive (they never send): history F..S, then +1 each.
    let reading = tokio::spawn(async move {
        let mut seen: Vec<String> = Vec::new();
        let deadline = tokio::time::Instant::now() + DEADLINE;
        for _ in 0..SENT + 100 {
            match tokio::time::timeout_at(deadline, through.next()).await.expect("no close in time") {
                Some(Ok(Message::Text(t))) => {
                    let is_event =
                        serde_json::from_str::<serde_json::Value>(t.as_str()).is_ok_and(|v| v.get("weir").is_some());
                    if !is_event {
                        seen.push(t.to_string());
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    assert_eq!(frame.map(|f| u16::from(f.code)), Some(1012));
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            }
        }
        seen
    });
    // `gone` sees 10 messages and loses its connection; the room goes on, then its owner dies.
    let gone_seen = member_messages(&mut gone, 10).await;
    drop(gone);
    let stored = || async {
        pg.count("SELECT count(*) FROM weir_room_history WHERE namespace = 'rooms' AND room = 'lobby'").await
    };
    eventually("100 more messages stored", || async { (stored().await >= 110).then_some(()) }).await;
    let stored_at_kill = stored().await;
    c.weirs[0].kill9();
    let _ = sending.await;
    let through_seen = reading.await.expect("reader");
    let numbered = |n: usize| (1..=n).map(|i| format!("m{i}")).collect::<Vec<String>>();
    assert_eq!(gone_seen, numbered(10), "the room's order");
    assert_eq!(through_seen, numbered(through_seen.len()), "the room's order");
    // Back through weir-1 with since=<last seen>: the new owner (weir-1 or weir-2) sends
    // exactly the missed ones, none twice.
    let mut seq = 0;
    let mut back = Vec::new();
    for (name, last_seen) in [("gone", 10), ("through", through_seen.len())] {
        let (ws, welcome, missed) = eventually("a new owner", || async {
            try_join_path(&c.weirs[1], &format!("/rooms/lobby?since={last_seen}")).await
        })
        .await;
        seq = welcome["seq"].as_u64().expect("seq") as usize;
        assert_eq!(
            (welcome["from"].as_u64(), welcome["gap"].as_bool()),
            (Some(last_seen as u64 + 1), Some(false)),
            "{name}: {welcome}"
        );
        let resumed: Vec<String> = (last_seen + 1..=seq).map(|i| format!("m{i}")).collect();
        assert_eq!(missed, resumed, "{name}: exactly the missed messages, in order");
        back.push(ws);
    }
    assert!(seq as i64 >= stored_at_kill, "every stored message is kept: {seq} < {stored_at_kill}");
    assert!(stored_at_kill < SENT as i64, "the owner died while messages flowed");
    // The history is intact at the new owner: messages 1..=seq, in order, each once.
    let (_, welcome, all) = try_join_path(&c.weirs[2], "/rooms/lobby").await.expect("join the new owner");
    assert_eq!((welcome["seq"].as_u64(), welcome["from"].as_u64()), (Some(seq as u64), Some(1)), "{welcome}");
    assert_eq!(all, numbered(seq));
    assert_eq!(stored().await, seq as i64);
    // Live messages continue the numbers.
    let mut other = join(&c.weirs[2], "lobby").await;
    other.send(Message::text("after")).await.expect("send");
    assert_eq!(member_messages(&mut back[0], 1).await, vec!["after".to_string()]);
    // Through the new owner and through the other instance (a peer hop forwards the request
    // target, so `since` reaches the owner).
    for w in &c.weirs[1..] {
        let (_, welcome, tail) = try_join_path(w, &format!("/rooms/lobby?since={seq}")).await.expect("join");
        assert_eq!((welcome["seq"].as_u64(), tail), (Some(seq as u64 + 1), vec!["after".to_string()]));
    }
    let last_seen = through_seen.len();
    eprintln!(
        "postgres history: killed at {stored_at_kill} of {SENT} stored; {last_seen} seen through the kill, {} resumed; {seq} stored",
        seq - last_seen
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fenced_append_closes_the_room_with_1012_and_a_store_error_with_1011() {
    let mut pg = Postgres::start_new().await;
    let history = format!("  history: {{postgres: \"{}\"}}\n", pg.url());
    let c = start_cluster_with(1, |_| CONFIG.to_string(), &history).await;
    let w = &c.weirs[0];
    let (mut a, _, _) = try_join_path(w, "/rooms/fenced").await.expect("join");
    let (mut b, _, _) = try_join_path(w, "/rooms/fenced").await.expect("join");
    a.send(Message::text("before")).await.expect("send");
    assert_eq!(member_messages(&mut b, 1).await, vec!["before".to_string()]);
    // A newer owner took the room in PostgreSQL (as after a partition): the next append is
    // fenced, nothing is written, every member gets 1012.
    pg.query("UPDATE weir_room_owner SET token = token + 1000 WHERE room = 'fenced'").await;
    a.send(Message::text("stale")).await.expect("send");
    for ws in [&mut a, &mut b] {
        assert_eq!(close_code(ws, DEADLINE).await, Some(1012));
    }
    let fenced = [("namespace", "rooms")];
    w.metric_eventually("weir_room_history_fenced_total", &fenced, |v| v == 1.0).await;
    let rows = pg.query("SELECT convert_from(payload, 'UTF8') FROM weir_room_history WHERE room = 'fenced'").await;
    assert_eq!(rows, vec![vec!["before".to_string()]], "the fenced message was not stored");
    // A join with the old token is refused with 1012 too, and counted.
    let refused = tokio_tungstenite::connect_async(w.url("/rooms/fenced")).await;
    let (mut ws, _) = refused.expect("the 101 comes before the room's answer");
    assert_eq!(close_code(&mut ws, DEADLINE).await, Some(1012));
    w.metric_eventually("weir_room_history_fenced_total", &fenced, |v| v == 2.0).await;

    // Another room: PostgreSQL stops, the next message cannot be stored: 1011 for everyone,
    // nothing delivered; once it is back, a member resumes with since.
    let (mut a, _, _) = try_join_path(w, "/rooms/outage").await.expect("join");
    let (mut b, _, _) = try_join_path(w, "/rooms/outage").await.expect("join");
    a.send(Message::text("one")).await.expect("send");
    assert_eq!(member_messages(&mut b, 1).await, vec!["one".to_string()]);
    pg.stop();
    a.send(Message::text("lost")).await.expect("send");
    for ws in [&mut a, &mut b] {
        assert_eq!(close_code(ws, DEADLINE).await, Some(1011));
    }
    w.metric_eventually("weir_room_store_errors_total", &[("namespace", "rooms")], |v| v >= 1.0).await;
    pg.start().await;
    let (mut back, welcome, missed) =
        eventually("the room reopens", || async { try_join_path(w, "/rooms/outage?since=0").await }).await;
    assert_eq!((welcome["seq"].as_u64(), welcome["from"].as_u64()), (Some(1), Some(1)), "{welcome}");
    assert_eq!(missed, vec!["one".to_string()], "the undelivered message was not kept");
    let (mut other, _, _) = try_join_path(w, "/rooms/outage").await.expect("join");
    other.send(Message::text("two")).await.expect("send");
    assert_eq!(member_messages(&mut back, 1).await, vec!["two".to_string()]);
}

#[tokio::test]
async fn a_peer_hop_gets_request_head_for_its_line_and_head_together() {
    // One `request_head` bounds the signed line and the request head after it: a hop that took
    // most of it for the line does not get a fresh one for the head.
    let c = start_cluster_with(1, |_| CONFIG.to_string(), "timeouts:\n  request_head: 1s\n").await;
    let identity = weir::cluster::peer::Identity {
        from: "weir-x".into(),
        namespace: "rooms".into(),
        id: "slow".into(),
        token: 1,
        client: None,
        tenant: None,
        route: "rooms".into(),
        connection_id: "c1".into(),
        credential: "none".into(),
        at: 0,
    };
    let line = weir::cluster::peer::line(b"cluster-test-secret-0123456789", &identity);
    let (line, end) = line.split_at(line.len() - 2);
    let mut s = tokio::net::TcpStream::connect(&c.peers[0]).await.unwrap();
    let start = Instant::now();
    s.write_all(line).await.unwrap();
    // The stimulus: the line's end arrives 900 ms into the second; then a head that never ends.
    tokio::time::sleep(Duration::from_millis(900)).await;
    s.write_all(end).await.unwrap();
    s.write_all(b"GET /rooms/slow HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    trickle_until_closed(&mut s, b'X').await;
    let took = start.elapsed();
    assert!(took >= Duration::from_secs(1), "closed after {took:?}, before the 1 s for line and head");
    // A second `request_head` for the head would close it at 1.9 s at the earliest (900 ms +
    // 1 s, neither early); 1.8 s leaves a loaded machine 800 ms to deliver the close.
    assert!(took < Duration::from_millis(1800), "closed after {took:?}: the head got a second `request_head`");
}
