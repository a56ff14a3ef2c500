//! weir observed by a real Prometheus (issue 15): Debian's `prometheus` (installed by
//! `scripts/test.sh`), started by the test on a free loopback port, scrapes a real weir's admin
//! listener every 250 ms and loads `dashboards/alerts.yml`. A scripted mix of traffic goes through
//! weir; once Prometheus has scraped after the last event, every panel query of
//! `dashboards/gateway.json` must parse and return data, every alert expression must parse (and
//! the rules evaluate without error, the dead pool's alert pending), and the raw counters in
//! Prometheus must equal what the script did. `promtool check metrics` passes a live scrape. The
//! dashboard's conventions (data source input, variables, units, descriptions, legends, rate
//! windows, filters) are checked statically.

use crate::support::backends::{dead_addr, echo_backend};
use crate::support::wire::{frame, raw_client, CLOSE, FIN, MASK, TEXT};
use crate::support::{
    connect, drain_until_end, eventually, free_port, raw_request, recv, upgrade_request, Weir, DEADLINE,
};
use futures_util::SinkExt;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_tungstenite::tungstenite::Message;

/// Where Debian installs the Prometheus server and its tool.
const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";

/// Grafana units the dashboard may use: ops/s, bytes/s, bytes, seconds, ratios, plain counts.
const UNITS: &[&str] = &["ops", "Bps", "bytes", "s", "percentunit", "none"];

fn dashboards() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards")
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(dashboards().join("gateway.json")).expect("read gateway.json");
    serde_json::from_str(&text).expect("gateway.json is JSON")
}

/// Every panel, rows included, with the panels of collapsed rows.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        out.push(p);
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner);
        }
    }
    out
}

/// `(panel title, legend, expr)` of every panel target.
fn panel_targets(d: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for p in panels(d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push((
                p["title"].as_str().unwrap_or("").to_string(),
                t["legendFormat"].as_str().unwrap_or("").to_string(),
                t["expr"].as_str().unwrap_or("").to_string(),
            ));
        }
    }
    out
}

/// `(alert name, expr)` of every rule in `dashboards/alerts.yml`.
fn alert_rules() -> Vec<(String, serde_yaml::Value)> {
    let text = std::fs::read_to_string(dashboards().join("alerts.yml")).expect("read alerts.yml");
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("alerts.yml is YAML");
    let mut out = Vec::new();
    for g in doc["groups"].as_sequence().expect("groups") {
        for r in g["rules"].as_sequence().expect("rules") {
            let name = r["alert"].as_str().or(r["record"].as_str()).expect("alert or record name").to_string();
            out.push((name, r.clone()));
        }
    }
    out
}

/// A panel expression as Grafana sends it for "All" over the last minutes.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m").replace("$instance", ".*").replace("$route", ".*")
}

