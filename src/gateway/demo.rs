//! The demo page served at `GET /` when `demo_page: true`: plain browser JavaScript, no external
//! resources, in two parts.
//!
//! - **Echo**: open a WebSocket to any path (default `/echo`), send text, see what comes back,
//!   close.
//! - **API key** (optional, for routes with `auth`): when typed in, both parts open their
//!   WebSocket with the one subprotocol entry `weir.key.<key>` (browsers cannot set an
//!   `Authorization` header on a WebSocket); weir takes the entry out before the backend and
//!   names it in the 101. The page shows it as `key`, never the key itself. A route that
//!   changes `auth.subprotocol` needs a page of its own.
//! - **Room chat**: join the built-in `room` object at `/rooms/<room>` (see `builtin/room.rs` for
//!   the protocol) and chat with other tabs in the same room. A message is sent as JSON text
//!   `{"from": name, "text": text}` and shown locally as `me: text` (the room does not send a
//!   member's own messages back); received messages of that shape show as `from: text`, others
//!   raw. weir's events (`{"weir": ...}`: welcome, join, leave) show as grey system lines and keep
//!   the member count; the history replayed after the welcome is marked as earlier.
//!
//! User data only ever reaches the page through `textContent`.
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
  #path, #room, #name { width: 10rem; } #text, #chat-text { width: 24rem; }
  #log, #chat { border: 1px solid #ccc; padding: .5rem; height: 18rem; overflow-y: auto; white-space: pre-wrap; font-family: ui-monospace, monospace; font-size: 13px; }
  #chat { list-style: none; margin: 0; }
  .in { color: #05603a; } .out { color: #1849a9; } .sys { color: #777; } .earlier { color: #777; font-style: italic; }
</style>
</head>
<body>
<h1>weir demo</h1>
<p>This page talks to backends through the gateway. Every message is metered; see
<code>/metrics</code> on the admin port and the usage file for what was counted.</p>

<p>
  <label>API key <input id="key" type="password" autocomplete="off" placeholder="only for routes with auth"></label>
</p>

<h2>Echo</h2>
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

<h2>Room chat</h2>
<p>Open this page in a second tab and join the same room.</p>
<p>
  <label>Room <input id="room" value="lobby"></label>
  <label>Name <input id="name"></label>
  <button id="join">Join</button>
  <button id="leave" disabled>Leave</button>
  <span class="sys">here: <span id="members">-</span></span>
</p>
<p>
  <input id="chat-text" disabled>
  <button id="chat-send" disabled>Send</button>
</p>
<ul id="chat"></ul>

<script>
"use strict";
const $ = (id) => document.getElementById(id);
const wsUrl = (path) => (location.protocol === "https:" ? "wss:" : "ws:") + "//" + location.host + path;
// The subprotocol entry that carries the API key (weir's default `auth.subprotocol`).
const KEY_PREFIX = "weir.key.";
// Open a WebSocket to `path`, with the API key as its only subprotocol entry when one is set.
const openSocket = (path) => {
  const key = $("key").value.trim();
  return key ? new WebSocket(wsUrl(path), [KEY_PREFIX + key]) : new WebSocket(wsUrl(path));
};
// The selected subprotocol as shown: never the key itself.
const shownProtocol = (p) => (p.startsWith(KEY_PREFIX) ? "key" : p || "none");

// Echo.
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
  const url = wsUrl($("path").value);
  log("sys", "connecting to " + url + ($("key").value.trim() ? " with the API key" : ""));
  try { ws = openSocket($("path").value); } catch (e) { log("sys", "error: " + e.message); return; }
  ws.onopen = () => { setOpen(true); log("sys", "open (protocol: " + shownProtocol(ws.protocol) + ")"); };
  ws.onmessage = (e) => log("in", "< " + e.data);
  ws.onerror = () => log("sys", "error");
  ws.onclose = (e) => { setOpen(false); log("sys", "closed: code " + e.code + (e.reason ? " (" + e.reason + ")" : "")); };
};
$("send").onclick = () => { const t = $("text").value; ws.send(t); log("out", "> " + t); };
$("text").onkeydown = (e) => { if (e.key === "Enter") $("send").click(); };
$("close").onclick = () => ws.close(1000, "bye");

