//! The demo page in a real browser: headless Chromium (Debian's `chromium`, installed by
//! `scripts/test.sh`) loads `GET /` and, as the shipped config does, talks to weir's built-in
//! echo backend (connect, send, see the echo, close) and to the built-in room object from two
//! tabs (join, chat, leave). Chromium is driven by `support::browser`; each step is a script run
//! in a tab that clicks and waits (10 s at most) for what the page shows.

use crate::support::browser::{browser, js};
use crate::support::{eventually, Weir};

/// The user's echo session: connect, send, wait for the echo, close; returns the log.
const ECHO_SESSION: &str = r#"
  $("connect").click();
  await wait("open", () => lines("log").some((l) => l.includes("open")));
  $("text").value = "hello from chromium";
  $("send").click();
  await wait("the echo", () => lines("log").some((l) => l.includes("< hello from chromium")));
  $("close").click();
  await wait("the close", () => lines("log").some((l) => l.includes("closed: code 1000")));
  return lines("log").join("\n");
"#;

#[tokio::test]
async fn demo_page_talks_to_the_builtin_echo_in_chromium() {
    let weir = Weir::start(
        "demo_page: true\npools:\n  - name: demo\n    backends: [\"builtin:echo\"]\n    health_check: {kind: handshake, interval: 1s}\nroutes:\n  - {name: echo, path_prefix: /echo, pool: demo}\n",
    )
    .await;
    let (_browser, mut cdp) = browser().await;
    let tab = cdp.open_tab(&format!("http://{}/", weir.addr)).await;
    let log = cdp.run(&tab, ECHO_SESSION).await;
    assert!(log.contains("> hello from chromium"), "{log}");
    assert!(log.contains("< hello from chromium"), "{log}");
    assert!(log.contains("closed: code 1000 (bye)"), "{log}");

    let record =
        eventually("the browser's usage record", || async { weir.records().into_iter().find(|r| r.status == 101) })
            .await;
    assert_eq!(record.identity.route.as_deref(), Some("echo"));
    assert_eq!(record.client_to_backend.messages, 1);
    assert_eq!(record.backend_to_client.messages, 1);
    assert_eq!(record.client_to_backend.payload_bytes, 19 + 5, "message + close payload (1000 + \"bye\")");
    let close = record.close.expect("close");
    assert_eq!((close.code, close.initiator.as_ref(), close.clean), (Some(1000), "client", true));
    assert_eq!(record.outcome, "completed");
}

/// Script body: type `text` into the chat box and click Send.
fn say(text: &str) -> String {
    format!("$(\"chat-text\").value = {}; $(\"chat-send\").click();\n", js(text))
}

/// Script body: wait until the chat shows exactly the line `line`, described as `what`.
fn wait_line(what: &str, line: &str) -> String {
    format!("await wait({}, () => lines(\"chat\").includes({}));\n", js(what), js(line))
}

/// Script body: return the chat lines and the member count, one per line.
const CHAT: &str = r#"return lines("chat").concat("members: " + $("members").textContent).join("\n");"#;

/// Lines of `chat` (as returned by `CHAT`) equal to `line`.
fn count(chat: &str, line: &str) -> usize {
    chat.lines().filter(|l| *l == line).count()
}

