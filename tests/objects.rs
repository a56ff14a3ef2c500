//! Object namespaces: placement (deterministic, sticky while live), failover with 1012 and no
//! id on two hosts at once, id rules, the built-in room (order, history across a restart, slow
//! clients), size limits (1009) and protocol violations on built-in objects, object usage
//! records, and object hosts over TLS (`objects[].tls`: placement, probes, an untrusted CA).

use crate::support::hosts::{ObjectHost, Visit};
use crate::support::tls::TestCert;
use crate::support::{connect, eventually, free_port, raw_request, recv, upgrade_request, Client, Weir, DEADLINE};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use weir::objects::placement::owner;

/// YAML for namespace `ns` over `hosts` at `/o/{id}`, with `health` and `extra` keys.
fn hosts_config(hosts: &[String], health: &str, extra: &str) -> String {
    let list: Vec<String> = hosts.iter().map(|h| format!("\"{h}\"")).collect();
    format!(
        "objects:\n  - name: ns\n    id: {{path: \"/o/{{id}}\"}}\n    hosts: [{}]\n    health_check: {health}\n{extra}routes:\n  - {{name: objects, path_prefix: /o, object: ns}}\n",
        list.join(", ")
    )
}

/// The host that owns `id` among `hosts` (by config text), as weir's rendezvous computes it.
fn owner_of(id: &str, hosts: &[String]) -> usize {
    owner("ns", id, hosts.iter().map(String::as_str).enumerate()).unwrap()
}

/// `n` ids whose owner among `hosts` is `want`.
fn ids_owned_by(want: usize, hosts: &[String], n: usize) -> Vec<String> {
    (0..).map(|k| format!("room-{k}")).filter(|id| owner_of(id, hosts) == want).take(n).collect()
}

/// Connect to object `id` and read the host's greeting; returns the client and the host name.
async fn join(weir: &Weir, id: &str) -> (Client, String) {
    let mut ws = connect(weir, &format!("/o/{id}")).await;
    let Message::Text(hello) = recv(&mut ws).await else { panic!("expected the host's greeting") };
    let host = hello.as_str().strip_prefix("host:").expect("greeting").to_string();
    (ws, host)
}