/// Every `name{...}` selector in `expr`: the metric name and the text between the braces. Also
/// every `weir_*` name that has no braces (with `None`).
fn selectors(expr: &str) -> Vec<(String, Option<String>)> {
    let b = expr.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let mut out = Vec::new();
    let mut i = 0;
    let mut in_braces = false;
    let mut in_string = false;
    while i < b.len() {
        let c = b[i];
        if in_string {
            if c == b'\\' {
                i += 1;
            } else if c == b'"' {
                in_string = false;
            }
            i += 1;
            continue;
        }
        match c {
            b'"' => in_string = true,
            b'{' => in_braces = true,
            b'}' => in_braces = false,
            _ if !in_braces && ident(c) && (i == 0 || !ident(b[i - 1])) => {
                let start = i;
                while i < b.len() && ident(b[i]) {
                    i += 1;
                }
                let name = &expr[start..i];
                if b.get(i) == Some(&b'{') {
                    let end = expr[i..].find('}').map(|e| i + e).expect("closing brace");
                    out.push((name.to_string(), Some(expr[i + 1..end].to_string())));
                } else if name.starts_with("weir_") {
                    out.push((name.to_string(), None));
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// Every `[...]` range in `expr`.
fn ranges(expr: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find('[') {
        let end = rest[i..].find(']').map(|e| i + e + 1).expect("closing bracket");
        out.push(&rest[i..end]);
        rest = &rest[end..];
    }
    out
}

/// The dashboard imports with the data source chosen at import, and follows the conventions an
/// operator relies on; the alerts carry what a receiver needs. No Prometheus needed.
#[test]
fn dashboard_and_alerts_follow_the_conventions() {
    let d = dashboard();
    let inputs = d["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["type"] == "datasource" && i["pluginId"] == "prometheus"),
        "a DS_PROMETHEUS data source input: {inputs:?}"
    );
    let text = serde_json::to_string(&d).unwrap();
    assert!(!text.contains("${datasource}") && !text.contains("$datasource"), "no data source variable is left");
    let uses_input =
        |v: &Value| v["datasource"]["uid"] == "${DS_PROMETHEUS}" && v["datasource"]["type"] == "prometheus";

    let vars: Vec<&Value> = d["templating"]["list"].as_array().expect("templating").iter().collect();
    for name in ["instance", "route"] {
        let v = vars.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("variable ${name}"));
        assert!(uses_input(v), "variable {name} uses ${{DS_PROMETHEUS}}: {v}");
        assert_eq!((v["multi"].as_bool(), v["includeAll"].as_bool()), (Some(true), Some(true)), "{name}: {v}");
    }

    let rows: Vec<&str> =
        panels(&d).iter().filter(|p| p["type"] == "row").map(|p| p["title"].as_str().unwrap()).collect();
    let want_rows = [
        "Traffic",
        "Handshakes and rejections",
        "Closes and causes",
        "Backends",
        "Objects",
        "Billing pipeline",
        "Tenants and quotas",
        "Process",
    ];
    assert_eq!(rows, want_rows, "rows in order");

    let mut ids = BTreeSet::new();
    for p in panels(&d) {
        let title = p["title"].as_str().unwrap_or("?");
        assert!(ids.insert(p["id"].as_u64().expect("panel id")), "panel ids are unique ({title})");
        assert!(uses_input(p), "panel {title} uses ${{DS_PROMETHEUS}}: {}", p["datasource"]);
        if p["type"] == "row" {
            continue;
        }
        assert!(p["description"].as_str().is_some_and(|s| s.len() > 20), "panel {title} has a description");
        let unit = p["fieldConfig"]["defaults"]["unit"].as_str().unwrap_or("");
        assert!(UNITS.contains(&unit), "panel {title} has unit {unit:?}, not one of {UNITS:?}");
        let targets = p["targets"].as_array().filter(|t| !t.is_empty()).unwrap_or_else(|| panic!("{title}: targets"));
        for t in targets {
            assert!(uses_input(t), "a target of {title} uses ${{DS_PROMETHEUS}}");
            let legend = t["legendFormat"].as_str().unwrap_or("");
            assert!(!legend.is_empty() && legend != "__auto", "panel {title}: explicit legendFormat, got {legend:?}");
            let expr = t["expr"].as_str().expect("expr");
            for r in ranges(expr) {
                assert_eq!(r, "[$__rate_interval]", "panel {title}: every range is $__rate_interval: {expr}");
            }
            for (name, braces) in selectors(expr) {
                let braces = braces.unwrap_or_else(|| panic!("panel {title}: {name} without a selector: {expr}"));
                assert!(
                    braces.contains("instance=~\"$instance\""),
                    "panel {title}: {name} filters by $instance: {expr}"
                );
            }
            if legend.contains("{{") {
                // Every label a legend names is one the query keeps.
                for label in legend.split("{{").skip(1).map(|s| s.split("}}").next().unwrap().trim()) {
                    assert!(expr.contains(label), "panel {title}: legend label {label} is not in {expr}");
                }
            }
        }
    }
    assert!(ids.len() > 30, "{} panels", ids.len());

    let rules = alert_rules();
    let names: BTreeSet<&str> = rules.iter().map(|(n, _)| n.as_str()).collect();
    for want in [
        "WeirDown",
        "WeirSpoolUnhealthy",
        "WeirUsageRecordsLost",
        "WeirSinkLagHigh",
        "WeirSinkFailing",
        "WeirNoHealthyBackend",
        "WeirHandshakeFailureRatioHigh",
        "WeirSpoolGrowing",
        "WeirFileDescriptorsNearLimit",
    ] {
        assert!(names.contains(want), "alert {want} in alerts.yml: {names:?}");
    }
    for (name, r) in &rules {
        assert!(r["for"].as_str().is_some(), "{name} has for:");
        assert!(matches!(r["labels"]["severity"].as_str(), Some("critical" | "warning")), "{name} has a severity");
        for a in ["summary", "description"] {
            assert!(r["annotations"][a].as_str().is_some_and(|s| !s.is_empty()), "{name} has a {a}");
        }
        let expr = r["expr"].as_str().expect("expr");
        for (metric, braces) in selectors(expr) {
            let braces = braces.unwrap_or_else(|| panic!("{name}: {metric} without a selector"));
            assert!(braces.contains("job=\"weir\""), "{name}: {metric} selects job=\"weir\": {expr}");
        }
    }
}

/// A Prometheus server the test started (killed on drop).
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Start Prometheus scraping `target` (weir's admin listener) every 250 ms as job `weir`,
    /// with `dashboards/alerts.yml` loaded and evaluated every 250 ms; wait until it is ready.
    async fn start(target: SocketAddr) -> Prometheus {
        assert!(
            Path::new(PROMETHEUS).exists(),
            "{PROMETHEUS} is missing: run ./scripts/test.sh, which installs Debian's prometheus"
        );
        let mut last_log = String::new();
        for _attempt in 0..3 {
            let dir = tempfile::tempdir().expect("tempdir");
            let config = dir.path().join("prometheus.yml");
            let rules = dashboards().join("alerts.yml");
            std::fs::write(
                &config,
                format!(
                    "global:\n  scrape_interval: 250ms\n  scrape_timeout: 250ms\n  evaluation_interval: 250ms\nrule_files:\n  - \"{}\"\nscrape_configs:\n  - job_name: weir\n    static_configs:\n      - targets: [\"{target}\"]\n",
                    rules.display()
                ),
            )
            .expect("write prometheus.yml");
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let log = dir.path().join("prometheus.log");
            let child = Command::new(PROMETHEUS)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--log.level=warn")
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("log file"))
                .spawn()
                .expect("start prometheus");
            let mut p = Prometheus { child, addr, _dir: dir };
            let start = Instant::now();
            while start.elapsed() < DEADLINE {
                if let Ok(Some(_)) = p.child.try_wait() {
                    break; // e.g. the port was taken meanwhile: try another
                }
                if let Ok((200, _, _)) = p.get("/-/ready").await {
                    return p;
                }
                tokio::time::sleep(Duration::from_millis(50)).await; // poll interval
            }
            last_log = std::fs::read_to_string(log).unwrap_or_default();
        }
        panic!("prometheus did not become ready; last log:\n{last_log}");
    }

    /// A GET over HTTP/1.0 (so the body is never chunked).
    async fn get(&self, path: &str) -> std::io::Result<(u16, String, String)> {
        raw_request(self.addr, &format!("GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr)).await
    }

    /// A GET of an API path, as JSON.
    async fn api(&self, path: &str) -> Value {
        let (status, _, body) = self.get(path).await.unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    /// Evaluate `expr` at the current time (`/api/v1/query`): the result vector, or Prometheus's
    /// error (a parse or evaluation error).
    async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let body = format!("query={}", form_encode(expr));
        let request = format!(
            "POST /api/v1/query HTTP/1.0\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        let (status, _, text) = raw_request(self.addr, &request).await.map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_str(&text).map_err(|e| format!("HTTP {status}: {e}: {text}"))?;
        if v["status"] != "success" {
            return Err(format!("HTTP {status}: {}: {}", v["errorType"], v["error"]));
        }
        match v["data"]["resultType"].as_str() {
            Some("vector") => Ok(v["data"]["result"].as_array().cloned().unwrap_or_default()),
            Some("scalar") => Ok(vec![v["data"]["result"].clone()]),
            other => Err(format!("unexpected result type {other:?}: {text}")),
        }
    }

    /// The value of a query that returns one sample.
    async fn value(&self, expr: &str) -> f64 {
        let r = self.query(expr).await.unwrap_or_else(|e| panic!("{expr}: {e}"));
        assert_eq!(r.len(), 1, "{expr} returns one sample: {r:?}");
        r[0]["value"][1].as_str().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{expr}: {r:?}"))
    }
}

/// `application/x-www-form-urlencoded` encoding of `s`.
fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Seconds since the epoch, now.
fn now_secs() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// A valid upgrade for `path` on `addr`, with `from` replaced by `to` if given; returns the status.
async fn rejected(addr: SocketAddr, path: &str, edit: Option<(&str, &str)>) -> u16 {
    let mut request = upgrade_request(addr, path, "");
    if let Some((from, to)) = edit {
        assert!(request.contains(from), "{from} in {request}");
        request = request.replace(from, to);
    }
    raw_request(addr, &request).await.expect("request").0
}

/// The scripted mix. Routes: `echo` (a real echo backend), `gone` (a backend nothing listens
/// on, no health check: 502), `down` (a dead backend its tcp health check marks down: 503) and
/// `rooms` (built-in rooms).
async fn scripted_mix(weir: &Weir) {
    // Echo: three clients with 2, 3 and 5 messages, each closed normally by the client.
    for (i, n) in [2usize, 3, 5].into_iter().enumerate() {
        let mut ws = connect(weir, "/echo").await;
        for j in 0..n {
            let m = Message::text("m".repeat(10 * i + j + 1));
            ws.send(m.clone()).await.unwrap();
            assert_eq!(recv(&mut ws).await, m);
        }
        ws.close(None).await.unwrap();
        drain_until_end(&mut ws, DEADLINE).await;
    }
    // A client that vanishes: one message, then its TCP connection ends without a close frame.
    let mut ws = connect(weir, "/echo").await;
    ws.send(Message::text("bye")).await.unwrap();
    assert_eq!(recv(&mut ws).await, Message::text("bye"));
    drop(ws.into_inner());
    // A protocol error: one valid message, then an unmasked frame (RFC 6455 §5.1): weir closes
    // both sides with 1002.
    let (mut c, head) = raw_client(weir.addr, "/echo", "", b"").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    c.write(&frame(FIN | TEXT, Some(MASK), b"valid")).await;
    assert_eq!(c.read_frame().await.expect("echo").payload, b"valid");
    c.write(&frame(FIN | TEXT, None, b"unmasked")).await;
    let f = c.read_frame().await.expect("a close frame");
    assert_eq!((f.opcode(), f.close_code()), (CLOSE, Some(1002)), "{f:?}");
    c.read_to_end().await;

    // A room: two members, one says two things, the other hears them, both leave.
    let mut a = connect(weir, "/rooms/lobby").await;
    let welcome = recv(&mut a).await;
    assert!(welcome.to_text().unwrap().contains("\"welcome\""), "{welcome:?}");
    let mut b = connect(weir, "/rooms/lobby").await;
    assert!(recv(&mut b).await.to_text().unwrap().contains("\"welcome\""));
    assert!(recv(&mut a).await.to_text().unwrap().contains("\"join\""));
    for m in ["hello", "anyone?"] {
        a.send(Message::text(m)).await.unwrap();
        assert_eq!(recv(&mut b).await, Message::text(m));
    }
    a.close(None).await.unwrap();
    drain_until_end(&mut a, DEADLINE).await;
    b.close(None).await.unwrap();
    drain_until_end(&mut b, DEADLINE).await;

    // Rejections of several reasons.
    for _ in 0..2 {
        let bad_key = rejected(weir.addr, "/echo", Some(("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ="))).await;
        assert_eq!(bad_key, 400, "a key that is not 16 bytes");
    }
    let old_version = Some(("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8"));
    assert_eq!(rejected(weir.addr, "/echo", old_version).await, 426);
    assert_eq!(rejected(weir.addr, "/nowhere", None).await, 404);
    for _ in 0..2 {
        assert_eq!(rejected(weir.addr, "/gone", None).await, 502, "a backend nothing listens on");
    }
    weir.metric_eventually("weir_backend_healthy", &[("pool", "down")], |v| v == 0.0).await;
    assert_eq!(rejected(weir.addr, "/down", None).await, 503, "no healthy backend");
}

/// Label pairs a series must have (a subset match).
type Labels = &'static [(&'static str, &'static str)];

/// What the script did, as raw counter and gauge values: `(metric, labels, value)`; the value
/// is the sum over the series matching the labels.
const EXPECTED: &[(&str, Labels, f64)] = &[
    ("weir_connections_started_total", &[("route", "echo")], 5.0),
    ("weir_connections_started_total", &[("route", "rooms")], 2.0),
    ("weir_connections_started_total", &[], 7.0),
    ("weir_connections_active", &[], 0.0),
    ("weir_connections_total", &[("route", "echo"), ("outcome", "completed")], 3.0),
    ("weir_connections_total", &[("route", "echo"), ("outcome", "client_gone")], 1.0),
    ("weir_connections_total", &[("route", "echo"), ("outcome", "protocol_error")], 1.0),
    ("weir_connections_total", &[("route", "echo")], 5.0),
    ("weir_closes_total", &[("route", "echo"), ("cause", "client_close")], 3.0),
    ("weir_closes_total", &[("route", "echo"), ("cause", "client_gone")], 1.0),
    ("weir_closes_total", &[("route", "echo"), ("cause", "protocol_error")], 1.0),
    ("weir_closes_total", &[("route", "echo")], 5.0),
    ("weir_closes_total", &[("route", "rooms"), ("cause", "client_close")], 2.0),
    ("weir_messages_total", &[("route", "echo"), ("direction", "client_to_backend")], 12.0),
    ("weir_messages_total", &[("route", "echo"), ("direction", "backend_to_client")], 12.0),
    ("weir_messages_total", &[("route", "rooms"), ("direction", "client_to_backend")], 2.0),
    ("weir_frames_total", &[("route", "echo"), ("direction", "client_to_backend"), ("kind", "data")], 12.0),
    (
        "weir_protocol_violations_total",
        &[("route", "echo"), ("direction", "client_to_backend"), ("reason", "unmasked_client_frame")],
        1.0,
    ),
    ("weir_protocol_violations_total", &[], 1.0),
    ("weir_handshake_rejections_total", &[("route", "echo"), ("reason", "bad_key")], 2.0),
    ("weir_handshake_rejections_total", &[("route", "echo"), ("reason", "unsupported_version")], 1.0),
    ("weir_handshake_rejections_total", &[("route", "none"), ("reason", "unknown_route")], 1.0),
    ("weir_handshake_rejections_total", &[("route", "gone"), ("reason", "backend_unreachable")], 2.0),
    ("weir_handshake_rejections_total", &[("route", "down"), ("reason", "no_healthy_backend")], 1.0),
    ("weir_handshake_rejections_total", &[], 7.0),
    ("weir_object_placements_total", &[("namespace", "rooms")], 1.0),
    ("weir_objects_active", &[("namespace", "rooms")], 0.0),
    ("weir_backend_healthy", &[("pool", "echo")], 1.0),
    ("weir_backend_healthy", &[("pool", "gone")], 1.0),
    ("weir_backend_healthy", &[("pool", "down")], 0.0),
    ("weir_usage_write_errors_total", &[], 0.0),
    ("weir_spool_healthy", &[], 1.0),
    ("weir_build_info", &[("version", env!("CARGO_PKG_VERSION"))], 1.0),
];

/// PromQL for the sum of `metric{labels}` over job `weir`.
fn promql(metric: &str, labels: &[(&str, &str)]) -> String {
    let mut sel = vec!["job=\"weir\"".to_string()];
    sel.extend(labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")));
    format!("sum({metric}{{{}}})", sel.join(", "))
}

#[tokio::test]
async fn a_real_prometheus_sees_what_weir_did_and_every_panel_and_alert_evaluates() {
    let echo = echo_backend().await;
    let config = format!(
        "pools:\n  - {{name: echo, backends: [\"{}\"], health_check: {{kind: none}}}}\n  - {{name: gone, backends: [\"{}\"], health_check: {{kind: none}}}}\n  - {{name: down, backends: [\"{}\"], health_check: {{kind: tcp, interval: 200ms}}}}\nobjects:\n  - {{name: rooms, id: {{path: \"/rooms/{{id}}\"}}, builtin: room}}\nroutes:\n  - {{name: echo, path_prefix: /echo, pool: echo, tenant: acme}}\n  - {{name: gone, path_prefix: /gone, pool: gone}}\n  - {{name: down, path_prefix: /down, pool: down}}\n  - {{name: rooms, path_prefix: /rooms, object: rooms}}\nquotas:\n  - {{tenant: \"*\", of: messages, limit: 1000000, per: day}}\nbilling:\n  units:\n    - {{name: credits, terms: [{{of: messages_in}}]}}\n",
        echo.addr,
        dead_addr(),
        dead_addr()
    );
    let weir = Weir::start(&config).await;
    let prom = Prometheus::start(weir.admin).await;
    // The first scrape, before any event: every counter's first event is then an increase.
    eventually("a first scrape of weir", || async {
        prom.query("up{job=\"weir\"} == 1").await.ok().filter(|r| r.len() == 1)
    })
    .await;

    scripted_mix(&weir).await;

    // weir's own /metrics shows the whole script...
    for (metric, labels, value) in EXPECTED {
        weir.metric_eventually(metric, labels, |v| v == *value).await;
    }
    // The quota ticker (once a second) has published acme's utilisation.
    weir.metric_eventually("weir_quota_utilisation", &[("tenant", "acme")], |v| v > 0.0).await;
    // ...and Prometheus has scraped after that. Prometheus may move a scrape's timestamp back
    // by up to 2 ms (to keep intervals even), hence the 10 ms margin.
    let last_event = now_secs() + 0.010;
    eventually("a scrape after the last event", || async {
        let t = prom.query("max(timestamp(weir_build_info{job=\"weir\"}))").await.ok()?;
        let t: f64 = t.first()?["value"][1].as_str()?.parse().ok()?;
        (t > last_event).then_some(())
    })
    .await;

    // The raw counters in Prometheus equal what the script did (no rate, no extrapolation).
    let mut wrong = Vec::new();
    for (metric, labels, value) in EXPECTED {
        let q = promql(metric, labels);
        let got = prom.value(&q).await;
        if got != *value {
            wrong.push(format!("{q} = {got}, want {value}"));
        }
    }
    assert!(wrong.is_empty(), "Prometheus disagrees with the script:\n{}", wrong.join("\n"));
    // A counter's first event is an increase: each of these went from 0 (scraped before the
    // script) to 1.
    for (metric, labels) in [
        ("weir_object_placements_total", &[("namespace", "rooms")][..]),
        ("weir_protocol_violations_total", &[("reason", "unmasked_client_frame")]),
        ("weir_handshake_rejections_total", &[("route", "none"), ("reason", "unknown_route")]),
        ("weir_handshake_rejections_total", &[("route", "down"), ("reason", "no_healthy_backend")]),
    ] {
        let q = promql(metric, labels).replacen("sum(", "sum(increase(", 1).replacen('}', "}[1m])", 1);
        let got = prom.value(&q).await;
        assert!(got > 0.0, "{q} = {got}: the first event is seen");
    }

    // Every panel query parses and returns data.
    let scrape = weir.metrics().await;
    let with_route: BTreeSet<&str> = scrape
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains("route=\""))
        .filter_map(|l| l.split('{').next())
        .collect();
    let mut failures = Vec::new();
    let targets = panel_targets(&dashboard());
    for (title, legend, expr) in &targets {
        // Where the metric has a route label, the panel follows $route.
        for (name, braces) in selectors(expr) {
            if with_route.contains(name.as_str()) && !braces.as_deref().unwrap_or("").contains("route=~\"$route\"") {
                failures.push(format!("{title} ({legend}): {name} does not filter by $route: {expr}"));
            }
        }
        let q = substitute(expr);
        match prom.query(&q).await {
            Ok(r) if r.is_empty() => failures.push(format!("{title} ({legend}): no data: {q}")),
            Ok(_) => {}
            Err(e) => failures.push(format!("{title} ({legend}): {e}: {q}")),
        }
    }
    assert!(targets.len() > 40, "{} panel targets", targets.len());

    // The variables list this weir and its routes (`none` included: requests without a route).
    let d = dashboard();
    for (var, want) in [
        ("instance", vec![weir.admin.to_string()]),
        ("route", vec!["down", "echo", "gone", "none", "rooms"].into_iter().map(String::from).collect()),
    ] {
        let v = d["templating"]["list"].as_array().unwrap().iter().find(|v| v["name"] == var).unwrap();
        let q = v["query"].as_str().or(v["query"]["query"].as_str()).expect("variable query");
        let (selector, label) = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .and_then(|r| r.rsplit_once(','))
            .unwrap_or_else(|| panic!("variable {var}: label_values(selector, label), got {q}"));
        let path =
            format!("/api/v1/label/{}/values?match[]={}", label.trim(), form_encode(&substitute(selector.trim())));
        let got = prom.api(&path).await;
        let got: Vec<String> =
            got["data"].as_array().expect("values").iter().map(|v| v.as_str().unwrap().to_string()).collect();
        assert_eq!(got, want, "variable {var}: {q}");
    }

    // Every alert expression parses and evaluates; in this run only the dead pool has no
    // healthy backend, and nothing else is wrong.
    let mut results = BTreeMap::new();
    for (name, rule) in alert_rules() {
        let expr = rule["expr"].as_str().unwrap();
        match prom.query(expr).await {
            Ok(r) => {
                results.insert(name, r);
            }
            Err(e) => failures.push(format!("alert {name}: {e}: {expr}")),
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    for (name, r) in &results {
        let labels: Vec<&Value> = r.iter().map(|s| &s["metric"]).collect();
        if name == "WeirNoHealthyBackend" {
            assert_eq!(labels.len(), 1, "{name}: {labels:?}");
            assert_eq!(labels[0]["pool"], "down", "{name}: {labels:?}");
        } else {
            assert!(labels.is_empty(), "alert {name} would fire in a healthy run: {labels:?}");
        }
    }

    // The rule file loads into Prometheus and every rule evaluates without error; the dead
    // pool's alert is pending (its `for:` has not passed).
    let rules = eventually("every rule evaluated once", || async {
        let v = prom.api("/api/v1/rules").await;
        let rules: Vec<Value> = v["data"]["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        let evaluated = rules.iter().all(|r| r["lastEvaluation"].as_str().is_some_and(|t| !t.starts_with("0001")));
        (rules.len() == alert_rules().len() && evaluated).then_some(rules)
    })
    .await;
    for r in &rules {
        assert_eq!(r["health"], "ok", "rule {} evaluates without error: {}", r["name"], r["lastError"]);
    }
    eventually("WeirNoHealthyBackend pending for pool down", || async {
        let v = prom.api("/api/v1/alerts").await;
        let alerts = v["data"]["alerts"].as_array()?.clone();
        alerts
            .iter()
            .any(|a| {
                a["labels"]["alertname"] == "WeirNoHealthyBackend"
                    && a["labels"]["pool"] == "down"
                    && a["state"] == "pending"
            })
            .then_some(())
    })
    .await;

    // `promtool check metrics` has nothing to say about a live scrape.
    let check = promtool_check_metrics(&weir.metrics().await);
    assert!(check.is_empty(), "promtool check metrics:\n{check}");
}

/// `promtool check metrics` on `text`: its findings (empty when there are none).
fn promtool_check_metrics(text: &str) -> String {
    use std::io::Write;
    assert!(Path::new(PROMTOOL).exists(), "{PROMTOOL} is missing: run ./scripts/test.sh");
    let mut child = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child.stdin.take().unwrap().write_all(text.as_bytes()).expect("write to promtool");
    let out = child.wait_with_output().expect("promtool output");
    let findings = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() && findings.trim().is_empty() {
        return format!("exit {}", out.status);
    }
    findings.trim().to_string()
}
