//! The shape of `config.yaml` (every section, key and kind of value), and the check that finds
//! every unknown key and every value of the wrong kind at once, with its key path.
//!
//! Cold path (startup and `weir check`). serde stops at the first unknown key or type error, so
//! `parse` (mod.rs) first reads the file as a `serde_yaml::Value` and runs `check` on it: each
//! problem becomes a `ConfigError` (unknown keys with the nearest known key as a suggestion), and
//! the offending entry is removed (or, where the key is required or a list item, replaced by a
//! stand-in) so that the rest of the file can still be deserialized and validated; value errors
//! that only follow from a reported problem are left out (`Checked::explains`). `FILE` mirrors the
//! structs of `file.rs` key for key, in the same order; the tests in `tests.rs` compare the two
//! through serde itself, so a key added to a struct and not here (or the reverse) fails
//! `cargo test` rather than rejecting a valid file.

use super::error::ConfigError;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_yaml::{Mapping, Value};

/// What a key holds, as `file.rs` deserializes it.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// A single scalar read as text (names, addresses, paths, durations): `String`.
    Text,
    /// A whole number, 0 or more: `u64`.
    Count,
    /// `true` or `false`.
    Bool,
    /// A number or text (`FilePer`: `20`, `1e6` or `60s`).
    NumberOrText,
    /// A section: a map with the keys of a `Section`.
    Map(&'static Section),
    /// A list whose items are of this kind.
    List(&'static Kind),
}

/// One key of a section.
#[derive(Debug)]
pub struct Key {
    /// The key as written in the file (the serde field name).
    pub name: &'static str,
    /// What it holds.
    pub kind: Kind,
    /// `Some(example value)` when the key must be present (no `Option`, no `#[serde(default)]`).
    pub required: Option<&'static str>,
}

/// A map in the file and its keys, in the order of the `file.rs` struct's fields.
#[derive(Debug)]
pub struct Section {
    /// The section named in messages, with its article, e.g. "a route".
    pub what: &'static str,
    /// The `file.rs` struct it mirrors (for the tests and the reader).
    pub file_struct: &'static str,
    /// Its keys.
    pub keys: &'static [Key],
}

impl Section {
    fn key(&self, name: &str) -> Option<&'static Key> {
        self.keys.iter().find(|k| k.name == name)
    }

    fn names(&self) -> String {
        self.keys.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
    }
}

const fn opt(name: &'static str, kind: Kind) -> Key {
    Key { name, kind, required: None }
}

const fn req(name: &'static str, kind: Kind, example: &'static str) -> Key {
    Key { name, kind, required: Some(example) }
}

use Kind::{Bool, Count, NumberOrText, Text};

/// The whole file (`FileConfig`).
pub static FILE: Section = Section {
    what: "the file",
    file_struct: "FileConfig",
    keys: &[
        opt("server", Kind::Map(&SERVER)),
        opt("log", Kind::Map(&LOG)),
        opt("listeners", Kind::List(&Kind::Map(&LISTENER))),
        opt("admin", Kind::Map(&ADMIN)),
        opt("timeouts", Kind::Map(&TIMEOUTS)),
        opt("usage", Kind::Map(&USAGE)),
        opt("demo_page", Bool),
        opt("data_dir", Text),
        opt("objects", Kind::List(&Kind::Map(&OBJECT))),
        opt("pools", Kind::List(&Kind::Map(&POOL))),
        opt("routes", Kind::List(&Kind::Map(&ROUTE))),
        opt("billing", Kind::Map(&BILLING)),
        opt("echo", Kind::Map(&ECHO)),
        opt("limits", Kind::Map(&LIMITS)),
        opt("admission", Kind::Map(&ADMISSION)),
        opt("trusted_proxies", Kind::List(&Text)),
        opt("quotas", Kind::List(&Kind::Map(&QUOTA))),
        opt("drain", Kind::Map(&DRAIN)),
        opt("access_log", Text),
        opt("cluster", Kind::Map(&CLUSTER)),
    ],
};

