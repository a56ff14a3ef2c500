//! Room sequence numbers and `?since=N` resume on one instance (issue 13, "Resume"): the
//! welcome's `seq`/`from`/`gap`, exactly the missed messages after a reconnect, a gap when the
//! history no longer holds them, numbers that survive a restart; and the shared PostgreSQL
//! store driven directly: a stale owner's appends are fenced.

use crate::support::postgres::Postgres;
use crate::support::{connect, recv, Client, Weir};
use futures_util::SinkExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use weir::objects::history::{MessageKind, StoredMessage};
use weir::objects::history_pg::{PgError, PgHistory};

/// A room namespace keeping 5 messages.
const ROOMS: &str = "objects:\n  - {name: rooms, id: {path: \"/rooms/{id}\"}, builtin: room, room: {history: 5, send_queue: 64}}\nroutes:\n  - {name: rooms, path_prefix: /rooms, object: rooms}\n";

/// A weir event's JSON, `None` for a user message.
fn event(m: &Message) -> Option<Value> {
    let Message::Text(t) = m else { return None };
    serde_json::from_str::<Value>(t.as_str()).ok().filter(|v| v.get("weir").is_some())
}

/// Join `path`: the welcome and the history it announces (as text).
async fn join(weir: &Weir, path: &str) -> (Client, Value, Vec<String>) {
    let mut ws = connect(weir, path).await;
    let welcome = event(&recv(&mut ws).await).expect("the welcome first");
    assert_eq!(welcome["weir"], "welcome", "{welcome}");
    let mut history = Vec::new();
    for _ in 0..welcome["history"].as_u64().expect("history count") {
        history.push(recv(&mut ws).await.into_text().expect("text").to_string());
    }
    (ws, welcome, history)
}

/// The next `n` user messages (events skipped), as text.
async fn user_messages(ws: &mut Client, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    while got.len() < n {
        let m = recv(ws).await;
        if event(&m).is_none() {
            got.push(m.into_text().expect("text").to_string());
        }
    }
    got
}

fn numbers(welcome: &Value) -> (u64, u64, bool) {
    (welcome["seq"].as_u64().unwrap(), welcome["from"].as_u64().unwrap(), welcome["gap"].as_bool().unwrap())
}

#[tokio::test]
async fn a_member_that_reconnects_with_since_gets_exactly_the_messages_it_missed() {
    let data = tempfile::tempdir().unwrap();
    let extra = format!("data_dir: \"{}\"\n", data.path().display());
    let mut weir = Weir::start_with(ROOMS, &extra).await;
    let (mut sender, welcome, _) = join(&weir, "/rooms/r1").await;
    assert_eq!(numbers(&welcome), (0, 1, false), "an empty room: {welcome}");
    let (mut listener, _, _) = join(&weir, "/rooms/r1").await;
    for i in 1..=3 {
        sender.send(Message::text(format!("m{i}"))).await.unwrap();
    }
    // The listener numbers what it receives: 1, 2, 3.
    assert_eq!(user_messages(&mut listener, 3).await, ["m1", "m2", "m3"]);
    let last_seen = 3;
    listener.close(None).await.unwrap();
    // A third member sees the next ones arrive, so they are in the room's history.
    let (mut third, welcome, history) = join(&weir, "/rooms/r1").await;
    assert_eq!(numbers(&welcome), (3, 1, false), "{welcome}");
    assert_eq!(history, ["m1", "m2", "m3"]);
    for i in 4..=6 {
        sender.send(Message::text(format!("m{i}"))).await.unwrap();
    }
    assert_eq!(user_messages(&mut third, 3).await, ["m4", "m5", "m6"]);

    // Back with since=3: exactly 4, 5, 6, then live ones.
    let (mut back, welcome, history) = join(&weir, &format!("/rooms/r1?since={last_seen}")).await;
    assert_eq!(numbers(&welcome), (6, 4, false), "{welcome}");
    assert_eq!(history, ["m4", "m5", "m6"]);
    sender.send(Message::text("m7")).await.unwrap();
    assert_eq!(user_messages(&mut back, 1).await, ["m7"]);
    // Up to date: nothing, and the next one is `from`.
    let (_, welcome, history) = join(&weir, "/rooms/r1?since=7").await;
    assert_eq!((numbers(&welcome), history.len()), ((7, 8, false), 0), "{welcome}");

    // The history keeps 5 (3..7): since=1 missed 2, which is gone: what is kept, with a gap.
    let (_, welcome, history) = join(&weir, "/rooms/r1?since=1").await;
    assert_eq!(numbers(&welcome), (7, 3, true), "{welcome}");
    assert_eq!(history, ["m3", "m4", "m5", "m6", "m7"]);
    // From the future (a reset store): the normal history, with a gap.
    let (_, welcome, history) = join(&weir, "/rooms/r1?since=99").await;
    assert_eq!((numbers(&welcome), history.len()), ((7, 3, true), 5), "{welcome}");
    // Not a number: ignored.
    let (_, welcome, history) = join(&weir, "/rooms/r1?since=abc").await;
    assert_eq!((numbers(&welcome), history.len()), ((7, 3, false), 5), "{welcome}");

    // The numbers survive a restart (and the file store's compaction: 7 messages, 5 kept).
    for ws in [&mut sender, &mut back, &mut third] {
        ws.close(None).await.unwrap();
    }
    assert!(weir.terminate().is_some(), "weir did not stop");
    let weir = Weir::start_with(ROOMS, &extra).await;
    let (mut after, welcome, history) = join(&weir, "/rooms/r1?since=5").await;
    assert_eq!(numbers(&welcome), (7, 6, false), "{welcome}");
    assert_eq!(history, ["m6", "m7"]);
    let (mut other, _, _) = join(&weir, "/rooms/r1").await;
    other.send(Message::text("m8")).await.unwrap();
    assert_eq!(user_messages(&mut after, 1).await, ["m8"]);
    let (_, welcome, history) = join(&weir, "/rooms/r1?since=7").await;
    assert_eq!((numbers(&welcome), history), ((8, 8, false), vec!["m8".to_string()]));
}

