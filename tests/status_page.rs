//! The admin status page (issue 12) in headless Chromium (`support::browser`) against the real
//! binary: its login form refuses a wrong token and takes the right one, it shows the backend,
//! the totals by route and tenant and a WebSocket the test opened, and its Kick button closes
//! that client with the code typed in. Without `admin.token` (loopback only) it needs no login.

use crate::support::backends::echo_backend;
use crate::support::browser::{browser, js};
use crate::support::{connect, eventually, http_get, Weir, DEADLINE};
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use tokio_tungstenite::tungstenite::Message;

const TOKEN: &str = "status-page-token-0123456789";

/// A pool `p` with `backend` and a route `chat` to it billed to tenant `acme`.
fn chat_route(backend: SocketAddr) -> String {
    format!(
        "pools:\n  - name: p\n    backends: [\"{backend}\"]\n    health_check: {{kind: none}}\nroutes:\n  - {{name: chat, path_prefix: /chat, pool: p, tenant: acme}}\n"
    )
}

/// Script body: log in with `token` from the login form.
fn log_in(token: &str) -> String {
    format!(
        "await wait(\"the login form\", () => !$(\"login\").hidden);\n$(\"token\").value = {};\n$(\"login-button\").click();\n",
        js(token)
    )
}

/// Script body: the text of each row of table body `id`, cells joined by spaces.
const ROWS: &str = r#"
  const rows = (id) => Array.from($(id).rows, (r) => Array.from(r.cells, (c) => c.textContent).join(" "));
"#;

#[tokio::test]
async fn the_status_page_logs_in_shows_the_totals_and_kicks_a_connection() {
    let backend = echo_backend().await;
    let weir = Weir::start_with_admin(&chat_route(backend.addr), "", &format!("  token: \"{TOKEN}\"\n")).await;
    let (status, head, _) = http_get(weir.admin, "/").await.unwrap();
    assert_eq!(status, 200, "the page itself needs no token: {head}");
    let (_browser, mut cdp) = browser().await;
    let tab = cdp.open_tab(&format!("http://{}/", weir.admin)).await;

    // A wrong token: the page says so and shows nothing.
    let body = log_in("wrong-token-0123456789")
        + r#"await wait("the error", () => !$("login-error").hidden && $("login").hidden === false);
        return $("login-error").textContent + " | status hidden: " + $("status").hidden;"#;
    let shown = cdp.run(&tab, &body).await;
    assert_eq!(shown, "wrong token: the admin API answered 401 | status hidden: true");

    // The right one: the backend shows up.
    let body = log_in(TOKEN)
        + ROWS
        + &format!(
            "await wait(\"the backend\", () => rows(\"backends\").some((r) => r.includes({})));\nreturn rows(\"backends\").join(\"\\n\");",
            js(&backend.addr.to_string())
        );
    let backends = cdp.run(&tab, &body).await;
    assert_eq!(backends, format!("p {0} {0} healthy no 0", backend.addr), "{backends}");

    // A connection from the test appears with its id, route, tenant and bytes.
    let mut ws = connect(&weir, "/chat").await;
    ws.send(Message::text("hello")).await.unwrap();
    crate::support::recv(&mut ws).await;
    let id = eventually("the connection's id from the API", || async {
        let req = format!("GET /api/connections HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {TOKEN}\r\n\r\n");
        let (_, _, body) = crate::support::raw_request(weir.admin, &req).await.ok()?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["connections"][0]["id"].as_str().map(String::from)
    })
    .await;
    let row = format!("document.querySelector('#conns tr[data-id=\"' + {} + '\"]')", js(&id));
    let body = format!(
        r#"{ROWS}
        await wait("the connection's row", () => {row} !== null);
        await wait("the totals", () => rows("routes").includes("chat 1") && rows("tenants").includes("acme 1"));
        await wait("today's usage", () => rows("today").some((r) => r.startsWith("acme 1 ")));
        return [Array.from({row}.cells, (c) => c.textContent).join(" "), $("open").textContent].join("\n");"#
    );
    let shown = cdp.run(&tab, &body).await;
    let (conn, open) = shown.split_once('\n').unwrap();
    assert!(conn.starts_with(&format!("{id} chat acme 127.0.0.1:")), "{conn}");
    assert!(conn.contains(&backend.addr.to_string()), "{conn}");
    assert!(conn.ends_with("Kick"), "{conn}");
    assert_eq!(open, "1");

    // Kick it with code 4000: the test's client gets that close.
    let body = format!(
        r#"$("kick-code").value = "4000";
        {row}.querySelector("button.kick").click();
        await wait("the kick's answer", () => $("kick-result").textContent.startsWith("kicked "));
        return $("kick-result").textContent;"#
    );
    let result = cdp.run(&tab, &body).await;
    assert_eq!(result, format!("kicked {id} (code 4000)"));
    let close = tokio::time::timeout(DEADLINE, ws.next()).await.expect("a close in time");
    let Some(Ok(Message::Close(Some(frame)))) = close else { panic!("{close:?}") };
    assert_eq!((u16::from(frame.code), frame.reason.as_str()), (4000, "kicked by operator"));

    // The page catches up: no open connection, one kick among the closes.
    let body = format!(
        r#"{ROWS}
        await wait("the kick in the closes", () => rows("closes").some((r) => r.startsWith("kicked 1 ")));
        await wait("no open connection", () => $("open").textContent === "0" && {row} === null);
        return rows("today").join("\n");"#
    );
    let today = cdp.run(&tab, &body).await;
    assert!(today.starts_with("acme 1 "), "the kicked connection counted once today: {today}");
    let record = weir.records_eventually(1).await.remove(0);
    assert_eq!(record.close.unwrap().cause, "kicked");
}

#[tokio::test]
async fn without_a_token_the_status_page_needs_no_login() {
    let backend = echo_backend().await;
    let weir = Weir::start(&chat_route(backend.addr)).await;
    let _ws = connect(&weir, "/chat").await;
    let (_browser, mut cdp) = browser().await;
    let tab = cdp.open_tab(&format!("http://{}/", weir.admin)).await;
    let body = format!(
        r#"{ROWS}
        await wait("the totals", () => rows("routes").includes("chat 1"));
        return [$("login").hidden, $("logout").hidden, rows("backends").length].join(" ");"#
    );
    assert_eq!(cdp.run(&tab, &body).await, "true true 1", "no login form, no logout button, one backend");
}