/// Read until a close frame arrives; returns its code.
async fn close_code(ws: &mut Client) -> Option<u16> {
    loop {
        match tokio::time::timeout(DEADLINE, ws.next()).await.expect("no close within the deadline") {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

/// For every id, no visit on one host overlaps a visit on another.
fn assert_single_owner(visits: &[(String, Visit)]) {
    let mut by_id: HashMap<&str, Vec<&(String, Visit)>> = HashMap::new();
    for v in visits {
        by_id.entry(v.1.id.as_str()).or_default().push(v);
    }
    for (id, vs) in by_id {
        for (ha, a) in &vs {
            for (hb, b) in &vs {
                if ha == hb {
                    continue;
                }
                let a_first = a.closed.is_some_and(|end| end <= b.opened);
                let b_first = b.closed.is_some_and(|end| end <= a.opened);
                assert!(a_first || b_first, "{id} was served by {ha} and {hb} at once: {a:?} {b:?}");
            }
        }
    }
}

#[tokio::test]
async fn placement_is_deterministic_across_processes_and_hosts_learn_the_id() {
    let hosts = [ObjectHost::start("a").await, ObjectHost::start("b").await, ObjectHost::start("c").await];
    let keys: Vec<String> = hosts.iter().map(|h| h.addr.to_string()).collect();
    let config = hosts_config(&keys, "{kind: none}", "    forward_path: \"/objects/{namespace}/{id}\"\n");
    let (w1, w2) = (Weir::start(&config).await, Weir::start(&config).await);
    for k in 0..12 {
        let id = format!("id.{k}");
        let (mut c1, h1) = join(&w1, &id).await;
        let (mut c2, h2) = join(&w2, &id).await;
        assert_eq!(h1, h2, "two weir processes disagree on the owner of {id}");
        assert_eq!(h1, hosts[owner_of(&id, &keys)].name, "owner of {id} is not the rendezvous winner");
        c1.close(None).await.unwrap();
        c2.close(None).await.unwrap();
    }
    // Spread over more than one host, and every host was told the namespace and id.
    let served: Vec<usize> = hosts.iter().map(|h| h.visits().len()).collect();
    assert!(served.iter().filter(|&&n| n > 0).count() >= 2, "{served:?}");
    let mut ws = connect(&w1, "/o/q.1?token=t").await;
    recv(&mut ws).await;
    let v = hosts.iter().flat_map(|h| h.visits()).find(|v| v.id == "q.1").unwrap();
    assert_eq!((v.namespace.as_str(), v.target.as_str()), ("ns", "/objects/ns/q.1?token=t"));
}

#[tokio::test]
async fn ids_with_live_connections_stay_when_a_host_is_added() {
    let a = ObjectHost::start("a").await;
    let b_addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let keys = vec![a.addr.to_string(), b_addr.to_string()];
    let weir = Weir::start(&hosts_config(&keys, "{kind: tcp, interval: 200ms}", "")).await;
    let b_label = b_addr.to_string();
    weir.metric_eventually("weir_backend_healthy", &[("namespace", "ns"), ("backend", &b_label)], |v| v == 0.0).await;
    // Ids that belong to b once b is up; while b is down they live on a.
    let ids = ids_owned_by(1, &keys, 3);
    let mut live = Vec::new();
    for id in &ids {
        let (ws, host) = join(&weir, id).await;
        assert_eq!(host, "a");
        live.push(ws);
    }
    let b = ObjectHost::start_on("b", b_addr).await;
    weir.metric_eventually("weir_backend_healthy", &[("namespace", "ns"), ("backend", &b_label)], |v| v == 1.0).await;
    for id in &ids {
        let (_more, host) = join(&weir, id).await;
        assert_eq!(host, "a", "{id} has live connections on a; it must not move to the added host");
    }
    let fresh = ids_owned_by(1, &keys, 4).pop().unwrap();
    assert_eq!(join(&weir, &fresh).await.1, "b", "an id without connections goes to its rendezvous owner");
    // Once every connection of ids[0] is gone, it is placed fresh: on b.
    drop(live);
    eventually("ids[0] to go empty", || async {
        weir.object_records().iter().any(|r| r.object_id == ids[0]).then_some(())
    })
    .await;
    assert_eq!(join(&weir, &ids[0]).await.1, "b");
    let visits: Vec<(String, Visit)> = a
        .visits()
        .into_iter()
        .map(|v| ("a".to_string(), v))
        .chain(b.visits().into_iter().map(|v| ("b".to_string(), v)))
        .collect();
    assert_single_owner(&visits);
}

#[tokio::test]
async fn killing_an_owner_moves_its_ids_with_1012_and_never_two_owners() {
    let (a, b) = (ObjectHost::start("a").await, ObjectHost::start("b").await);
    let keys = vec![a.addr.to_string(), b.addr.to_string()];
    let weir = Weir::start(&hosts_config(&keys, "{kind: tcp, interval: 300ms}", "")).await;
    let ids = ids_owned_by(0, &keys, 5);
    let mut clients = Vec::new();
    for id in &ids {
        for _ in 0..10 {
            let (ws, host) = join(&weir, id).await;
            assert_eq!(host, "a");
            clients.push((id.clone(), ws));
        }
    }
    a.kill();
    // Every client is told to reconnect (1012), reconnects, and lands on b.
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|(id, mut ws)| {
            let url = weir.url(&format!("/o/{id}"));
            tokio::spawn(async move {
                let code = close_code(&mut ws).await;
                let (mut again, _) = tokio_tungstenite::connect_async(url).await.expect("reconnect");
                let Message::Text(hello) = recv(&mut again).await else { panic!("greeting") };
                (code, hello.to_string(), again)
            })
        })
        .collect();
    let mut reconnected = Vec::new();
    for t in tasks {
        let (code, hello, ws) = t.await.unwrap();
        assert_eq!(code, Some(1012));
        assert_eq!(hello, "host:b");
        reconnected.push(ws);
    }
    assert_eq!(reconnected.len(), 50);
    let visits: Vec<(String, Visit)> = a
        .visits()
        .into_iter()
        .map(|v| ("a".to_string(), v))
        .chain(b.visits().into_iter().map(|v| ("b".to_string(), v)))
        .collect();
    assert_eq!(visits.iter().filter(|(h, _)| h == "b").count(), 50);
    assert_single_owner(&visits);
    let text = weir.metrics().await;
    let moves = crate::support::metric(&text, "weir_object_moves_total", &[("namespace", "ns")]).unwrap_or(0.0);
    assert!(moves >= 5.0, "every id moved: {moves}\n{text}");
}

#[tokio::test]
async fn an_owner_failing_its_health_check_is_drained_before_its_ids_move() {
    let (a, b) = (ObjectHost::start("a").await, ObjectHost::start("b").await);
    let keys = vec![a.addr.to_string(), b.addr.to_string()];
    let weir = Weir::start(&hosts_config(&keys, "{kind: handshake, interval: 200ms, path: /healthz}", "")).await;
    // a takes its time to let go of an object; weir must wait for it before b may take it.
    a.set_close_delay(Duration::from_millis(300));
    let ids = ids_owned_by(0, &keys, 2);
    let mut clients = Vec::new();
    for id in &ids {
        for _ in 0..3 {
            clients.push((id.clone(), join(&weir, id).await.0));
        }
    }
    a.set_healthy(false);
    for (id, mut ws) in clients {
        assert_eq!(close_code(&mut ws).await, Some(1012), "{id}");
        assert_eq!(join(&weir, &id).await.1, "b");
    }
    // a saw weir's 1012 close and ended every connection before b took the ids.
    let visits: Vec<(String, Visit)> = a
        .visits()
        .into_iter()
        .map(|v| ("a".to_string(), v))
        .chain(b.visits().into_iter().map(|v| ("b".to_string(), v)))
        .collect();
    assert_single_owner(&visits);
    weir.metric_eventually("weir_object_moves_total", &[("namespace", "ns"), ("reason", "health_check")], |v| v == 2.0)
        .await;
    weir.metric_eventually("weir_object_evictions_total", &[("namespace", "ns")], |v| v == 6.0).await;
    // One moved occupancy per id.
    eventually("two moved object records", || async {
        (weir.object_records().into_iter().filter(|r| r.moved).count() == 2).then_some(())
    })
    .await;
}

#[tokio::test]
async fn bad_object_ids_get_400_naming_the_rule() {
    let weir = Weir::start(
        "objects:\n  - {name: e, id: {path: \"/e/{id}\", max_length: 8, allowed: \"a-z0-9\"}, builtin: echo}\n  - {name: q, id: {query: room}, builtin: echo}\nroutes:\n  - {path_prefix: /e, object: e}\n  - {path_prefix: /q, object: q}\n",
    )
    .await;
    for (path, want) in [
        ("/e/abcdefghij", "Object id is 10 bytes; max_length is 8"),
        ("/e/ab_c", "Object id has '_' at byte 2; allowed characters are a-z0-9"),
        ("/e/a%2", "Object id has a bad percent-escape"),
        ("/e/", "Object id must not be empty"),
        ("/e/a/b", "Missing object id: expected a path like /e/{id}"),
        ("/q?x=1", "Missing object id: expected the query parameter room"),
    ] {
        let (status, _, body) = raw_request(weir.addr, &upgrade_request(weir.addr, path, "")).await.unwrap();
        assert_eq!((status, body.as_str()), (400, want), "{path}");
    }
    let mut ws = connect(&weir, "/q?room=lobby").await;
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(recv(&mut ws).await, Message::text("hi"));
    eventually("six rejection records", || async {
        (weir.records().into_iter().filter(|r| r.status == 400).count() == 6).then_some(())
    })
    .await;
    weir.metric_eventually("weir_handshake_rejections_total", &[("reason", "bad_object_id")], |v| v == 6.0).await;
}

const ROOMS: &str = "objects:\n  - {name: rooms, id: {path: \"/rooms/{id}\"}, builtin: room, room: {history: 10, send_queue: 64}}\nroutes:\n  - {name: rooms, path_prefix: /rooms, object: rooms}\n";

/// Parse a weir room event.
fn event(m: &Message) -> Option<Value> {
    let Message::Text(t) = m else { return None };
    let v: Value = serde_json::from_str(t.as_str()).ok()?;
    v.get("weir").is_some().then_some(v)
}

/// The next user message (skipping weir events).
async fn next_user_message(ws: &mut Client) -> Message {
    loop {
        let m = recv(ws).await;
        if event(&m).is_none() {
            return m;
        }
    }
}

#[tokio::test]
async fn room_delivers_in_order_and_history_survives_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let extra = format!("data_dir: \"{}\"\n", data.path().display());
    let mut weir = Weir::start_with(ROOMS, &extra).await;
    let mut a = connect(&weir, "/rooms/lobby").await;
    let welcome = event(&recv(&mut a).await).unwrap();
    assert_eq!(
        (welcome["weir"].as_str(), welcome["history"].as_u64(), welcome["members"].as_u64()),
        (Some("welcome"), Some(0), Some(1))
    );
    let mut b = connect(&weir, "/rooms/lobby").await;
    assert_eq!(event(&recv(&mut b).await).unwrap()["members"], 2);
    let joined = event(&recv(&mut a).await).unwrap();
    assert_eq!((joined["weir"].as_str(), joined["members"].as_u64()), (Some("join"), Some(2)));
    // Two senders at once: each receiver sees the other's messages in the sender's order.
    let send = |mut ws: Client, tag: &'static str| {
        tokio::spawn(async move {
            for i in 0..15 {
                let m = if i % 3 == 0 {
                    Message::binary(format!("{tag}{i}").into_bytes())
                } else {
                    Message::text(format!("{tag}{i}"))
                };
                ws.send(m).await.unwrap();
            }
            ws
        })
    };
    let (ta, tb) = (send(a, "a"), send(b, "b"));
    let (mut a, mut b) = (ta.await.unwrap(), tb.await.unwrap());
    for (ws, from) in [(&mut a, "b"), (&mut b, "a")] {
        for i in 0..15 {
            let got = next_user_message(ws).await;
            let want = if i % 3 == 0 {
                Message::binary(format!("{from}{i}").into_bytes())
            } else {
                Message::text(format!("{from}{i}"))
            };
            assert_eq!(got, want);
        }
    }
    a.close(None).await.unwrap();
    b.close(None).await.unwrap();
    weir.object_records_eventually(1).await;
    assert!(weir.terminate().is_some(), "weir did not stop");

    // A new process with the same data_dir: a joining client gets the last 10 messages first,
    // in the room's order (the order both receivers agreed on is the store's order).
    let weir = Weir::start_with(ROOMS, &extra).await;
    let mut c = connect(&weir, "/rooms/lobby").await;
    let welcome = event(&recv(&mut c).await).unwrap();
    assert_eq!(welcome["history"], 10);
    let mut history = Vec::new();
    for _ in 0..10 {
        history.push(recv(&mut c).await);
    }
    let last = |tag: &str| -> Vec<String> {
        history
            .iter()
            .filter_map(|m| String::from_utf8(m.clone().into_data().to_vec()).ok())
            .filter(|s| s.starts_with(tag))
            .collect()
    };
    for tag in ["a", "b"] {
        let seq: Vec<u32> = last(tag).iter().map(|s| s[1..].parse().unwrap()).collect();
        assert!(seq.windows(2).all(|w| w[0] < w[1]), "history keeps each sender's order: {seq:?}");
        assert!(seq.last().is_none_or(|&n| n == 14), "history ends with the newest: {seq:?}");
    }
    // A message after the restart reaches other members and the history grows.
    let mut d = connect(&weir, "/rooms/lobby").await;
    assert_eq!(event(&recv(&mut d).await).unwrap()["history"], 10);
    for _ in 0..10 {
        recv(&mut d).await;
    }
    c.send(Message::text("after restart")).await.unwrap();
    assert_eq!(next_user_message(&mut d).await, Message::text("after restart"));
    // Members cannot forge weir's events: such a message closes its sender with 1008.
    d.send(Message::text(r#" {"weir":"leave","member":1,"members":0}"#)).await.unwrap();
    assert_eq!(close_code(&mut d).await, Some(1008));
    let left = loop {
        let m = recv(&mut c).await;
        let e = event(&m).expect("only weir's own events reach c");
        if e["weir"] == "leave" {
            break e;
        }
    };
    assert_eq!((left["reason"].as_str(), left["members"].as_u64()), (Some("closed"), Some(1)));
}

// Two threads: the reading member must not be starved by the sending loop of the same test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_room_client_is_closed_with_1013_and_the_room_goes_on() {
    let data = tempfile::tempdir().unwrap();
    let weir = Weir::start_with(ROOMS, &format!("data_dir: \"{}\"\n", data.path().display())).await;
    // The slow client joins and never reads again.
    let (mut slow, _) = crate::support::wire::raw_client(weir.addr, "/rooms/busy", "", b"").await;
    let mut fast = connect(&weir, "/rooms/busy").await;
    let mut sender = connect(&weir, "/rooms/busy").await;
    let payload = "x".repeat(32 * 1024);
    // The reading member keeps up: the sender never runs more than 32 messages ahead of it
    // (this test's machine may be slower at reading than at sending), while the slow member
    // falls behind by everything.
    let (progress, mut seen) = tokio::sync::watch::channel(0usize);
    let reader = tokio::spawn(async move {
        let mut got = 0;
        let mut left = None;
        while got < 600 {
            let m = recv(&mut fast).await;
            match event(&m) {
                Some(e) if e["weir"] == "leave" => left = Some(e),
                Some(_) => {}
                None => {
                    got += 1;
                    let _ = progress.send(got);
                }
            }
        }
        (got, left)
    });
    for i in 0..600usize {
        sender.send(Message::text(format!("{i}:{payload}"))).await.unwrap();
        let behind = tokio::time::timeout(DEADLINE, seen.wait_for(|&got| got + 32 > i)).await;
        assert!(behind.is_ok_and(|r| r.is_ok()), "the reading member stopped receiving at {}", *seen.borrow());
    }
    let (got, left) = match tokio::time::timeout(DEADLINE, reader).await.expect("the fast member was slowed down") {
        Ok(r) => r,
        Err(e) => panic!(
            "fast reader failed: {e}\n{}",
            weir.log().lines().filter(|l| l.contains("slow") || l.contains("room")).collect::<Vec<_>>().join("\n")
        ),
    };
    assert_eq!(got, 600, "the fast member got every message");
    let left = left.expect("the slow member's leave is announced");
    assert_eq!(left["reason"], "slow");
    weir.metric_eventually("weir_room_slow_clients_total", &[("namespace", "rooms")], |v| v == 1.0).await;
    // The slow client finds a 1013 close after the backlog it had in its socket buffers (or
    // the connection cut if weir could not deliver the close within a second).
    let mut code = None;
    for _ in 0..100_000 {
        match tokio::time::timeout(DEADLINE, slow.read_frame()).await.expect("slow client read") {
            Some(f) if f.opcode() == 0x8 => {
                code = f.close_code();
                break;
            }
            Some(_) => continue,
            None => break,
        }
    }
    assert!(code.is_none() || code == Some(1013), "{code:?}");
}

#[tokio::test]
async fn object_usage_records_equal_what_the_clients_did() {
    let host = ObjectHost::start("h").await;
    let config = format!(
        "objects:\n  - {{name: echo, id: {{path: \"/echo/{{id}}\"}}, builtin: echo, idle_window: 100ms}}\n  - {{name: hosted, id: {{header: X-Doc}}, hosts: [\"{}\"], health_check: {{kind: none}}}}\nroutes:\n  - {{path_prefix: /echo, object: echo}}\n  - {{path_prefix: /doc, object: hosted}}\n",
        host.addr
    );
    let weir = Weir::start(&config).await;
    // Built-in echo: two overlapping clients on one id.
    let mut c1 = connect(&weir, "/echo/x").await;
    let mut c2 = connect(&weir, "/echo/x").await;
    let mut bytes = 0;
    let mut first_echo = None;
    for (i, ws) in [(3usize, &mut c1), (5, &mut c2)] {
        for k in 0..i {
            let m = format!("message {k} of {i}");
            bytes += m.len() as u64;
            ws.send(Message::text(m.clone())).await.unwrap();
            assert_eq!(recv(ws).await, Message::text(m));
            first_echo.get_or_insert_with(std::time::Instant::now);
        }
    }
    // The object's active time runs from its first message to its end (the 100 ms window covers
    // every gap), so messages until 3 ms after the first echo came back (the first message was
    // processed before it, the last one after) make it at least 3 ms: never rounded to 0.
    let mut messages = 8;
    while first_echo.is_some_and(|t| t.elapsed() < Duration::from_millis(3)) && messages < 100_000 {
        let m = format!("message {messages}");
        bytes += m.len() as u64;
        c2.send(Message::text(m.clone())).await.unwrap();
        assert_eq!(recv(&mut c2).await, Message::text(m));
        messages += 1;
    }
    c1.close(None).await.unwrap();
    crate::support::drain_until_end(&mut c1, DEADLINE).await;
    c2.close(None).await.unwrap();
    crate::support::drain_until_end(&mut c2, DEADLINE).await;
    // A hosted object, id from a header.
    let request = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(weir.url("/doc")).map(
        |mut r| {
            r.headers_mut().insert("x-doc", "d1".parse().unwrap());
            r
        },
    );
    let (mut d, _) = tokio_tungstenite::connect_async(request.unwrap()).await.unwrap();
    assert_eq!(recv(&mut d).await, Message::text("host:h"));
    d.send(Message::binary(vec![7u8; 1000])).await.unwrap();
    assert_eq!(recv(&mut d).await, Message::binary(vec![7u8; 1000]));
    d.close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame { code: CloseCode::Normal, reason: "".into() }))
        .await
        .unwrap();
    crate::support::drain_until_end(&mut d, DEADLINE).await;

    let objects = weir.object_records_eventually(2).await;
    let x = objects.iter().find(|r| r.namespace == "echo").unwrap();
    assert_eq!((x.object_id.as_str(), x.host.as_str()), ("x", "builtin:echo"));
    assert_eq!((x.connections, x.peak_connections), (2, 2));
    assert_eq!((x.messages_in, x.messages_out), (messages, messages));
    assert!(x.payload_bytes_in >= bytes && x.payload_bytes_out >= bytes, "{x:?}");
    // At least the 3 ms the messages spanned, never past the connected time.
    assert!(x.active_ms >= 2 && x.active_ms <= x.connected_ms, "{x:?}");
    assert_eq!(x.idle_window_ms, 100);
    let d1 = objects.iter().find(|r| r.namespace == "hosted").unwrap();
    assert_eq!((d1.object_id.as_str(), d1.host.clone()), ("d1", host.addr.to_string()));
    assert_eq!((d1.connections, d1.messages_in, d1.messages_out), (1, 1, 2), "the greeting and the echo");
    // Every connection record names its object, and the sums agree with the object record.
    let conns: Vec<_> = weir.records().into_iter().filter(|r| r.status == 101).collect();
    assert_eq!(conns.len(), 3);
    let on_x: Vec<_> = conns
        .iter()
        .filter(|r| r.identity.object.as_ref().is_some_and(|o| o.namespace == "echo" && o.id == "x"))
        .collect();
    assert_eq!(on_x.len(), 2);
    assert_eq!(on_x.iter().map(|r| r.client_to_backend.messages).sum::<u64>(), x.messages_in);
    assert_eq!(on_x.iter().map(|r| r.client_to_backend.payload_bytes).sum::<u64>(), x.payload_bytes_in);
    assert_eq!(on_x.iter().map(|r| r.backend_to_client.payload_bytes).sum::<u64>(), x.payload_bytes_out);
    weir.metric_eventually("weir_objects_active", &[("namespace", "echo")], |v| v == 0.0).await;
    weir.metric_eventually("weir_object_placements_total", &[("namespace", "echo")], |v| v == 1.0).await;
}