// Room chat.
let room = null;
$("name").value = "guest-" + (1000 + Math.floor(Math.random() * 9000));
function chat(cls, text) {
  const item = document.createElement("li");
  item.className = cls;
  item.textContent = text;
  $("chat").appendChild(item);
  $("chat").scrollTop = $("chat").scrollHeight;
}
function setJoined(joined) {
  $("join").disabled = joined; $("leave").disabled = !joined; $("room").disabled = joined;
  $("chat-text").disabled = !joined; $("chat-send").disabled = !joined;
  if (!joined) $("members").textContent = "-";
}
// A user message as shown: "from: text" for {"from", "text"} JSON, else the raw message.
function userText(data) {
  if (typeof data !== "string") return "(binary message, " + data.byteLength + " bytes)";
  try {
    const m = JSON.parse(data);
    if (m && typeof m.from === "string" && typeof m.text === "string") return m.from + ": " + m.text;
  } catch (_) { /* not JSON: shown raw */ }
  return data;
}
// A weir event (JSON text with a "weir" key), or null for a user message.
function weirEvent(data) {
  if (typeof data !== "string") return null;
  try {
    const v = JSON.parse(data);
    return v && typeof v === "object" && typeof v.weir === "string" ? v : null;
  } catch (_) { return null; }
}
function showEvent(v) {
  if (typeof v.members === "number") $("members").textContent = v.members;
  if (v.weir === "welcome") chat("sys", "welcome to " + v.room + ": " + v.members + " here, " + v.history + " earlier messages");
  else if (v.weir === "join") chat("sys", "member " + v.member + " joined (" + v.members + " here)");
  else if (v.weir === "leave") chat("sys", "member " + v.member + " left" + (v.reason === "slow" ? ", too slow" : "") + " (" + v.members + " here)");
  else chat("sys", JSON.stringify(v));
}
$("join").onclick = () => {
  const name = $("room").value;
  let socket;
  try { socket = openSocket("/rooms/" + encodeURIComponent(name)); } catch (e) { chat("sys", "error: " + e.message); return; }
  let opened = false, earlier = 0, welcomed = false;
  socket.binaryType = "arraybuffer";
  room = socket;
  $("join").disabled = true; $("room").disabled = true;
  chat("sys", "joining " + name);
  socket.onopen = () => { opened = true; setJoined(true); };
  socket.onmessage = (e) => {
    // First the welcome, then `history` earlier messages (verbatim, whatever they look like).
    if (earlier > 0) { earlier--; chat("earlier", "earlier: " + userText(e.data)); return; }
    const v = weirEvent(e.data);
    if (v && !welcomed && v.weir === "welcome") { welcomed = true; earlier = Number(v.history) || 0; }
    if (v) showEvent(v); else chat("in", userText(e.data));
  };
  socket.onclose = (e) => {
    if (room === socket) { room = null; setJoined(false); }
    const why = "code " + e.code + (e.reason ? ", " + e.reason : "");
    if (!opened) chat("sys", "could not join " + name + " (" + why + ")");
    else chat("sys", (e.code === 1000 ? "you left " : "disconnected from ") + name + " (" + why + ")");
  };
};
$("leave").onclick = () => room && room.close(1000, "bye");
$("chat-send").onclick = () => {
  const text = $("chat-text").value;
  if (!room || room.readyState !== WebSocket.OPEN || text === "") return;
  room.send(JSON.stringify({ from: $("name").value, text: text }));
  chat("out", "me: " + text);
  $("chat-text").value = "";
};
$("chat-text").onkeydown = (e) => { if (e.key === "Enter") $("chat-send").click(); };
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