static CLUSTER: Section = Section {
    what: "`cluster`",
    file_struct: "FileCluster",
    keys: &[
        req("name", Text, "prod"),
        req("instance", Text, "weir-a"),
        req("etcd", Kind::List(&Text), "[\"127.0.0.1:2379\"]"),
        opt("lease_ttl", Text),
        req("peer", Kind::Map(&PEER), "{address: \"127.0.0.1:7443\", secret_file: /etc/weir/peer.secret}"),
        opt("history", Kind::Map(&CLUSTER_HISTORY)),
    ],
};

static CLUSTER_HISTORY: Section = Section {
    what: "`cluster.history`",
    file_struct: "FileClusterHistory",
    keys: &[req("postgres", Text, "\"host=127.0.0.1 user=weir dbname=weir\""), opt("ca_file", Text)],
};

static PEER: Section = Section {
    what: "`cluster.peer`",
    file_struct: "FilePeer",
    keys: &[req("address", Text, "\"127.0.0.1:7443\""), req("secret_file", Text, "/etc/weir/peer.secret")],
};

static DRAIN: Section = Section {
    what: "`drain`",
    file_struct: "FileDrain",
    keys: &[opt("window", Text), opt("close_code", Text), opt("removed_backends", Text)],
};

static QUOTA: Section = Section {
    what: "a quota",
    file_struct: "FileQuota",
    keys: &[
        req("tenant", Text, "acme"),
        req("of", Text, "messages"),
        req("limit", Count, "1000000"),
        req("per", Text, "day"),
    ],
};

static ADMISSION: Section = Section {
    what: "`admission`",
    file_struct: "FileAdmission",
    keys: &[
        opt("max_connections", Count),
        opt("max_connections_per_ip", Count),
        opt("max_connections_per_tenant", Count),
        opt("ip_rate", Kind::Map(&CONN_RATE)),
        opt("tenant_rate", Kind::Map(&CONN_RATE)),
        opt("max_tracked_ips", Count),
    ],
};

static CONN_RATE: Section = Section {
    what: "a connection rate",
    file_struct: "FileConnRate",
    keys: &[opt("per_second", Count), opt("burst", Count)],
};

static ROUTE_ADMISSION: Section = Section {
    what: "a route's `admission`",
    file_struct: "FileRouteAdmission",
    keys: &[opt("max_connections", Count)],
};

static AUTH: Section = Section {
    what: "`auth`",
    file_struct: "FileAuth",
    keys: &[
        opt("api_keys", Kind::List(&Kind::Map(&API_KEY))),
        opt("keys_file", Text),
        opt("jwt", Kind::Map(&JWT)),
        opt("client_cert", Kind::Map(&CLIENT_CERT_AUTH)),
        opt("external", Kind::Map(&EXTERNAL_AUTH)),
        opt("header", Text),
        opt("query", Text),
        opt("subprotocol", Text),
    ],
};

static CLIENT_CERT_AUTH: Section = Section {
    what: "`client_cert`",
    file_struct: "FileClientCertAuth",
    keys: &[opt("tenant_from", Text), opt("allow", Kind::List(&Text)), opt("objects", Kind::List(&Text))],
};

static API_KEY: Section = Section {
    what: "an API key",
    file_struct: "FileApiKey",
    keys: &[
        req("sha256", Text, "\"<64 hex digits from `weir key hash`>\""),
        req("tenant", Text, "acme"),
        opt("objects", Kind::List(&Text)),
    ],
};

static JWT: Section = Section {
    what: "`jwt`",
    file_struct: "FileJwt",
    keys: &[
        opt("algorithms", Kind::List(&Text)),
        opt("secret", Text),
        opt("public_key_file", Text),
        opt("jwks_file", Text),
        opt("issuer", Text),
        opt("audience", Text),
        opt("leeway", Text),
        opt("tenant_claim", Text),
        opt("objects_claim", Text),
    ],
};

static EXTERNAL_AUTH: Section = Section {
    what: "`external`",
    file_struct: "FileExternalAuth",
    keys: &[
        req("url", Text, "\"http://127.0.0.1:9000/check\""),
        opt("headers", Kind::List(&Text)),
        opt("tenant_header", Text),
        opt("copy_headers", Kind::List(&Text)),
        opt("timeout", Text),
        opt("cache_ttl", Text),
        opt("on_error", Text),
    ],
};