/// Rooms whose members may send at most `ROOM_MAX` bytes per message.
const ROOM_MAX: usize = 100;

#[tokio::test]
async fn room_message_over_max_message_closes_the_sender_with_1009() {
    let config = format!(
        "objects:\n  - {{name: rooms, id: {{path: \"/rooms/{{id}}\"}}, builtin: room, room: {{history: 10, send_queue: 64, max_message: {ROOM_MAX}}}}}\nroutes:\n  - {{name: rooms, path_prefix: /rooms, object: rooms}}\n"
    );
    let weir = Weir::start(&config).await;
    let mut a = connect(&weir, "/rooms/small").await;
    let a_addr = match a.get_ref() {
        tokio_tungstenite::MaybeTlsStream::Plain(s) => s.local_addr().unwrap().to_string(),
        _ => unreachable!("plain ws://"),
    };
    assert_eq!(event(&recv(&mut a).await).unwrap()["weir"], "welcome");
    let mut b = connect(&weir, "/rooms/small").await;
    assert_eq!(event(&recv(&mut b).await).unwrap()["members"], 2);
    // A message of exactly room.max_message bytes, text and binary, reaches the other member.
    let at_limit = "t".repeat(ROOM_MAX);
    a.send(Message::text(at_limit.clone())).await.unwrap();
    assert_eq!(next_user_message(&mut b).await, Message::text(at_limit));
    a.send(Message::binary(vec![9u8; ROOM_MAX])).await.unwrap();
    assert_eq!(next_user_message(&mut b).await, Message::binary(vec![9u8; ROOM_MAX]));
    // One byte more closes its sender with 1009, and it is not delivered.
    a.send(Message::text("o".repeat(ROOM_MAX + 1))).await.unwrap();
    assert_eq!(close_code(&mut a).await, Some(1009), "the sender of an oversized message gets a 1009 close");
    let left = loop {
        let m = recv(&mut b).await;
        let e = event(&m).unwrap_or_else(|| panic!("the oversized message reached another member: {m:?}"));
        if e["weir"] == "leave" {
            break e;
        }
    };
    assert_eq!((left["reason"].as_str(), left["members"].as_u64()), (Some("closed"), Some(1)));
    // The room goes on for the others.
    let mut c = connect(&weir, "/rooms/small").await;
    assert_eq!(event(&recv(&mut c).await).unwrap()["history"], 2, "the oversized message is not in the history");
    c.send(Message::text("still here")).await.unwrap();
    assert_eq!(next_user_message(&mut b).await, Message::text("still here"));
    // The sender's stop record shows weir's 1009.
    let r = eventually("the sender's stop record", || async {
        weir.records()
            .into_iter()
            .find(|r| r.identity.client_addr.map(|a| a.to_string()).as_deref() == Some(a_addr.as_str()))
    })
    .await;
    assert_eq!(r.close.as_ref().and_then(|c| c.code), Some(1009), "{r:?}");
    assert_eq!(r.client_to_backend.messages, 3, "{r:?}");
}

