//! Headless Chromium driven over the DevTools protocol with tokio-tungstenite (no Node, no
//! WebDriver), for the tests of the pages weir serves (`demo_page`, `status_page`). Chromium is
//! Debian's `chromium`, installed by `scripts/test.sh`. Each step is a script run in a tab
//! (`Cdp::run`) that clicks and waits (10 s at most, `PRELUDE`'s `wait`) for what the page shows.

use super::DEADLINE;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use tokio_tungstenite::tungstenite::Message;

/// Where Debian installs Chromium.
const CHROMIUM: &str = "/usr/bin/chromium";

/// A headless Chromium killed on drop.
pub struct Browser {
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
pub fn start_browser() -> (Browser, String) {
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
pub struct Cdp {
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    next_id: u64,
}

/// Defined for every page script (see `Cdp::run`): `$`, `lines(id)` (the text of each child of
/// element `id`) and `wait(what, pred)`, polling `pred` for 10 s at most (its error shows the
/// page's text).
pub const PRELUDE: &str = r#"
  const $ = (id) => document.getElementById(id);
  const lines = (id) => Array.from($(id).children, (e) => e.textContent);
  const wait = (what, pred) => new Promise((resolve, reject) => {
    const t0 = Date.now();
    const timer = setInterval(() => {
      if (pred()) { clearInterval(timer); resolve(); }
      else if (Date.now() - t0 > 10000) {
        clearInterval(timer);
        const page = document.body.innerText.replace(/\s*\n\s*/g, " | ").slice(0, 3000);
        reject(new Error("timed out waiting for " + what + "; page: " + page));
      }
    }, 20);
  });
"#;

impl Cdp {
    /// Connect to the browser's DevTools WebSocket.
    pub async fn connect(devtools: &str) -> Cdp {
        let connect = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(devtools));
        let (ws, _) = connect.await.expect("DevTools connect timed out").expect("connect to DevTools");
        Cdp { ws, next_id: 0 }
    }

    /// The next DevTools message.
    pub async fn next(&mut self) -> Value {
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
    pub async fn call(
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
    pub async fn open_tab(&mut self, url: &str) -> String {
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
    pub async fn run(&mut self, session: &str, body: &str) -> String {
        let expression = format!("(async () => {{{PRELUDE}{body}\n}})()");
        let params = json!({"expression": expression, "awaitPromise": true, "returnByValue": true});
        let result = self.call(Some(session), "Runtime.evaluate", params, &mut |_| {}).await;
        let value = result["result"]["value"].as_str();
        value.unwrap_or_else(|| panic!("the page script failed: {result}\nscript:\n{body}")).to_string()
    }
}

/// A headless Chromium with one DevTools connection.
pub async fn browser() -> (Browser, Cdp) {
    let (browser, devtools) = start_browser();
    let cdp = Cdp::connect(&devtools).await;
    (browser, cdp)
}

/// `s` as a JavaScript string literal.
pub fn js(s: &str) -> String {
    Value::from(s).to_string()
}