static LIMITS: Section = Section {
    what: "`limits`",
    file_struct: "FileLimits",
    keys: &[
        opt("idle_timeout", Text),
        opt("control_frames_are_activity", Bool),
        opt("max_lifetime", Text),
        opt("lifetime_jitter", Text),
        opt("lifetime_close", Text),
        opt("close_timeout", Text),
        opt("keepalive", Kind::Map(&KEEPALIVE)),
        opt("max_frame", Count),
        opt("max_message", Count),
        opt("message_rate", Kind::Map(&RATE)),
        opt("bandwidth", Kind::Map(&RATE)),
    ],
};

static KEEPALIVE: Section = Section {
    what: "`keepalive`",
    file_struct: "FileKeepalive",
    keys: &[opt("interval", Text), opt("timeout", Text), opt("backend", Bool)],
};

static RATE: Section = Section {
    what: "a rate limit",
    file_struct: "FileRate",
    keys: &[opt("per_second", Count), opt("burst", Count), opt("action", Text), opt("from", Text)],
};

static ECHO: Section = Section { what: "`echo`", file_struct: "FileEcho", keys: &[opt("max_message", Count)] };

static SERVER: Section = Section {
    what: "`server`",
    file_struct: "FileServer",
    keys: &[opt("threads", Count), opt("grace_period", Text), opt("fd_reserve", Count), opt("upgrade_sock", Text)],
};

static LOG: Section =
    Section { what: "`log`", file_struct: "FileLog", keys: &[opt("level", Text), opt("format", Text)] };

static LISTENER: Section = Section {
    what: "a listener",
    file_struct: "FileListener",
    keys: &[req("address", Text, "\"127.0.0.1:8080\""), opt("tls", Kind::Map(&TLS)), opt("proxy_protocol", Bool)],
};

static TLS: Section = Section {
    what: "`tls`",
    file_struct: "FileTls",
    keys: &[
        req("cert", Text, "/etc/weir/cert.pem"),
        req("key", Text, "/etc/weir/key.pem"),
        opt("client_auth", Kind::Map(&CLIENT_AUTH)),
    ],
};

static CLIENT_AUTH: Section = Section {
    what: "`client_auth`",
    file_struct: "FileClientAuth",
    keys: &[req("ca_file", Text, "/etc/weir/clients-ca.pem"), opt("mode", Text)],
};

static ADMIN: Section = Section {
    what: "`admin`",
    file_struct: "FileAdmin",
    keys: &[
        req("address", Text, "\"127.0.0.1:9090\""),
        opt("final_scrape", Text),
        opt("token", Text),
        opt("token_file", Text),
        opt("metrics_public", Bool),
    ],
};

static TIMEOUTS: Section = Section {
    what: "`timeouts`",
    file_struct: "FileTimeouts",
    keys: &[opt("request_head", Text), opt("backend_connect", Text), opt("backend_handshake", Text)],
};

static USAGE: Section = Section {
    what: "`usage`",
    file_struct: "FileUsage",
    keys: &[
        opt("file", Text),
        opt("spool_dir", Text),
        opt("fsync_interval", Text),
        opt("interim_interval", Text),
        opt("idle_threshold", Text),
        opt("default_tenant", Text),
        opt("on_spool_error", Text),
        opt("rejections_per_client", Count),
        opt("rejection_window", Text),
        opt("sinks", Kind::List(&Kind::Map(&SINK))),
    ],
};

static SINK: Section = Section {
    what: "a sink",
    file_struct: "FileSink",
    keys: &[
        req("kind", Text, "file"),
        opt("name", Text),
        opt("path", Text),
        opt("rotate_bytes", Count),
        opt("rotate_interval", Text),
        opt("url", Text),
        opt("table", Text),
        opt("batch", Count),
        opt("timeout", Text),
        opt("ca_file", Text),
        opt("client_cert", Text),
        opt("client_key", Text),
        opt("auth_header", Text),
    ],
};

static POOL: Section = Section {
    what: "a pool",
    file_struct: "FilePool",
    keys: &[
        req("name", Text, "demo"),
        opt("backends", Kind::List(&Text)),
        opt("selection", Text),
        opt("health_check", Kind::Map(&HEALTH_CHECK)),
        opt("close_unhealthy", Bool),
        opt("tls", Kind::Map(&CLIENT_TLS)),
    ],
};