#[tokio::test]
async fn echo_object_message_over_the_limit_closes_with_1009() {
    use crate::support::wire::{frame, raw_client, BINARY, CLOSE, FIN, MASK, TEXT};
    let weir = Weir::start(
        "objects:\n  - {name: echo, id: {path: \"/echo/{id}\"}, builtin: echo}\nroutes:\n  - {name: echo, path_prefix: /echo, object: echo}\n",
    )
    .await;
    let (mut c, head) = raw_client(weir.addr, "/echo/big", "", b"").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    c.write(&frame(FIN | TEXT, Some(MASK), b"small")).await;
    assert_eq!(c.read_frame().await.expect("echo").payload, b"small");
    // A masked binary frame header announcing MAX_MESSAGE + 1 bytes, 64-bit length: tungstenite
    // refuses it from the header alone, so no payload needs to follow.
    let mut header = vec![FIN | BINARY, 0x80 | 127];
    header.extend_from_slice(&(weir::ws::MAX_MESSAGE as u64 + 1).to_be_bytes());
    header.extend_from_slice(&MASK);
    c.write(&header).await;
    let f = c.read_frame().await.expect("a close frame");
    assert_eq!((f.opcode(), f.close_code(), f.masked), (CLOSE, Some(1009), false), "{f:?}");
    assert_eq!(&f.payload[2..], b"message too big");
    // weir ends the connection after its close (it cannot read the rest of that frame).
    let rest = c.read_to_end().await;
    assert!(rest.is_empty(), "nothing follows the close frame: {rest:?}");
    // The stop record names weir's 1009 and only the payload bytes that arrived.
    let r = weir.records_eventually(1).await.remove(0);
    assert_eq!(r.close.as_ref().and_then(|c| c.code), Some(1009), "{r:?}");
    assert_eq!(r.client_to_backend.payload_bytes, 5, "{r:?}");
}