#[tokio::test]
async fn demo_page_room_chat_between_two_tabs_in_chromium() {
    let weir = Weir::start(
        r#"demo_page: true
objects:
  - {name: rooms, id: {path: "/rooms/{id}"}, builtin: room, room: {history: 20}}
pools:
  - {name: demo, backends: ["builtin:echo"], health_check: {kind: none}}
routes:
  - {name: echo, path_prefix: /echo, pool: demo}
  - {name: rooms, path_prefix: /rooms, object: rooms}
"#,
    )
    .await;
    let room = format!("demo-{}", uuid::Uuid::now_v7().simple());
    let (_browser, mut cdp) = browser().await;
    let page = format!("http://{}/", weir.addr);
    let (alice, bob) = (cdp.open_tab(&page).await, cdp.open_tab(&page).await);
    // Join as `name`, expecting a welcome with `here` members.
    let join = |name: &str, here: usize| {
        format!("$(\"room\").value = {}; $(\"name\").value = {}; $(\"join\").click();\n", js(&room), js(name))
            + &wait_line("the welcome", &format!("welcome to {room}: {here} here, 0 earlier messages"))
            + CHAT
    };

    // Alice joins first, then Bob; Alice sees Bob join.
    let chat = cdp.run(&alice, &join("alice", 1)).await;
    assert!(chat.ends_with("members: 1"), "{chat}");
    let chat = cdp.run(&bob, &join("bob", 2)).await;
    assert!(chat.ends_with("members: 2"), "{chat}");
    let body = wait_line("bob's join", "member 2 joined (2 here)") + CHAT;
    let chat = cdp.run(&alice, &body).await;
    assert!(chat.ends_with("members: 2"), "{chat}");

    // Alice says two things; Bob sees both, once each, and answers. Every member gets the room's
    // messages in one order, so a second copy of Alice's first message would reach Bob before
    // her second, and an echo of her own messages would reach Alice before Bob's answer.
    let body = say("hello from alice") + &say("how are you?") + &wait_line("my own message", "me: how are you?") + CHAT;
    cdp.run(&alice, &body).await;
    let body = wait_line("alice's second message", "alice: how are you?") + &say("hi alice, fine") + CHAT;
    let chat = cdp.run(&bob, &body).await;
    assert_eq!(count(&chat, "alice: hello from alice"), 1, "{chat}");
    assert_eq!(chat.matches("hello from alice").count(), 1, "{chat}");
    assert_eq!(count(&chat, "me: hi alice, fine"), 1, "{chat}");
    let chat = cdp.run(&alice, &(wait_line("bob's answer", "bob: hi alice, fine") + CHAT)).await;
    assert_eq!(count(&chat, "me: hello from alice"), 1, "{chat}");
    assert_eq!(chat.matches("hello from alice").count(), 1, "alice's own message came back: {chat}");
    assert_eq!(chat.matches("how are you?").count(), 1, "{chat}");

    // Bob leaves; Alice sees it, then leaves too.
    let left = format!("you left {room} (code 1000, bye)");
    let leave = format!("$(\"leave\").click();\n{}{CHAT}", wait_line("my own leave", &left));
    let chat = cdp.run(&bob, &leave).await;
    assert!(chat.ends_with("members: -"), "{chat}");
    let chat = cdp.run(&alice, &(wait_line("bob's leave", "member 2 left (1 here)") + CHAT)).await;
    assert!(chat.ends_with("members: 1"), "{chat}");
    cdp.run(&alice, &leave).await;

    // Usage: one connection record per tab, and the room's occupancy once both have left.
    let object = eventually("the room's object record", || async {
        weir.object_records().into_iter().find(|r| r.object_id == room)
    })
    .await;
    assert_eq!(object.namespace, "rooms", "{object:?}");
    assert_eq!((object.connections, object.peak_connections), (2, 2), "{object:?}");
    assert!(object.messages_in >= 1, "{object:?}");
    let records: Vec<_> =
        weir.records().into_iter().filter(|r| r.identity.object.as_ref().is_some_and(|o| o.id == room)).collect();
    assert_eq!(records.len(), 2, "{records:?}");
    for r in &records {
        let o = r.identity.object.as_ref().unwrap();
        assert_eq!(
            (o.namespace.as_str(), r.identity.route.as_deref(), r.status),
            ("rooms", Some("rooms"), 101),
            "{r:?}"
        );
        assert_eq!(r.outcome, "completed", "{r:?}");
    }
    let sent: u64 = records.iter().map(|r| r.client_to_backend.messages).sum();
    assert_eq!(sent, 3, "alice sent two messages and bob one: {records:?}");
}

/// A route with an API key: the page, given the key, opens its WebSocket with the subprotocol
/// entry `weir.key.<key>` and echoes (billed to the key's tenant; the backend never sees the
/// entry); without the key the connection fails and the page says so.
#[tokio::test]
async fn demo_page_connects_with_an_api_key_as_a_subprotocol_entry_in_chromium() {
    const KEY: &str = "k-demo-0123456789abcdef";
    let backend = crate::support::backends::echo_backend().await;
    let weir = Weir::start(&format!(
        "demo_page: true\npools:\n  - {{name: p, backends: [\"{}\"], health_check: {{kind: none}}}}\nroutes:\n  - {{name: echo, path_prefix: /echo, pool: p, auth: {{api_keys: [{{sha256: \"{}\", tenant: acme}}]}}}}\n",
        backend.addr,
        weir::admission::auth::key_digest_hex(KEY)
    ))
    .await;
    let (_browser, mut cdp) = browser().await;
    let tab = cdp.open_tab(&format!("http://{}/", weir.addr)).await;

    // No key: the upgrade gets 401 and the browser fails the connection.
    let refused = r#"
      $("connect").click();
      await wait("the failure", () => lines("log").some((l) => l.includes("closed: code 1006")));
      return lines("log").join("\n");
    "#;
    let log = cdp.run(&tab, refused).await;
    assert!(log.contains("error"), "{log}");
    assert!(!log.contains("open (protocol"), "{log}");
    assert!(backend.seen().is_empty(), "no backend was touched");

    let with_key = format!("$(\"key\").value = {};\n{ECHO_SESSION}", js(KEY));
    let log = cdp.run(&tab, &with_key).await;
    assert!(log.contains("open (protocol: key)"), "the 101 names the key entry; shown as `key`: {log}");
    assert!(log.contains("< hello from chromium"), "{log}");
    assert!(!log.contains(KEY), "the page never shows the key: {log}");

    let seen = backend.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("sec-websocket-protocol"), None, "the key entry is taken out");
    assert_eq!(seen[0].header("x-weir-tenant"), Some("acme"));
    let records = eventually("both usage records", || async {
        let r = weir.records();
        (r.len() >= 2).then_some(r)
    })
    .await;
    let refused = records.iter().find(|r| r.status == 401).expect("the refusal's record");
    assert_eq!(refused.reason.as_deref(), Some("no_credential"));
    let admitted = records.iter().find(|r| r.status == 101).expect("the connection's record");
    assert_eq!(admitted.identity.tenant.as_deref(), Some("acme"));
    assert_eq!((admitted.client_to_backend.messages, admitted.backend_to_client.messages), (1, 1));
    assert!(!std::fs::read_to_string(&weir.usage).unwrap().contains(KEY), "never in a record");
}