static CLIENT_TLS: Section = Section {
    what: "a backend `tls`",
    file_struct: "FileClientTls",
    keys: &[
        opt("sni", Text),
        opt("ca_file", Text),
        opt("client_cert", Text),
        opt("client_key", Text),
        opt("verify", Bool),
    ],
};

static HEALTH_CHECK: Section = Section {
    what: "a health check",
    file_struct: "FileHealthCheck",
    keys: &[req("kind", Text, "tcp"), opt("interval", Text), opt("path", Text)],
};

static ROUTE: Section = Section {
    what: "a route",
    file_struct: "FileRoute",
    keys: &[
        opt("name", Text),
        opt("host", Text),
        req("path_prefix", Text, "/ws"),
        opt("kind", Text),
        opt("pool", Text),
        opt("tenant", Text),
        opt("object", Text),
        opt("limits", Kind::Map(&LIMITS)),
        opt("auth", Kind::Map(&AUTH)),
        opt("origins", Kind::List(&Text)),
        opt("allow_no_origin", Bool),
        opt("admission", Kind::Map(&ROUTE_ADMISSION)),
    ],
};

static OBJECT: Section = Section {
    what: "an object namespace",
    file_struct: "FileObject",
    keys: &[
        req("name", Text, "rooms"),
        req("id", Kind::Map(&OBJECT_ID), "{path: /rooms/{id}}"),
        opt("builtin", Text),
        opt("hosts", Kind::List(&Text)),
        opt("health_check", Kind::Map(&HEALTH_CHECK)),
        opt("forward_path", Text),
        opt("idle_window", Text),
        opt("room", Kind::Map(&ROOM)),
        opt("limits", Kind::Map(&LIMITS)),
        opt("tls", Kind::Map(&CLIENT_TLS)),
    ],
};

static OBJECT_ID: Section = Section {
    what: "an object `id`",
    file_struct: "FileObjectId",
    keys: &[opt("path", Text), opt("query", Text), opt("header", Text), opt("max_length", Count), opt("allowed", Text)],
};

static ROOM: Section = Section {
    what: "`room`",
    file_struct: "FileRoom",
    keys: &[
        opt("history", Count),
        opt("send_queue", Count),
        opt("max_message", Count),
        opt("send_timeout", Text),
        opt("history_bytes", Count),
        opt("max_rooms_on_disk", Count),
    ],
};

static BILLING: Section =
    Section { what: "`billing`", file_struct: "FileBilling", keys: &[opt("units", Kind::List(&Kind::Map(&UNIT)))] };

static UNIT: Section = Section {
    what: "a unit",
    file_struct: "FileUnit",
    keys: &[req("name", Text, "apigw_messages"), opt("terms", Kind::List(&Kind::Map(&TERM))), opt("round", Text)],
};

static TERM: Section = Section {
    what: "a term",
    file_struct: "FileTerm",
    keys: &[req("of", Text, "messages_in"), opt("per", NumberOrText), opt("chunk", Count)],
};

/// A key path, as shown (`routes[1].pool`) and as steps for finding its position in the text.
#[derive(Debug, Clone, Default)]
struct Path {
    shown: String,
    steps: Vec<Step>,
}

/// One step of a key path: a map key or a list index.
#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Index(usize),
}

impl Path {
    fn key(&self, name: &str) -> Path {
        let shown = if self.shown.is_empty() { name.to_string() } else { format!("{}.{name}", self.shown) };
        let mut steps = self.steps.clone();
        steps.push(Step::Key(name.to_string()));
        Path { shown, steps }
    }

    fn index(&self, i: usize) -> Path {
        let mut steps = self.steps.clone();
        steps.push(Step::Index(i));
        Path { shown: format!("{}[{i}]", self.shown), steps }
    }
}

/// What `check` found, and which later value errors it already explains.
#[derive(Debug, Default)]
pub struct Checked {
    /// Unknown keys, values of the wrong kind and missing required keys, in file order.
    pub errors: Vec<ConfigError>,
    /// For each error, where to look for it in the text (`locate`).
    found_at: Vec<Vec<Step>>,
    /// Key paths whose value was reported (or is missing because of a reported typo): a value
    /// error at or under one of them only repeats it.
    covered: Vec<String>,
    /// Sections that held a reported key: a value error about the section as a whole (e.g. "set
    /// exactly one of `pool` or `object`" after `pool_name:`) most likely follows from it.
    sections: Vec<String>,
}

