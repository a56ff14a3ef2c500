//! The admin API (`/api/...`, JSON): list and inspect open connections, kick one, push a
//! message to one or to every connection of an object, list occupied objects, drain the
//! instance, drain or rebalance backends, reload the config, and the totals the status page
//! shows (`/api/summary`). Every connection is named by the id of its usage records and
//! `X-Weir-Connection-Id`.
//!
//! Warm path (one operator request at a time), on the admin listener's own thread and runtime.
//! Access: with `admin.token` every path but `/`, `/healthz` and `/readyz` (and `/metrics` with
//! `admin.metrics_public`) needs `Authorization: Bearer <token>`; without a token the API answers
//! loopback peers only. Bad input gets a 4xx JSON error; nothing here panics on a request.

use crate::http1::query;
use crate::metering::live::{Live, LiveSet, Push};
use crate::metrics::{names, Metrics};
use crate::objects::Objects;
use crate::pools::Pools;
use crate::relay::report::Cause;
use crate::relay::Stop;
use prometheus::core::Collector;
use prometheus::IntCounterVec;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most connections one list answer holds (`limit` is capped to it).
pub const MAX_PAGE: usize = 1000;
/// Newest open connections `/api/summary` lists (the status page's table).
pub const SUMMARY_NEWEST: usize = 50;
/// How long a kick waits for the connection to end before it answers.
const KICK_WAIT: Duration = Duration::from_secs(5);

/// Who may use the API, and how a drain closes connections.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// The bearer token (`admin.token` / `admin.token_file`); `None`: loopback peers only.
    pub token: Option<String>,
    /// `/metrics` needs no token.
    pub metrics_public: bool,
}

impl Access {
    /// Whether a request for `path` from `peer` with `authorization` may be answered.
    pub fn allows(&self, path: &str, peer: Option<SocketAddr>, authorization: Option<&str>) -> bool {
        // `/` is the status page: static, it holds no data (it asks the API, with the token).
        if matches!(path, "/" | "/healthz" | "/readyz")
            || (path == "/metrics" && (self.metrics_public || self.token.is_none()))
        {
            return true;
        }
        match &self.token {
            Some(token) => authorization
                .and_then(|a| a.strip_prefix("Bearer ").or_else(|| a.strip_prefix("bearer ")))
                .is_some_and(|given| constant_time_eq(given.trim().as_bytes(), token.as_bytes())),
            None => peer.is_some_and(|p| p.ip().is_loopback()),
        }
    }
}

/// Equality that takes the same time wherever the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// How a drain closes connections (`drain:`).
#[derive(Debug, Clone, Copy)]
pub struct DrainPlan {
    /// Closes are spread over this window.
    pub window: Duration,
    /// The close code to clients: 1001, or 1012 (`close_code: restart`).
    pub code: u16,
}

/// An API answer: status and JSON body.
pub type Reply = (u16, Value);

fn error(status: u16, message: &str) -> Reply {
    (status, json!({ "error": message }))
}

/// The backend pools in force (they change with a reload).
pub type CurrentPools = Arc<dyn Fn() -> Arc<Pools> + Send + Sync>;
/// The object namespaces in force (they change with a reload).
pub type CurrentObjects = Arc<dyn Fn() -> Arc<Objects> + Send + Sync>;

/// What `POST /api/reload` asks of the process (`crate::reload::Reloader`): re-read and apply
/// the config file; what changed, or every error (the running config kept).
pub trait Reload: Send + Sync {
    /// Reload now.
    fn reload(&self) -> Result<Value, Vec<String>>;
}

/// What the API acts on.
#[derive(Clone)]
pub struct Ops {
    /// Open connections.
    pub live: Arc<LiveSet>,
    /// Backend pools.
    pub pools: CurrentPools,
    /// Object namespaces and their live placements (of the config snapshot in force).
    pub objects: CurrentObjects,
    /// How drains close connections.
    pub plan: DrainPlan,
    /// Config reloads, when the process was started from a file.
    pub reload: Option<Arc<dyn Reload>>,
    /// The counters `/api/summary` reads (connections started and ended, closes by cause,
    /// handshakes refused).
    pub metrics: Metrics,
}