#[tokio::test]
async fn protocol_violation_on_a_builtin_object_is_counted_and_recorded() {
    use crate::support::wire::{frame, raw_client, FIN, MASK, TEXT};
    let weir = Weir::start(
        "objects:\n  - {name: echo, id: {path: \"/echo/{id}\"}, builtin: echo}\n  - {name: rooms, id: {path: \"/rooms/{id}\"}, builtin: room}\nroutes:\n  - {name: echo-route, path_prefix: /echo, object: echo}\n  - {name: room-route, path_prefix: /rooms, object: rooms}\n",
    )
    .await;
    for (route, path) in [("echo-route", "/echo/v"), ("room-route", "/rooms/v")] {
        let (mut c, head) = raw_client(weir.addr, path, "", b"").await;
        assert!(head.starts_with("HTTP/1.1 101"), "{route}: {head}");
        if route == "echo-route" {
            c.write(&frame(FIN | TEXT, Some(MASK), b"valid")).await;
            assert_eq!(c.read_frame().await.expect("echo").payload, b"valid");
        }
        // An unmasked client frame breaks RFC 6455 §5.1.
        c.write(&frame(FIN | TEXT, None, b"unmasked")).await;
        // weir closes it with 1002, as it closes a relayed connection, and ends it (bounded:
        // read_frame and read_to_end panic after DEADLINE).
        let mut code = None;
        while let Some(f) = c.read_frame().await {
            if f.opcode() == crate::support::wire::CLOSE {
                code = f.close_code();
                break;
            }
        }
        assert_eq!(code, Some(1002), "{route}: weir's close");
        c.read_to_end().await;
        weir.metric_eventually(
            "weir_protocol_violations_total",
            &[("route", route), ("direction", "client_to_backend"), ("reason", "unmasked_client_frame")],
            |v| v == 1.0,
        )
        .await;
        let r = eventually(&format!("the stop record on {route}"), || async {
            weir.records().into_iter().find(|r| r.identity.route.as_deref() == Some(route))
        })
        .await;
        assert_eq!(
            (r.outcome.as_ref(), r.reason.as_deref()),
            ("protocol_error", Some("client_to_backend: unmasked_client_frame")),
            "{route}: {r:?}"
        );
        let close = r.close.as_ref().map(|c| (c.code, c.initiator.as_ref()));
        assert_eq!(close, Some((Some(1002), "gateway")), "{route}: {r:?}");
    }
}