impl Checked {
    /// Whether a value error at `key` follows from a problem already reported.
    pub fn explains(&self, key: &str) -> bool {
        self.sections.iter().any(|s| s == key)
            || self.covered.iter().any(|c| {
                // The empty path covers the whole file (it was not a map at all).
                c.is_empty()
                    || key.strip_prefix(c.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
            })
    }

    /// Give every error the line and column of its key (or list item, or the section missing a
    /// key) in `text`, the file `check` ran on.
    pub fn locate(&mut self, text: &str) {
        for (e, steps) in self.errors.iter_mut().zip(&self.found_at) {
            e.position = position(text, steps);
        }
    }

    fn push(&mut self, found_at: &Path, e: ConfigError) {
        self.errors.push(e);
        self.found_at.push(found_at.steps.clone());
    }
}

/// Check the whole file against `FILE`, fixing `doc` up so that it deserializes into
/// `FileConfig`: unknown keys and optional keys of the wrong kind are removed, required ones get
/// an empty stand-in of the right kind.
pub fn check(doc: &mut Value) -> Checked {
    let mut c = Checked::default();
    untag(doc);
    match doc {
        Value::Null => *doc = Value::Mapping(Mapping::new()),
        Value::Mapping(_) => c.map(&Path::default(), &FILE, doc),
        _ => {
            let e = ConfigError::new(
                "(document)",
                shown(doc),
                "the file must be a map of sections, e.g. `listeners:`, `pools:` and `routes:` at the \
                 start of their lines",
            );
            c.push(&Path::default(), e);
            c.covered.push(String::new());
            *doc = Value::Mapping(Mapping::new());
        }
    }
    c
}

impl Checked {
    /// Check the map `v` at key path `at` against `section`.
    fn map(&mut self, at: &Path, section: &'static Section, v: &mut Value) {
        let Value::Mapping(m) = v else { return };
        let mut remove = Vec::new();
        // Required keys a reported typo most likely stands for: not reported again as missing.
        let mut meant = Vec::new();
        let written: Vec<Value> = m.keys().cloned().collect();
        for k in written {
            let name = match &k {
                Value::String(s) => s.clone(),
                other => shown(other),
            };
            let path = at.key(&name);
            let Some(key) = section.key(&name) else {
                let fix = match suggest(&name, section) {
                    Some(s) if m.contains_key(s) => {
                        format!("unknown field `{name}` in {} (`{s}` is already set); remove it", section.what)
                    }
                    Some(s) => {
                        self.covered.push(at.key(s).shown);
                        meant.push(s);
                        format!("unknown field `{name}` in {}; did you mean `{s}`?", section.what)
                    }
                    None => format!(
                        "unknown field `{name}` in {}; remove it (the keys here are: {})",
                        section.what,
                        section.names()
                    ),
                };
                self.push(&path, ConfigError::new(&path.shown, "", fix));
                self.sections.push(at.shown.clone());
                remove.push(k);
                continue;
            };
            let Some(value) = m.get_mut(&k) else { continue };
            untag(value);
            if value.is_null() {
                // `key:` with nothing after it, or `~`: the same as leaving the key out.
                remove.push(k);
                continue;
            }
            if !self.value(&path, key.kind, value) {
                match key.required {
                    Some(_) => *value = stand_in(key.kind, &path),
                    None => remove.push(k),
                }
                self.covered.push(path.shown);
                self.sections.push(at.shown.clone());
            }
        }
        for k in &remove {
            m.remove(k);
        }
        for key in section.keys {
            let Some(example) = key.required else { continue };
            if m.contains_key(key.name) {
                continue;
            }
            let path = at.key(key.name);
            if !meant.contains(&key.name) {
                let fix = format!("{} needs `{}`; add it, e.g. `{}: {example}`", section.what, key.name, key.name);
                // Found at the section that lacks it.
                self.push(at, ConfigError::new(&path.shown, "", fix));
                self.sections.push(at.shown.clone());
            }
            m.insert(Value::String(key.name.to_string()), stand_in(key.kind, &path));
            self.covered.push(path.shown);
        }
    }