/// `?acks=1`: a member that sends is told the number of each of its own messages, in the
/// room's order, so it can number everything it has and resume exactly, sending or not.
#[tokio::test]
async fn a_sender_with_acks_numbers_its_own_messages_and_resumes_exactly() {
    let data = tempfile::tempdir().unwrap();
    let extra = format!("data_dir: \"{}\"\n", data.path().display());
    let weir = Weir::start_with(ROOMS, &extra).await;
    let (mut a, welcome, _) = join(&weir, "/rooms/acks?acks=1").await;
    assert_eq!(numbers(&welcome), (0, 1, false));
    let (mut b, _, _) = join(&weir, "/rooms/acks").await;
    // a sends 1 and 2, then b sends 3: a hears "sent 1", "sent 2", then b's message.
    a.send(Message::text("a1")).await.unwrap();
    a.send(Message::text("a2")).await.unwrap();
    assert_eq!(user_messages(&mut b, 2).await, ["a1", "a2"]);
    b.send(Message::text("b3")).await.unwrap();
    let mut heard = Vec::new();
    while heard.len() < 3 {
        let m = recv(&mut a).await;
        match event(&m) {
            Some(e) if e["weir"] == "sent" => heard.push(format!("sent {}", e["seq"])),
            Some(_) => {}
            None => heard.push(m.into_text().unwrap().to_string()),
        }
    }
    assert_eq!(heard, ["sent 1", "sent 2", "b3"]);
    // Without acks, b gets no such event for its own message: its next message is a's.
    a.send(Message::text("a4")).await.unwrap();
    let next = recv(&mut b).await;
    assert_eq!(next.into_text().unwrap().as_str(), "a4", "b did not ask for acks");
    // a knows it has 1..=4 (4 by its ack): resuming from 4 gets nothing, from 2 exactly 3 and 4.
    let (_a2, welcome, kept) = join(&weir, "/rooms/acks?acks=1&since=4").await;
    assert_eq!((numbers(&welcome), kept.len()), ((4, 5, false), 0));
    let (_a3, welcome, kept) = join(&weir, "/rooms/acks?since=2&acks=1").await;
    assert_eq!((numbers(&welcome), kept), ((4, 3, false), vec!["b3".to_string(), "a4".to_string()]));
}

fn text(s: &str) -> StoredMessage {
    StoredMessage { kind: MessageKind::Text, data: bytes::Bytes::copy_from_slice(s.as_bytes()) }
}

#[tokio::test]
async fn a_stale_owner_of_a_postgres_room_writes_nothing() {
    let pg = Postgres::start_new().await;
    let url = pg.url();
    let old = PgHistory::new(&url, None);
    let new = PgHistory::new(&url, None);
    let (t1, t2) = (100, 200);
    let kept = old.open("rooms", "lobby", t1, 10, 1 << 20).await.expect("open with t1");
    assert_eq!((kept.last(), kept.len()), (0, 0));
    old.append("rooms", "lobby", t1, &[(1, text("a")), (2, text("b"))]).await.expect("append as owner");
    // The newer owner opens the room: it reads what the old one wrote.
    let kept = new.open("rooms", "lobby", t2, 10, 1 << 20).await.expect("open with t2");
    assert_eq!(kept.last(), 2);
    assert_eq!(kept.messages().cloned().collect::<Vec<_>>(), vec![text("a"), text("b")]);
    // The old owner is fenced: its appends insert nothing, and it cannot reopen the room.
    assert_eq!(old.append("rooms", "lobby", t1, &[(3, text("stale"))]).await, Err(PgError::Fenced));
    assert!(matches!(old.open("rooms", "lobby", t1, 10, 1 << 20).await, Err(PgError::Fenced)));
    assert_eq!(pg.count("SELECT count(*) FROM weir_room_history WHERE token = 100 AND seq = 3").await, 0);
    new.append("rooms", "lobby", t2, &[(3, text("c"))]).await.expect("the new owner appends");
    assert_eq!(pg.query("SELECT token FROM weir_room_owner").await, vec![vec!["200".to_string()]]);
    // Trimming keeps the newest rows; the history and the newest number come back on open.
    new.append("rooms", "lobby", t2, &[(4, text("d")), (5, text("e"))]).await.unwrap();
    assert_eq!(new.trim("rooms", "lobby", t2, 4).await, Ok(3));
    let kept = new.open("rooms", "lobby", t2, 10, 1 << 20).await.unwrap();
    assert_eq!((kept.first(), kept.last()), (4, 5));
    // Kept within the limits: 1 message.
    let kept = new.open("rooms", "lobby", t2, 1, 1 << 20).await.unwrap();
    assert_eq!(kept.messages().cloned().collect::<Vec<_>>(), vec![text("e")]);
    // Another room is independent.
    let kept = old.open("rooms", "other", t1, 10, 1 << 20).await.expect("another room");
    assert_eq!(kept.last(), 0);
}