/// `hosts_config` with `tls: {ca_file, sni: localhost}` on the namespace.
fn tls_hosts_config(hosts: &[String], health: &str, ca: &std::path::Path) -> String {
    hosts_config(hosts, health, &format!("    tls: {{ca_file: \"{}\", sni: localhost}}\n", ca.display()))
}

/// Object hosts that speak only TLS: every client of one id reaches the same host (over TLS:
/// the hosts accept nothing else), handshake probes over TLS see a host go down and come back up,
/// and a namespace trusting another CA gets 502 `backend_tls`, never a plaintext attempt.
#[tokio::test]
async fn object_hosts_over_tls_keep_one_owner_per_id_are_probed_over_tls_and_refuse_an_untrusted_ca() {
    let cert = TestCert::localhost();
    let (a, b) = (ObjectHost::start_tls("a", &cert).await, ObjectHost::start_tls("b", &cert).await);
    let keys = vec![a.addr.to_string(), b.addr.to_string()];
    let health = "{kind: handshake, interval: 200ms, path: /healthz}";
    let weir = Weir::start(&tls_hosts_config(&keys, health, &cert.cert)).await;

    for want in 0..2 {
        for id in ids_owned_by(want, &keys, 2) {
            let (mut first, host1) = join(&weir, &id).await;
            let (mut second, host2) = join(&weir, &id).await;
            assert_eq!((host1.as_str(), host2.as_str()), (["a", "b"][want], ["a", "b"][want]), "{id}");
            first.send(Message::text("over tls")).await.unwrap();
            assert_eq!(recv(&mut first).await, Message::text("over tls"));
            first.close(None).await.unwrap();
            second.close(None).await.unwrap();
        }
    }
    let visits = a.visits().len() + b.visits().len();
    assert_eq!(visits, 8, "every connection reached a host over TLS");
    assert!(a.visits().iter().chain(b.visits().iter()).all(|v| v.namespace == "ns"));

    // Probes over TLS: a host answering 503 goes down, and up again once it answers 101.
    let labels = [("namespace", "ns"), ("backend", keys[0].as_str())];
    a.set_healthy(false);
    weir.metric_eventually("weir_backend_healthy", &labels, |v| v == 0.0).await;
    a.set_healthy(true);
    weir.metric_eventually("weir_backend_healthy", &labels, |v| v == 1.0).await;

    // A namespace that trusts another CA: 502 backend_tls, and nothing reached a host.
    let other_ca = TestCert::localhost();
    let c = ObjectHost::start_tls("c", &cert).await;
    let only = vec![c.addr.to_string()];
    let untrusting = Weir::start(&tls_hosts_config(&only, "{kind: none}", &other_ca.cert)).await;
    let (status, _, body) =
        raw_request(untrusting.addr, &upgrade_request(untrusting.addr, "/o/room-1", "")).await.unwrap();
    assert_eq!((status, body.as_str()), (502, "Backend TLS handshake failed"));
    untrusting
        .metric_eventually("weir_handshake_rejections_total", &[("route", "objects"), ("reason", "backend_tls")], |v| {
            v >= 1.0
        })
        .await;
    assert!(c.visits().is_empty(), "nothing reached the host in plaintext or otherwise");
}
