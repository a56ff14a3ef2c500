//! The demo page served at `GET /` when `demo_page: true`: plain browser JavaScript that opens
//! a WebSocket through weir, sends, receives and closes.
//!
//! Warm path (a static page). The page connects to the same origin, so it works behind any
//! listener address, with `ws:` or `wss:` following the page's own scheme.

/// The page itself.
pub const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>weir demo</title>
<style>
  body { font: 15px/1.4 system-ui, sans-serif; max-width: 46rem; margin: 2rem auto; padding: 0 1rem; }
  input, button { font: inherit; padding: .3rem .5rem; }
  #path { width: 10rem; } #text { width: 24rem; }
  #log { border: 1px solid #ccc; padding: .5rem; height: 18rem; overflow-y: auto; white-space: pre-wrap; font-family: ui-monospace, monospace; font-size: 13px; }
  .in { color: #05603a; } .out { color: #1849a9; } .sys { color: #777; }
</style>
</head>
<body>
<h1>weir demo</h1>
<p>This page talks to a backend through the gateway. Every message is relayed byte for byte and metered; see
<code>/metrics</code> on the admin port and the usage file for what was counted.</p>
<p>
  <label>Path <input id="path" value="/echo"></label>
  <button id="connect">Connect</button>
  <button id="close" disabled>Close</button>
</p>
<p>
  <input id="text" value="hello, weir" disabled>
  <button id="send" disabled>Send</button>
</p>
<div id="log"></div>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let ws = null;
function log(cls, text) {
  const line = document.createElement("div");
  line.className = cls;
  line.textContent = new Date().toISOString().slice(11, 23) + "  " + text;
  $("log").appendChild(line);
  $("log").scrollTop = $("log").scrollHeight;
}
function setOpen(open) {
  $("connect").disabled = open; $("close").disabled = !open;
  $("text").disabled = !open; $("send").disabled = !open;
}
$("connect").onclick = () => {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const url = scheme + "//" + location.host + $("path").value;
  log("sys", "connecting to " + url);
  ws = new WebSocket(url);
  ws.onopen = () => { setOpen(true); log("sys", "open (protocol: " + (ws.protocol || "none") + ")"); };
  ws.onmessage = (e) => log("in", "< " + e.data);
  ws.onerror = () => log("sys", "error");
  ws.onclose = (e) => { setOpen(false); log("sys", "closed: code " + e.code + (e.reason ? " (" + e.reason + ")" : "")); };
};
$("send").onclick = () => { const t = $("text").value; ws.send(t); log("out", "> " + t); };
$("text").onkeydown = (e) => { if (e.key === "Enter") $("send").click(); };
$("close").onclick = () => ws.close(1000, "bye");
</script>
</body>
</html>
"#;

/// The complete HTTP/1.1 response carrying the page (the connection is closed after it).
pub fn response() -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n",
        PAGE.len()
    )
    .into_bytes();
    out.extend_from_slice(PAGE.as_bytes());
    out
}