/// What a request carries besides its method and target.
#[derive(Debug, Clone, Copy, Default)]
pub struct Request<'a> {
    /// Its `Content-Type`, if any.
    pub content_type: Option<&'a str>,
    /// Its body (at most `admin::MAX_BODY` bytes; empty without one).
    pub body: &'a [u8],
}

/// Answer `method target` on the API (`target` starts with `/api/`).
pub async fn answer(ops: &Ops, method: &str, target: &str, request: Request<'_>) -> Reply {
    let (live, plan) = (&ops.live, ops.plan);
    let path = target.split('?').next().unwrap_or("");
    let q = query::query_of(target);
    let segments: Vec<&str> = path.trim_start_matches("/api/").split('/').filter(|s| !s.is_empty()).collect();
    match (method, segments.as_slice()) {
        ("GET", ["connections"]) => list(live, q),
        ("GET", ["connections", id]) => match find(live, id) {
            Ok(l) => (200, l.view(Instant::now())),
            Err(e) => e,
        },
        ("DELETE", ["connections", id]) => kick(live, id, q).await,
        ("POST", ["connections", id, "messages"]) => match (find(live, id), message(request, q)) {
            (Err(e), _) | (_, Err(e)) => e,
            (Ok(l), Ok(push)) => push_to(&l, push),
        },
        ("GET", ["objects"]) => (200, json!({ "objects": object_views(ops, None) })),
        ("GET", ["objects", namespace, id]) => match (ops.objects)().find(namespace).cloned() {
            None => error(404, "no such object namespace"),
            Some(ns) => match ns.registry.view(id) {
                None => error(404, "this object has no connection"),
                Some(v) => (200, object_json(ops, namespace, &v)),
            },
        },
        ("POST", ["objects", namespace, id, "messages"]) => match message(request, q) {
            Err(e) => e,
            Ok(push) => push_to_object(ops, namespace, id, push),
        },
        ("POST", ["pools", pool, "rebalance"]) => rebalance(ops, pool),
        ("POST", ["drain"]) => {
            let started = start_drain(live, plan);
            (202, json!({"draining": true, "connections": started, "window_ms": plan.window.as_millis() as u64}))
        }
        ("GET", ["backends"]) => (200, backends(ops)),
        ("POST", ["reload"]) => match &ops.reload {
            None => error(409, "this process has no config file to reload"),
            Some(r) => {
                let r = r.clone();
                // Building the new snapshot reads files: off the admin runtime's thread.
                match tokio::task::spawn_blocking(move || r.reload()).await {
                    Ok(Ok(changes)) => (200, json!({"reloaded": true, "changes": changes})),
                    Ok(Err(errors)) => (422, json!({"reloaded": false, "errors": errors})),
                    Err(_) => error(500, "the reload failed; the running config is kept"),
                }
            }
        },
        ("GET", ["summary"]) => (200, summary(ops)),
        ("POST", ["backends", pool, backend, action @ ("drain" | "undrain")]) => {
            let pools = (ops.pools)();
            let Some(addr) = pools.find(pool, backend) else {
                return error(404, "no such pool and backend (the backend as configured, or its address)");
            };
            let on = *action == "drain";
            pools.set_draining(addr, on);
            let closing = if on { close_backend(live, addr, plan, "backend draining") } else { 0 };
            (200, json!({"pool": pool, "backend": backend, "draining": on, "closing": closing}))
        }
        ("GET" | "DELETE" | "POST", _) => error(404, "no such API path; see docs/admin-api.yaml"),
        _ => error(405, "method not allowed"),
    }
}

/// The message of a push request: text for `Content-Type: text/plain` (or none, or
/// `?type=text`), binary for `application/octet-stream` (or `?type=binary`).
fn message(request: Request<'_>, q: &str) -> Result<Push, Reply> {
    let kind = query::param(q, "type").map(|v| v.and_then(|b| String::from_utf8(b).ok()));
    let text = match kind {
        Some(Some(k)) if k == "text" => true,
        Some(Some(k)) if k == "binary" => false,
        Some(_) => return Err(error(400, "type must be text or binary")),
        None => {
            let mime = request.content_type.and_then(|c| c.split(';').next()).map(|m| m.trim().to_ascii_lowercase());
            match mime.as_deref() {
                None | Some("text/plain") => true,
                Some("application/octet-stream") => false,
                Some(_) => {
                    return Err(error(415, "send text/plain (a text message) or application/octet-stream (binary)"))
                }
            }
        }
    };
    if text && std::str::from_utf8(request.body).is_err() {
        return Err(error(400, "a text message must be valid UTF-8"));
    }
    Ok(Push { text, payload: request.body.to_vec() })
}

