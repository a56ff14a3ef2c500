//! The demo page in a real browser: headless Chromium (Debian's `chromium`, installed by
//! `scripts/test.sh`) loads `GET /` and, as the shipped config does, talks to weir's built-in
//! echo backend (connect, send, see the echo, close) and to the built-in room object from two
//! tabs (join, chat, leave). Chromium is driven over the DevTools protocol with
//! tokio-tungstenite; no Node or WebDriver. Each step is a script run in a tab that clicks and
//! waits (10 s at most) for what the page shows.

use crate::support::{eventually, Weir, DEADLINE};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use tokio_tungstenite::tungstenite::Message;

/// Where Debian installs Chromium.
const CHROMIUM: &str = "/usr/bin/chromium";

/// A headless Chromium killed on drop.
struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start Chromium with its DevTools endpoint on a free port; returns it and the browser's
/// DevTools WebSocket URL.
fn start_browser() -> (Browser, String) {
    assert!(
        std::path::Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run ./scripts/test.sh, which installs Debian's chromium"
    );
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.split("DevTools listening on ").nth(1) {
                let _ = tx.send(url.trim().to_string());
            }
        }
    });
    let url = rx.recv_timeout(DEADLINE).expect("chromium did not print its DevTools URL");
    (Browser { child, _profile: profile }, url)
}

/// A DevTools protocol connection (flat sessions) to one browser.
struct Cdp {
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    next_id: u64,
}

/// Defined for every page script (see `Cdp::run`): `$`, `lines(id)` (the text of each child of
/// element `id`) and `wait(what, pred)`, polling `pred` for 10 s at most.
const PRELUDE: &str = r#"
  const $ = (id) => document.getElementById(id);
  const lines = (id) => Array.from($(id).children, (e) => e.textContent);
  const wait = (what, pred) => new Promise((resolve, reject) => {
    const t0 = Date.now();
    const timer = setInterval(() => {
      if (pred()) { clearInterval(timer); resolve(); }
      else if (Date.now() - t0 > 10000) {
        clearInterval(timer);
        reject(new Error("timed out waiting for " + what + "; log: " + lines("log").join(" | ") + "; chat: " + lines("chat").join(" | ")));
      }
    }, 20);
  });
"#;

impl Cdp {
    /// Connect to the browser's DevTools WebSocket.
    async fn connect(devtools: &str) -> Cdp {
        let connect = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(devtools));
        let (ws, _) = connect.await.expect("DevTools connect timed out").expect("connect to DevTools");
        Cdp { ws, next_id: 0 }
    }

    /// The next DevTools message.
    async fn next(&mut self) -> Value {
        loop {
            let frame =
                tokio::time::timeout(DEADLINE, self.ws.next()).await.expect("DevTools message").unwrap().unwrap();
            if let Message::Text(text) = frame {
                return serde_json::from_str(text.as_str()).unwrap();
            }
        }
    }

    /// Send `method` (on `session`, if any) and return its result; events before it are
    /// passed to `on_event`.
    async fn call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
        on_event: &mut dyn FnMut(&Value),
    ) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.ws.send(Message::text(msg.to_string())).await.unwrap();
        loop {
            let v = self.next().await;
            if v["id"] == json!(id) {
                assert!(v.get("error").is_none(), "{method} failed: {v}");
                return v["result"].clone();
            }
            on_event(&v);
        }
    }

    /// Open a new tab, attach to it (a flat session) and load `url` in it; returns the session.
    async fn open_tab(&mut self, url: &str) -> String {
        let mut ignore = |_: &Value| {};
        let target = self.call(None, "Target.createTarget", json!({"url": "about:blank"}), &mut ignore).await;
        let attached = self
            .call(None, "Target.attachToTarget", json!({"targetId": target["targetId"], "flatten": true}), &mut ignore)
            .await;
        let session = attached["sessionId"].as_str().unwrap().to_string();
        self.call(Some(&session), "Page.enable", json!({}), &mut ignore).await;
        let is_load = |v: &Value| v["method"] == json!("Page.loadEventFired") && v["sessionId"] == json!(session);
        let mut loaded = false;
        self.call(Some(&session), "Page.navigate", json!({"url": url}), &mut |v| loaded |= is_load(v)).await;
        while !loaded {
            loaded = is_load(&self.next().await);
        }
        session
    }

    /// Run `body` (the statements of an async function, with `PRELUDE` defined) in the tab of
    /// `session`, wait for it and return the string it returns.
    async fn run(&mut self, session: &str, body: &str) -> String {
        let expression = format!("(async () => {{{PRELUDE}{body}\n}})()");
        let params = json!({"expression": expression, "awaitPromise": true, "returnByValue": true});
        let result = self.call(Some(session), "Runtime.evaluate", params, &mut |_| {}).await;
        let value = result["result"]["value"].as_str();
        value.unwrap_or_else(|| panic!("the page script failed: {result}\nscript:\n{body}")).to_string()
    }
}

/// A headless Chromium with one DevTools connection.
async fn browser() -> (Browser, Cdp) {
    let (browser, devtools) = start_browser();
    let cdp = Cdp::connect(&devtools).await;
    (browser, cdp)
}

/// `s` as a JavaScript string literal.
fn js(s: &str) -> String {
    Value::from(s).to_string()
}

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
    assert_eq!((close.code, close.initiator.as_str(), close.clean), (Some(1000), "client", true));
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