    /// Check `v` at `path` against `kind` (descending into maps and lists); on a value of the
    /// wrong kind, report it and return false so the caller removes or replaces it.
    fn value(&mut self, path: &Path, kind: Kind, v: &mut Value) -> bool {
        untag(v);
        let ok = match (kind, &mut *v) {
            (Kind::Text, Value::String(_)) => true,
            // serde_yaml reads any scalar as text (`name: 123`); keep accepting what it accepts.
            (Kind::Text, Value::Number(n)) => {
                *v = Value::String(n.to_string());
                true
            }
            (Kind::Text, Value::Bool(b)) => {
                *v = Value::String(b.to_string());
                true
            }
            (Kind::Count, Value::Number(n)) => n.as_u64().is_some(),
            (Kind::Bool, Value::Bool(_)) => true,
            (Kind::NumberOrText, Value::Number(_) | Value::String(_)) => true,
            (Kind::Map(section), Value::Mapping(_)) => {
                self.map(path, section, v);
                true
            }
            (Kind::List(item), Value::Sequence(items)) => {
                for (i, it) in items.iter_mut().enumerate() {
                    let at = path.index(i);
                    // An item is never removed (later items keep their index in messages).
                    if !self.value(&at, *item, it) {
                        *it = stand_in(*item, &at);
                        self.covered.push(at.shown);
                    }
                }
                true
            }
            _ => false,
        };
        if !ok {
            self.push(path, ConfigError::new(&path.shown, shown(v), expected(kind, v)));
        }
        ok
    }
}

/// What to write instead of `v` where `kind` is expected.
fn expected(kind: Kind, v: &Value) -> String {
    match kind {
        Kind::Text => "must be a single value (text, an address, a duration or a name), not a list or a map".into(),
        Kind::Count => match v {
            Value::String(s) if s.trim().parse::<u64>().is_ok() => {
                format!("must be a whole number; write it without quotes: {}", s.trim())
            }
            _ => "must be a whole number, 0 or more, e.g. 4".into(),
        },
        Kind::Bool => "must be true or false".into(),
        Kind::NumberOrText => "must be a number (e.g. 20) or a duration (e.g. 60s)".into(),
        Kind::Map(s) => {
            format!("must be {}: a map with the keys {} (`key: value`, one per line or in {{ }})", s.what, s.names())
        }
        Kind::List(item) => match (item, v) {
            (Kind::Map(s), Value::Mapping(_)) => {
                format!("must be a list of entries like {}; put `- ` before the entry, or wrap it in [ ]", s.what)
            }
            (Kind::Text, Value::String(s)) => format!("must be a list; write it as [\"{s}\"]"),
            _ => "must be a list: [a, b], or one `- ` item per line".into(),
        },
    }
}

/// A value of `kind` for the required key or list item at `path` that was reported: it lets the
/// file deserialize, and the value errors it causes are left out (`Checked::explains`). Text is
/// `<path>`, different at every path, so that two stand-ins never make a "used twice" error.
fn stand_in(kind: Kind, path: &Path) -> Value {
    match kind {
        Kind::Text | Kind::NumberOrText => Value::String(format!("<{}>", path.shown)),
        Kind::Count => Value::Number(0.into()),
        Kind::Bool => Value::Bool(false),
        Kind::List(_) => Value::Sequence(Vec::new()),
        Kind::Map(section) => {
            let mut m = Mapping::new();
            for k in section.keys.iter().filter(|k| k.required.is_some()) {
                m.insert(Value::String(k.name.to_string()), stand_in(k.kind, &path.key(k.name)));
            }
            Value::Mapping(m)
        }
    }
}

/// Drop a YAML tag (`!foo value`): serde_yaml ignores it when deserializing, so does the check.
fn untag(v: &mut Value) {
    while let Value::Tagged(t) = v {
        let inner = std::mem::take(&mut t.value);
        *v = inner;
    }
}

/// A value as it reads in flow YAML, cut short if long.
fn shown(v: &Value) -> String {
    const MAX: usize = 60;
    let mut s = String::new();
    flow(v, &mut s);
    if s.chars().count() > MAX {
        s = s.chars().take(MAX).collect::<String>() + "…";
    }
    s
}

fn flow(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push('~'),
        Value::Bool(b) => out.push_str(&b.to_string()),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => out.push_str(s),
        Value::Sequence(items) => {
            out.push('[');
            for (i, it) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                flow(it, out);
            }
            out.push(']');
        }
        Value::Mapping(m) => {
            out.push('{');
            for (i, (k, it)) in m.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                flow(k, out);
                out.push_str(": ");
                flow(it, out);
            }
            out.push('}');
        }
        Value::Tagged(t) => {
            out.push_str(&t.tag.to_string());
            out.push(' ');
            flow(&t.value, out);
        }
    }
}