/// `POST /api/connections/{id}/messages`: queue the message for that client; it goes out at
/// the next message boundary of the backend's stream (at once when the backend is not in the
/// middle of a message).
fn push_to(l: &Live, push: Push) -> Reply {
    let bytes = push.payload.len();
    match l.push(push) {
        Ok(waiting) => {
            (200, json!({"id": l.meter.id().to_string(), "queued": true, "bytes": bytes, "waiting": waiting}))
        }
        Err(e) => {
            let (status, message) = e.status();
            error(status, message)
        }
    }
}

/// `POST /api/objects/{namespace}/{id}/messages`: a room gets it as a room message (stored,
/// to every member); an object on hosts gets it pushed into each of its connections.
fn push_to_object(ops: &Ops, namespace: &str, id: &str, push: Push) -> Reply {
    let Some(ns) = (ops.objects)().find(namespace).cloned() else { return error(404, "no such object namespace") };
    if ns.registry.view(id).is_none() {
        return error(404, "this object has no connection");
    }
    let bytes = push.payload.len();
    if let Some(crate::objects::session::Object::Room(rooms)) = &ns.builtin {
        return match rooms.push(id, crate::objects::room::push_message(push)) {
            Some(members) => (200, json!({"namespace": namespace, "id": id, "bytes": bytes, "room_members": members})),
            None => error(404, "this room has no member"),
        };
    }
    let mut queued = Vec::new();
    let mut refused = Vec::new();
    for l in connections_of(&ops.live, namespace, id) {
        match l.push(push.clone()) {
            Ok(_) => queued.push(l.meter.id().to_string()),
            Err(e) => refused.push(json!({"id": l.meter.id().to_string(), "error": e.status().1})),
        }
    }
    if queued.is_empty() && refused.is_empty() {
        return error(404, "this object has no established connection");
    }
    let status = if queued.is_empty() { 409 } else { 200 };
    (status, json!({"namespace": namespace, "id": id, "bytes": bytes, "queued": queued, "refused": refused}))
}

/// The open connections to object `namespace`/`id`.
fn connections_of(live: &LiveSet, namespace: &str, id: &str) -> Vec<Arc<Live>> {
    live.all()
        .into_iter()
        .filter(|l| l.meter.identity().object.as_ref().is_some_and(|o| o.namespace == namespace && o.id == id))
        .collect()
}

/// Every occupied object (of `only` namespace, if given).
fn object_views(ops: &Ops, only: Option<&str>) -> Vec<Value> {
    (ops.objects)()
        .all()
        .iter()
        .filter(|ns| only.is_none_or(|n| n == ns.config.name))
        .flat_map(|ns| {
            ns.registry.describe().into_iter().map(|v| object_json(ops, &ns.config.name, &v)).collect::<Vec<_>>()
        })
        .collect()
}

fn object_json(ops: &Ops, namespace: &str, v: &crate::objects::registry::ObjectView) -> Value {
    let ids: Vec<String> =
        connections_of(&ops.live, namespace, &v.id).iter().map(|l| l.meter.id().to_string()).collect();
    json!({
        "namespace": namespace,
        "id": v.id,
        "host": v.host,
        "connections": ids.len(),
        "connection_ids": ids,
        "leases": v.leases,
        "occupied_since": crate::billing::record::rfc3339_ms(v.since),
        "occupied_seconds": v.occupied.as_secs_f64(),
        "moving": v.moving,
    })
}

