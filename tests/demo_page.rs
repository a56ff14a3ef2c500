//! The demo page in a real browser: headless Chromium (Debian's `chromium`, installed by
//! `scripts/test.sh`) loads `GET /`, clicks Connect, sends a message, sees the echo and closes,
//! through weir's built-in echo backend, as the shipped config does. Chromium is driven over the
//! DevTools protocol with tokio-tungstenite; no Node or WebDriver.

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
    assert!(std::path::Path::new(CHROMIUM).exists(), "{CHROMIUM} is missing: run ./scripts/test.sh, which installs Debian's chromium");
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

/// A DevTools protocol connection (flat sessions).
struct Cdp {
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    next_id: u64,
}

impl Cdp {
    /// Send `method` (on `session`, if any) and return its result; events before it are
    /// passed to `on_event`.
    async fn call(&mut self, session: Option<&str>, method: &str, params: Value, on_event: &mut dyn FnMut(&Value)) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.ws.send(Message::text(msg.to_string())).await.unwrap();
        loop {
            let frame = tokio::time::timeout(DEADLINE, self.ws.next()).await.expect("DevTools answer").unwrap().unwrap();
            let Message::Text(text) = frame else { continue };
            let v: Value = serde_json::from_str(text.as_str()).unwrap();
            if v["id"] == json!(id) {
                assert!(v.get("error").is_none(), "{method} failed: {v}");
                return v["result"].clone();
            }
            on_event(&v);
        }
    }

    /// Wait for an event named `method` on `session`.
    async fn event(&mut self, session: &str, method: &str) {
        loop {
            let frame = tokio::time::timeout(DEADLINE, self.ws.next()).await.expect("DevTools event").unwrap().unwrap();
            let Message::Text(text) = frame else { continue };
            let v: Value = serde_json::from_str(text.as_str()).unwrap();
            if v["method"] == json!(method) && v["sessionId"] == json!(session) {
                return;
            }
        }
    }
}

/// The user's session, as a script run in the page: connect, send, wait for the echo, close.
const SESSION_SCRIPT: &str = r#"(async () => {
  const log = () => document.getElementById("log").innerText;
  const wait = (pred) => new Promise((resolve, reject) => {
    const t0 = Date.now();
    const timer = setInterval(() => {
      if (pred()) { clearInterval(timer); resolve(); }
      else if (Date.now() - t0 > 10000) { clearInterval(timer); reject(new Error("timed out; log: " + log())); }
    }, 20);
  });
  document.getElementById("connect").click();
  await wait(() => log().includes("open"));
  document.getElementById("text").value = "hello from chromium";
  document.getElementById("send").click();
  await wait(() => log().includes("< hello from chromium"));
  document.getElementById("close").click();
  await wait(() => log().includes("closed: code 1000"));
  return log();
})()"#;

#[tokio::test]
async fn demo_page_talks_to_the_builtin_echo_in_chromium() {
    let weir = Weir::start(
        "demo_page: true\npools:\n  - name: demo\n    backends: [\"builtin:echo\"]\n    health_check: {kind: handshake, interval: 1s}\nroutes:\n  - {name: echo, path_prefix: /echo, pool: demo}\n",
    )
    .await;
    let (_browser, devtools) = start_browser();
    let (ws, _) = tokio_tungstenite::connect_async(devtools.as_str()).await.expect("connect to DevTools");
    let mut cdp = Cdp { ws, next_id: 0 };
    let mut ignore = |_: &Value| {};
    let target = cdp.call(None, "Target.createTarget", json!({"url": "about:blank"}), &mut ignore).await;
    let attached = cdp
        .call(None, "Target.attachToTarget", json!({"targetId": target["targetId"], "flatten": true}), &mut ignore)
        .await;
    let session = attached["sessionId"].as_str().unwrap().to_string();
    cdp.call(Some(&session), "Page.enable", json!({}), &mut ignore).await;
    cdp.call(Some(&session), "Page.navigate", json!({"url": format!("http://{}/", weir.addr)}), &mut ignore).await;
    cdp.event(&session, "Page.loadEventFired").await;
    let result = cdp
        .call(
            Some(&session),
            "Runtime.evaluate",
            json!({"expression": SESSION_SCRIPT, "awaitPromise": true, "returnByValue": true}),
            &mut ignore,
        )
        .await;
    let log = result["result"]["value"].as_str().unwrap_or_else(|| panic!("the page script failed: {result}"));
    assert!(log.contains("> hello from chromium"), "{log}");
    assert!(log.contains("< hello from chromium"), "{log}");
    assert!(log.contains("closed: code 1000 (bye)"), "{log}");

    let record = eventually("the browser's usage record", || async {
        weir.records().into_iter().find(|r| r.status == 101)
    })
    .await;
    assert_eq!(record.route.as_deref(), Some("echo"));
    assert_eq!(record.client_to_backend.messages, 1);
    assert_eq!(record.backend_to_client.messages, 1);
    assert_eq!(record.client_to_backend.payload_bytes, 19 + 5, "message + close payload (1000 + \"bye\")");
    let close = record.close.expect("close");
    assert_eq!((close.code, close.initiator.as_str(), close.clean), (Some(1000), "client", true));
    assert_eq!(record.outcome, "completed");
}