/// The known key of `section` that `written` most likely meant, if any is close: the same key in
/// another case or with `-` for `_`; one a few edits away (transposed letters count as one); or one
/// that starts the written key or is started by it (`pool_name` → `pool`, `grace` → `grace_period`).
fn suggest(written: &str, section: &Section) -> Option<&'static str> {
    let w = written.to_ascii_lowercase().replace('-', "_");
    let limit = w.chars().count().div_ceil(3).max(1);
    section
        .keys
        .iter()
        .filter_map(|k| {
            let d = edit_distance(&w, k.name);
            let prefix = w.len().min(k.name.len()) >= 3 && (w.starts_with(k.name) || k.name.starts_with(w.as_str()));
            // Rank: a prefix relation first (`path` → `path_prefix`, not `auth`), then distance,
            // then file order.
            (d <= limit || prefix).then_some((d, !prefix, k.name))
        })
        .min_by_key(|&(d, not_prefix, _)| (not_prefix, d))
        .map(|(_, _, name)| name)
}

/// Optimal string alignment distance: insertions, deletions, substitutions and transpositions of
/// adjacent characters, each costing one.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// The line and column (1-based) of what `steps` leads to in `text`: a key when the last step is
/// a key, a list item or the whole document otherwise. serde_yaml's `Value` keeps no positions,
/// so this reads the text once more and stops with an error at the target, which serde_yaml
/// gives the position of. `None` when the target is not there.
fn position(text: &str, steps: &[Step]) -> Option<(usize, usize)> {
    match Find(steps).deserialize(serde_yaml::Deserializer::from_str(text)) {
        Err(e) if e.to_string().contains(HERE) => e.location().map(|l| (l.line(), l.column())),
        _ => None,
    }
}

/// The error `Find` stops with once at the target.
const HERE: &str = "weir: the position looked for";

/// Walks the text along `steps`, skipping everything else.
struct Find<'a>(&'a [Step]);

impl<'de> DeserializeSeed<'de> for Find<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        match self.0.first() {
            None => d.deserialize_any(Here),
            Some(Step::Key(_)) => d.deserialize_map(self),
            Some(Step::Index(_)) => d.deserialize_seq(self),
        }
    }
}

impl<'de> Visitor<'de> for Find<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("the configuration")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<(), A::Error> {
        let Some((Step::Key(name), rest)) = self.0.split_first() else { return Ok(()) };
        while let Some(hit) = m.next_key_seed(KeyIs { name, last: rest.is_empty() })? {
            if hit {
                m.next_value_seed(Find(rest))?;
            } else {
                m.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<(), A::Error> {
        let Some((Step::Index(i), rest)) = self.0.split_first() else { return Ok(()) };
        let mut n = 0;
        loop {
            let more = if n == *i {
                s.next_element_seed(Find(rest))?.is_some()
            } else {
                s.next_element::<IgnoredAny>()?.is_some()
            };
            if !more {
                return Ok(());
            }
            n += 1;
        }
    }
}

/// The target itself: every value fails here, with `HERE` in the message.
struct Here;

impl Visitor<'_> for Here {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(HERE)
    }
}

/// A map key: whether it is `name`; fails with `HERE` when it is and the walk ends there.
struct KeyIs<'a> {
    name: &'a str,
    last: bool,
}

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeyIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<bool, E> {
        match (v == self.name, self.last) {
            (true, true) => Err(E::custom(HERE)),
            (hit, _) => Ok(hit),
        }
    }
}