/// `POST /api/pools/{pool}/rebalance`: close just enough connections of the pool's fuller
/// backends (with 1012, spread over the drain window) that, once their clients reconnect, every
/// healthy, non-draining backend holds about as many. Under `selection: least_connections` the
/// reconnects go to the emptier backends, so the pool evens out; under other policies this
/// only closes the surplus.
fn rebalance(ops: &Ops, pool: &str) -> Reply {
    let Some((_, backends)) = (ops.pools)().describe().into_iter().find(|(name, _)| name == pool) else {
        return error(404, "no such pool");
    };
    let eligible: Vec<_> = backends.iter().filter(|b| b.healthy && !b.draining).collect();
    if eligible.is_empty() {
        return error(409, "the pool has no healthy, non-draining backend");
    }
    let all = ops.live.all();
    let on = |addr: SocketAddr| -> Vec<Arc<Live>> {
        all.iter()
            .filter(|l| {
                let id = l.meter.identity();
                id.pool.as_deref() == Some(pool) && id.object.is_none() && id.backend == Some(addr)
            })
            .cloned()
            .collect()
    };
    let per: Vec<Vec<Arc<Live>>> = eligible.iter().map(|b| on(b.addr)).collect();
    let total: usize = per.iter().map(Vec::len).sum();
    // Each backend keeps at most its fair share, rounded up.
    let share = total.div_ceil(eligible.len());
    let stop = Stop { client: (1012, "rebalance".into()), backend: (1001, String::new()), cause: Cause::Drained };
    let mut closing = serde_json::Map::new();
    let mut chosen = Vec::new();
    for (b, mut conns) in eligible.iter().zip(per) {
        let surplus = conns.len().saturating_sub(share);
        // The newest connections go first: they have the least state to lose.
        conns.sort_by_key(|l| std::cmp::Reverse(l.meter.id()));
        chosen.extend(conns.into_iter().take(surplus));
        closing.insert(b.label.clone(), json!(surplus));
    }
    let n = close_spread(chosen, ops.plan.window, stop);
    if n > 0 {
        tracing::info!(pool, connections = n, "rebalance: closing the surplus over the drain window");
    }
    (
        200,
        json!({
            "pool": pool, "closing": n, "per_backend": closing, "share": share,
            "window_ms": ops.plan.window.as_millis() as u64,
            "evens_out": (ops.pools)().least_connections(pool),
        }),
    )
}

fn find(live: &LiveSet, id: &str) -> Result<Arc<Live>, Reply> {
    let uuid = uuid::Uuid::parse_str(id).map_err(|_| error(400, "a connection id is a UUID"))?;
    live.get(&uuid).ok_or_else(|| error(404, "no open connection with this id"))
}

/// `GET /api/connections?route=&tenant=&backend=&namespace=&object=&min_age_ms=&idle_ms=&limit=&after=`.
fn list(live: &LiveSet, q: &str) -> Reply {
    let param = |name: &str| query::param(q, name).and_then(|v| v.and_then(|b| String::from_utf8(b).ok()));
    let number = |name: &str| -> Result<Option<u64>, Reply> {
        param(name)
            .map(|v| v.parse::<u64>().map_err(|_| error(400, &format!("{name} must be a whole number"))))
            .transpose()
    };
    let (min_age, idle, limit) = match (number("min_age_ms"), number("idle_ms"), number("limit")) {
        (Ok(a), Ok(i), Ok(l)) => (a, i, l),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return e,
    };
    let limit = limit.map_or(100, |l| l as usize).clamp(1, MAX_PAGE);
    let after = match param("after").map(|a| uuid::Uuid::parse_str(&a)) {
        None => None,
        Some(Ok(u)) => Some(u),
        Some(Err(_)) => return error(400, "after must be a connection id"),
    };
    let now = Instant::now();
    let wanted = |key: &str, v: &Value| param(key).is_none_or(|want| v.as_str() == Some(want.as_str()));
    let mut out = Vec::new();
    let mut more = false;
    for l in live.all().into_iter().filter(|l| after.is_none_or(|a| l.meter.id() > a)) {
        let v = l.view(now);
        let ok = wanted("route", &v["route"])
            && wanted("tenant", &v["tenant"])
            && wanted("backend", &v["backend"])
            && wanted("namespace", &v["object"]["namespace"])
            && wanted("object", &v["object"]["id"])
            && min_age.is_none_or(|m| v["age_ms"].as_u64().unwrap_or(0) >= m)
            && idle.is_none_or(|m| {
                v["age_ms"].as_u64().unwrap_or(0).saturating_sub(v["active_ms"].as_u64().unwrap_or(0)) >= m
            });
        if ok {
            if out.len() == limit {
                more = true;
                break;
            }
            out.push(v);
        }
    }
    let next = if more { out.last().and_then(|v| v["id"].as_str()).map(String::from) } else { None };
    (200, json!({ "connections": out, "next_after": next }))
}

/// `DELETE /api/connections/{id}?code=4000&reason=...`: the client gets that close (default
/// 1000), the backend 1001; answers once the connection ended (or after `KICK_WAIT`).
async fn kick(live: &LiveSet, id: &str, q: &str) -> Reply {
    let l = match find(live, id) {
        Ok(l) => l,
        Err(e) => return e,
    };
    let code = match query::param(q, "code").map(|v| v.and_then(|b| String::from_utf8(b).ok())) {
        None => 1000,
        Some(Some(c)) => match c.parse::<u16>() {
            Ok(c) if c == 1000 || (3000..=4999).contains(&c) => c,
            _ => return error(400, "code must be 1000 or an application code 3000-4999"),
        },
        Some(None) => return error(400, "code must be 1000 or an application code 3000-4999"),
    };
    let reason = match query::param(q, "reason") {
        None => String::new(),
        Some(Some(r)) => match String::from_utf8(r) {
            Ok(r) if r.len() <= 123 => r,
            _ => return error(400, "reason must be UTF-8, at most 123 bytes"),
        },
        Some(None) => return error(400, "reason has a bad percent-escape"),
    };
    let asked = Instant::now();
    l.stop(Stop { client: (code, reason), backend: (1001, String::new()), cause: Cause::Kicked });
    let id = l.meter.id();
    drop(l);
    while live.get(&id).is_some() {
        if asked.elapsed() >= KICK_WAIT {
            return (
                202,
                json!({"id": id.to_string(), "ended": false, "note": "close sent; the connection has not ended yet"}),
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (200, json!({"id": id.to_string(), "ended": true, "ended_after_ms": asked.elapsed().as_millis() as u64}))
}

/// `GET /api/summary`: open connections by route and by tenant, the `SUMMARY_NEWEST` newest
/// (newest first, as `GET /api/connections/{id}` shows each), counters since start (connections
/// started and ended, handshakes refused, closes by cause: the page turns them into rates) and
/// today's usage per tenant (`metering::today`).
fn summary(ops: &Ops) -> Value {
    let (today, open) = ops.live.today();
    let mut routes: BTreeMap<Option<crate::billing::Name>, u64> = BTreeMap::new();
    let mut tenants: BTreeMap<Option<crate::billing::Name>, u64> = BTreeMap::new();
    for l in &open {
        let id = l.meter.identity();
        *routes.entry(id.route.clone()).or_default() += 1;
        *tenants.entry(id.tenant.clone()).or_default() += 1;
    }
    let rows = |key: &str, m: BTreeMap<Option<crate::billing::Name>, u64>| -> Vec<Value> {
        m.into_iter().map(|(k, n)| json!({key: k, "connections": n})).collect()
    };
    let now = Instant::now();
    let newest: Vec<Value> = open.iter().rev().take(SUMMARY_NEWEST).map(|l| l.view(now)).collect();
    let m = &ops.metrics;
    let closes: Vec<Value> = sum_by(&m.closes, names::CAUSE)
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(cause, n)| json!({"cause": cause, "count": n}))
        .collect();
    json!({
        "at": crate::billing::record::rfc3339_ms(std::time::SystemTime::now()),
        "open": open.len(),
        "routes": rows("route", routes),
        "tenants": rows("tenant", tenants),
        "newest": newest,
        "started_total": sum_by(&m.connections_started, names::ROUTE).values().sum::<u64>(),
        "ended_total": sum_by(&m.connections_total, names::ROUTE).values().sum::<u64>(),
        "refused_total": sum_by(&m.handshake_rejections, names::ROUTE).values().sum::<u64>(),
        "closes": closes,
        "today": today.json(),
    })
}

/// The values of counter family `c`, summed by its label `label`.
fn sum_by(c: &IntCounterVec, label: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for family in c.collect() {
        for m in family.get_metric() {
            let key = m.get_label().iter().find(|l| l.name() == label).map_or("", |l| l.value());
            *out.entry(key.to_string()).or_default() += m.get_counter().value() as u64;
        }
    }
    out
}

/// `GET /api/backends`: pools, backends, health, draining, open connections each.
fn backends(ops: &Ops) -> Value {
    let mut open: std::collections::HashMap<SocketAddr, u64> = std::collections::HashMap::new();
    for l in ops.live.all() {
        if let Some(b) = l.meter.identity().backend {
            *open.entry(b).or_default() += 1;
        }
    }
    let pools: Vec<Value> = (ops.pools)()
        .describe()
        .into_iter()
        .map(|(name, backends)| {
            let list: Vec<Value> = backends
                .iter()
                .map(|b| {
                    json!({
                        "backend": b.label, "address": b.addr.to_string(), "healthy": b.healthy,
                        "draining": b.draining, "connections": open.get(&b.addr).copied().unwrap_or(0),
                    })
                })
                .collect();
            json!({"name": name, "backends": list})
        })
        .collect();
    json!({ "pools": pools })
}

/// Start draining: refuse new upgrades from now on and close every open connection once, each
/// at its own point of the window (spread by its id, so the clients reconnect gradually).
/// Returns how many connections were open.
pub fn start_drain(live: &Arc<LiveSet>, plan: DrainPlan) -> usize {
    drain(live, plan, true)
}

/// `start_drain`; without `refuse_new` (a binary upgrade's old process) new upgrades on
/// connections it already accepted are still served.
pub fn drain(live: &Arc<LiveSet>, plan: DrainPlan, refuse_new: bool) -> usize {
    if !live.begin_drain(refuse_new) {
        return live.len();
    }
    let reason = if plan.code == 1012 { "restart" } else { "draining" };
    let stop = Stop { client: (plan.code, reason.into()), backend: (1001, String::new()), cause: Cause::Drained };
    let n = close_spread(live.all(), plan.window, stop);
    tracing::info!(
        connections = n,
        window_ms = plan.window.as_millis() as u64,
        "draining: closing open connections over the window"
    );
    n
}

/// Close the open connections to backend `addr` with 1012 (reconnect: the next lands on another
/// backend), spread over the drain window; returns how many.
pub fn close_backend(live: &LiveSet, addr: SocketAddr, plan: DrainPlan, why: &str) -> usize {
    let conns: Vec<Arc<Live>> = live.all().into_iter().filter(|l| l.meter.identity().backend == Some(addr)).collect();
    let stop = Stop { client: (1012, why.into()), backend: (1001, String::new()), cause: Cause::Drained };
    let n = close_spread(conns, plan.window, stop);
    if n > 0 {
        tracing::info!(backend = %addr, connections = n, reason = why, "closing a backend's connections over the drain window");
    }
    n
}

/// Give each of `conns` `stop` at its own point of `window` (by its id); returns how many.
fn close_spread(conns: Vec<Arc<Live>>, window: Duration, stop: Stop) -> usize {
    let mut order: Vec<(Duration, Arc<Live>)> = conns
        .into_iter()
        .map(|l| {
            let share = (l.meter.id().as_u128() as u64 & 0xFFFF_FFFF) as f64 / (1u64 << 32) as f64;
            (window.mul_f64(share), l)
        })
        .collect();
    order.sort_by_key(|(at, _)| *at);
    let n = order.len();
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        // No runtime to spread them on: close them all now.
        for (_, l) in order {
            l.stop(stop.clone());
        }
        return n;
    };
    let started = Instant::now();
    rt.spawn(async move {
        for (at, l) in order {
            tokio::time::sleep_until((started + at).into()).await;
            l.stop(stop.clone());
        }
    });
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_rules() {
        let open = Access::default();
        let lo: Option<SocketAddr> = Some("127.0.0.1:5".parse().unwrap());
        let far: Option<SocketAddr> = Some("10.0.0.1:5".parse().unwrap());
        assert!(open.allows("/api/connections", lo, None));
        assert!(!open.allows("/api/connections", far, None), "no token: loopback only");
        assert!(open.allows("/metrics", far, None));
        let locked = Access { token: Some("s3cret".into()), metrics_public: false };
        assert!(!locked.allows("/api/connections", lo, None));
        assert!(!locked.allows("/api/connections", lo, Some("Bearer wrong")));
        assert!(locked.allows("/api/connections", far, Some("Bearer s3cret")));
        assert!(!locked.allows("/metrics", lo, None));
        assert!(locked.allows("/readyz", far, None) && locked.allows("/healthz", far, None));
        assert!(locked.allows("/", far, None), "the status page itself holds no data");
        assert!(!locked.allows("/api/summary", far, None));
        assert!(Access { metrics_public: true, ..locked }.allows("/metrics", far, None));
    }
}
