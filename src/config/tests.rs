//! Config loading and validation: the shipped file, defaults, and every error at once.

use super::*;
use std::time::Duration;

fn errors(yaml: &str) -> Vec<String> {
    match parse(yaml, "test.yaml") {
        Ok(_) => panic!("expected errors for:\n{yaml}"),
        Err(e) => e.errors.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn shipped_config_yaml_loads() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config.yaml");
    let c = load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.listeners.len(), 1);
    assert!(c.admin.is_some());
    assert!(c.demo_page);
    assert_eq!(c.pools[0].backends, vec![Backend::Builtin(BuiltinKind::Echo)]);
    assert_eq!(c.routes[0].kind, RouteKind::WebSocket);
    let rooms = &c.objects[0];
    assert_eq!(rooms.id_source, IdSource::Path { prefix: "/rooms/".into(), suffix: String::new() });
    assert!(matches!(rooms.kind, ObjectKind::Builtin(BuiltinObject::Room(RoomConfig { history: 50, .. }))));
    assert_eq!(c.routes[1].target, Target::Object(0));
}

#[test]
fn minimal_config_gets_defaults() {
    let c = parse(
        "listeners: [{address: \"127.0.0.1:8080\"}]\npools: [{name: p, backends: [\"127.0.0.1:9000\"]}]\nroutes: [{path_prefix: /, pool: p}]\n",
        "t",
    )
    .unwrap();
    assert_eq!(c.threads, 2);
    assert_eq!(c.timeouts.backend_connect, Duration::from_secs(3));
    assert_eq!(c.pools[0].selection, Selection::RoundRobin);
    assert_eq!(c.pools[0].health, HealthCheck::Tcp { interval: Duration::from_secs(5) });
    assert_eq!(c.routes[0].name, "/");
    assert_eq!(c.usage.sinks.len(), 1);
    assert!(
        matches!(&c.usage.sinks[0].kind, SinkKind::File { path, .. } if path == std::path::Path::new("weir-usage.jsonl"))
    );
    assert_eq!(c.usage.fsync_interval, Duration::from_millis(200));
    assert_eq!(c.usage.interim_interval, Duration::from_secs(60));
    assert!(!c.usage.fail_open);
}

#[test]
fn every_error_is_reported_with_key_value_and_fix() {
    let e = errors(
        r#"
server: {threads: 0, grace_period: soon}
listeners: [{address: "127.0.0.1"}, {address: "127.0.0.1:80"}, {address: "127.0.0.1:80"}]
admin: {address: "127.0.0.1:80"}
timeouts: {backend_connect: 0s}
log: {format: xml}
pools:
  - {name: chat, backends: ["10.0.0.7", "builtin:room", "127.0.0.1:1", "127.0.0.1:1"], selection: least_conn, health_check: {kind: ping}}
  - {name: chat, backends: []}
routes:
  - {path_prefix: chat, pool: nope, kind: tcp}
"#,
    );
    let all = e.join("\n");
    for needle in [
        "server.threads: \"0\": must be between 1 and 256",
        "server.grace_period: \"soon\": is not a duration",
        "listeners[0].address: \"127.0.0.1\": is not host:port; write it as \"127.0.0.1:8080\"",
        "listeners[2].address: \"127.0.0.1:80\": is already used",
        "admin.address: \"127.0.0.1:80\": is also a public listener",
        "timeouts.backend_connect: \"0s\": must be greater than zero",
        "log.format: \"xml\": must be `text` or `json`",
        "pools[0].backends[0]: \"10.0.0.7\": is not host:port; write it as \"10.0.0.7:8080\"",
        "pools[0].backends[1]: \"builtin:room\": `room` is not a built-in server",
        "pools[0].backends[3]: \"127.0.0.1:1\": is listed twice",
        "pools[0].selection: \"least_conn\": must be round_robin, random, ip_hash or least_connections",
        "pools[0].health_check.kind: \"ping\": must be tcp, http, handshake or none",
        "pools[1].name: \"chat\": is used by an earlier pool",
        "pools[1].backends: a pool needs at least one backend",
        "routes[0].path_prefix: \"chat\": must start with `/`",
        "routes[0].kind: \"tcp\": must be `websocket`",
        "routes[0].pool: \"nope\": no pool has this name; use one of: chat, chat",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
    assert_eq!(e.len(), 17, "{all}");
}

#[test]
fn unknown_keys_are_rejected_with_their_position() {
    let e = errors("listeners: [{address: \"127.0.0.1:1\", tsl: {}}]\n");
    assert!(e[0].contains("unknown field `tsl`"), "{e:?}");
    // The key path first, then the position (it used to be the position alone).
    assert!(e[0].starts_with("listeners[0].tsl (line 1, column 38): "), "{e:?}");
}

#[test]
fn missing_sections_are_named() {
    let e = errors("log: {level: info}\n");
    assert!(e.iter().any(|e| e.starts_with("listeners: at least one listener")), "{e:?}");
    assert!(e.iter().any(|e| e.starts_with("routes: at least one route")), "{e:?}");
}

#[test]
fn object_namespaces_report_every_error() {
    let e = errors(
        r#"
listeners: [{address: "127.0.0.1:8080"}]
pools: [{name: p, backends: ["127.0.0.1:9000"]}]
objects:
  - {name: a, id: {path: "/rooms/x{id}"}, builtin: room}
  - {name: b, id: {query: room, header: X-Room}, builtin: echo, room: {history: 5}}
  - {name: c, id: {path: "/c/{id}", allowed: "z-a", max_length: 0}, builtin: echo, hosts: ["127.0.0.1:1"]}
  - {name: d, id: {header: "X Room"}, hosts: ["127.0.0.1:1", "127.0.0.1:1"], forward_path: "objects", room: {}}
  - {name: e, id: {path: "/e/{id}"}, builtin: chat}
  - {name: f, id: {path: "/f/{id}"}, builtin: echo}
routes:
  - {path_prefix: /x, pool: p, object: e}
  - {path_prefix: /rooms, object: nope}
  - {path_prefix: /other, object: f}
  - {path_prefix: /c, object: c, kind: http}
"#,
    );
    let all = e.join("\n");
    for needle in [
        "objects[0].id.path: \"/rooms/x{id}\": must start with `/` and contain {id} once, as a whole segment",
        "objects[1].id: set exactly one of `path`",
        "objects[1].room: applies to `builtin: room` only",
        "objects[2].id.max_length: \"0\": must be between 1 and 4096",
        "objects[2].id.allowed: \"z-a\": range z-a is reversed",
        "objects[2].builtin: \"echo\": set exactly one of `builtin` (echo or room) or `hosts`",
        "objects[3].id.header: \"X Room\": must be a non-empty name without spaces",
        "objects[3].hosts[1]: \"127.0.0.1:1\": is listed twice",
        "objects[3].forward_path: \"objects\": must start with `/` and contain {id}",
        "objects[3].room: applies to `builtin: room` only",
        "objects[4].builtin: \"chat\": must be `echo` or `room`",
        "routes[0]: \"/x\": set exactly one of `pool` (a backend pool) or `object`",
        "routes[1].object: \"nope\": no object namespace has this name; use one of: a, b, c, d, e, f",
        "routes[2].path_prefix: \"/other\": never matches the paths of object namespace `f`",
        "routes[3].kind: \"http\": object routes carry WebSockets only",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
    assert_eq!(e.len(), 15, "{all}");
}

#[test]
fn billing_units_are_validated_with_slots_in_order_of_first_use() {
    let c = parse(
        r#"
listeners: [{address: "127.0.0.1:8080"}]
pools: [{name: p, backends: ["127.0.0.1:9000"]}]
routes: [{path_prefix: /, pool: p}]
billing:
  units:
    - name: msgs
      terms: [{of: messages_out, chunk: 2048}, {of: messages_in, chunk: 32768, per: 1000}]
    - name: minutes
      terms: [{of: duration, per: 1m}, {of: active_time, per: 500ms}]
      round: up
    - name: same_size
      terms: [{of: messages_in, chunk: 2048}, {of: payload_bytes_out, per: "1e6"}]
      round: none
"#,
        "t",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let u = &c.billing_units;
    assert_eq!(u.len(), 3);
    assert_eq!(
        u[0].terms[0],
        UnitTerm { of: Quantity::MessagesOut, per: 1.0, chunk: Some(ChunkSlot { bytes: 2048, slot: 0 }) }
    );
    assert_eq!(
        u[0].terms[1],
        UnitTerm { of: Quantity::MessagesIn, per: 1000.0, chunk: Some(ChunkSlot { bytes: 32768, slot: 1 }) }
    );
    assert_eq!(u[0].round, Rounding::None);
    assert_eq!(u[1].terms[0].per, 60_000.0);
    assert_eq!(u[1].terms[1].per, 500.0);
    assert_eq!(u[1].round, Rounding::Up);
    assert_eq!(u[2].terms[0].chunk, Some(ChunkSlot { bytes: 2048, slot: 0 }));
    assert_eq!(u[2].terms[1].per, 1e6);
}

#[test]
fn no_billing_section_means_no_units() {
    let c = parse(
        "listeners: [{address: \"127.0.0.1:8080\"}]\npools: [{name: p, backends: [\"127.0.0.1:9000\"]}]\nroutes: [{path_prefix: /, pool: p}]\n",
        "t",
    )
    .unwrap();
    assert!(c.billing_units.is_empty());
}

#[test]
fn billing_units_report_every_error() {
    let e = errors(
        r#"
listeners: [{address: "127.0.0.1:8080"}]
pools: [{name: p, backends: ["127.0.0.1:9000"]}]
routes: [{path_prefix: /, pool: p}]
billing:
  units:
    - name: Requests
      terms: [{of: requests, per: 0}, {of: bytes_in}]
    - name: ok
      terms: []
      round: down
    - name: ok
      terms:
        - {of: duration}
        - {of: duration, per: 60}
        - {of: active_time, per: soon}
        - {of: messages_in, per: 60s}
        - {of: payload_bytes_in, chunk: 1024}
        - {of: messages_out, chunk: 0}
    - name: five_sizes
      terms:
        - {of: messages_in, chunk: 1}
        - {of: messages_in, chunk: 2}
        - {of: messages_out, chunk: 2}
        - {of: messages_out, chunk: 3}
        - {of: messages_out, chunk: 4}
        - {of: messages_out, chunk: 5}
"#,
    );
    let all = e.join("\n");
    for needle in [
        "billing.units[0].name: \"Requests\": must be non-empty and use only lower-case letters, digits and `_`",
        "billing.units[0].terms[0].per: \"0\": must be a number greater than zero",
        "billing.units[0].terms[1].of: \"bytes_in\": is not a quantity; use one of: requests, messages_in, messages_out, payload_bytes_in, payload_bytes_out, wire_bytes_in, wire_bytes_out, duration, active_time",
        "billing.units[1].terms: a unit needs at least one term",
        "billing.units[1].round: \"down\": must be `none` (keep fractions) or `up`",
        "billing.units[2].name: \"ok\": is used by an earlier unit",
        "billing.units[2].terms[0].per: `duration` is a time: set `per` to a duration, e.g. 60s",
        "billing.units[2].terms[1].per: \"60\": `duration` is a time: write `per` as a duration with a unit",
        "billing.units[2].terms[2].per: \"soon\": `active_time` is a time",
        "billing.units[2].terms[3].per: \"60s\": `messages_in` is a count: write `per` as a plain number",
        "billing.units[2].terms[4].chunk: \"1024\": applies to messages_in and messages_out only",
        "billing.units[2].terms[5].chunk: \"0\": must be a size in bytes between 1 and 4294967295",
        "billing.units[3].terms[5].chunk: \"5\": is one distinct chunk size too many: weir counts at most 4 at once (in use: 1, 2, 3, 4)",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
    assert_eq!(e.len(), 13, "{all}");
}

#[test]
fn billing_keys_are_strict() {
    let e = errors("billing: {units: [{name: a, terms: [{of: requests, every: 2}]}]}\n");
    assert!(e[0].contains("unknown field `every`"), "{e:?}");
}

#[test]
fn room_limits_have_defaults_and_name_the_key_on_error() {
    let base = "listeners: [{address: \"127.0.0.1:8080\"}]\nroutes: [{path_prefix: /r, object: r}]\n";
    let c = parse(&format!("{base}objects: [{{name: r, id: {{path: \"/r/{{id}}\"}}, builtin: room}}]\n"), "t").unwrap();
    let ObjectKind::Builtin(BuiltinObject::Room(room)) = c.objects[0].kind else { panic!("{:?}", c.objects[0].kind) };
    assert_eq!(
        room,
        RoomConfig {
            history: 50,
            send_queue: 256,
            max_message: 65536,
            send_timeout: Duration::from_secs(10),
            history_bytes: 1 << 20,
            max_rooms_on_disk: 10_000,
        }
    );
    let c = parse(
        &format!("{base}objects: [{{name: r, id: {{path: \"/r/{{id}}\"}}, builtin: room, room: {{send_timeout: 250ms, history_bytes: 4096, max_rooms_on_disk: 3}}}}]\n"),
        "t",
    )
    .unwrap();
    let ObjectKind::Builtin(BuiltinObject::Room(room)) = c.objects[0].kind else { panic!() };
    assert_eq!((room.send_timeout, room.history_bytes, room.max_rooms_on_disk), (Duration::from_millis(250), 4096, 3));
    let e = errors(&format!(
        "{base}objects: [{{name: r, id: {{path: \"/r/{{id}}\"}}, builtin: room, room: {{send_timeout: 0s, history_bytes: 0, max_rooms_on_disk: 0}}}}]\n"
    ));
    let all = e.join("\n");
    for needle in [
        "objects[0].room.send_timeout: \"0s\": must be greater than zero; the default is 10s",
        "objects[0].room.history_bytes: \"0\": must be between 1 and 1073741824; the default is 1048576",
        "objects[0].room.max_rooms_on_disk: \"0\": must be between 1 and 10000000; the default is 10000",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
    assert_eq!(e.len(), 3, "{all}");
    let e = errors(&format!(
        "{base}objects: [{{name: r, id: {{path: \"/r/{{id}}\"}}, builtin: room, room: {{send_timeout: soon}}}}]\n"
    ));
    assert!(e.iter().any(|e| e.contains("objects[0].room.send_timeout: \"soon\": is not a duration")), "{e:?}");
}

#[test]
fn echo_max_message_has_a_default_and_names_the_key_on_error() {
    let base = "listeners: [{address: \"127.0.0.1:8080\"}]\npools: [{name: p, backends: [\"builtin:echo\"]}]\nroutes: [{path_prefix: /, pool: p}]\n";
    let c = parse(base, "t").unwrap();
    assert_eq!(c.echo, EchoConfig { max_message: 1 << 20 });
    let c = parse(&format!("{base}echo: {{max_message: 4096}}\n"), "t").unwrap();
    assert_eq!(c.echo.max_message, 4096);
    for bad in ["0", "67108865"] {
        let e = errors(&format!("{base}echo: {{max_message: {bad}}}\n"));
        let want = format!(
            "echo.max_message: \"{bad}\": must be a size in bytes between 1 and 67108864 (64 MiB); the default is 1048576 (1 MiB)"
        );
        assert!(e.iter().any(|e| e.contains(&want)), "missing {want:?} in {e:?}");
        assert_eq!(e.len(), 1, "{e:?}");
    }
    let e = errors(&format!("{base}echo: {{max_mesage: 10}}\n"));
    assert!(e[0].contains("unknown field `max_mesage`"), "{e:?}");
}

// Unknown keys and values of the wrong kind: every one at once (keys.rs), with the value errors.

/// Three misspelt keys at different depths and one value of the wrong kind, the rest valid.
const TYPOS: &str = include_str!("../../tests/fixtures/config/typos.yaml");

#[test]
fn three_typos_and_a_type_error_are_reported_at_once() {
    let e = errors(TYPOS);
    assert_eq!(
        e,
        [
            "server.threads (line 3, column 3): \"many\": must be a whole number, 0 or more, e.g. 4",
            "timeout (line 4, column 1): unknown field `timeout` in the file; did you mean `timeouts`?",
            "usage.sinks[0].rotate_byte (line 10, column 39): unknown field `rotate_byte` in a sink; did you mean `rotate_bytes`?",
            // `routes[1]` has no pool now; "set exactly one of `pool` or `object`" would only repeat this.
            "routes[1].pool_name (line 18, column 5): unknown field `pool_name` in a route; did you mean `pool`?",
        ]
    );
}

#[test]
fn key_errors_come_with_the_value_errors_of_the_rest_of_the_file() {
    let e = errors(
        r#"
server: {threads: many, grace_period: soon}
listeners: [{address: "127.0.0.1"}]
pools: [{name: p, backends: ["127.0.0.1:1"], selection: fastest}]
routes:
  - {path_prefix: /a, pool_name: p}
  - {path_prefix: /b, pool: [p]}
  - {path_prefix: /c, pool: nope}
"#,
    );
    assert_eq!(
        e,
        [
            "server.threads (line 2, column 10): \"many\": must be a whole number, 0 or more, e.g. 4",
            "routes[0].pool_name (line 6, column 23): unknown field `pool_name` in a route; did you mean `pool`?",
            "routes[1].pool (line 7, column 23): \"[p]\": must be a single value (text, an address, a duration or a name), not a list or a map",
            "server.grace_period: \"soon\": is not a duration; write a number with a unit, e.g. \"10s\"",
            "listeners[0].address: \"127.0.0.1\": is not host:port; write it as \"127.0.0.1:8080\"",
            "pools[0].selection: \"fastest\": must be round_robin, random, ip_hash or least_connections",
            "routes[2].pool: \"nope\": no pool has this name; use one of: p",
        ]
    );
}

#[test]
fn unknown_keys_get_the_nearest_known_key() {
    let base = "listeners: [{address: \"127.0.0.1:8080\"}]\npools: [{name: p, backends: [\"127.0.0.1:1\"]}]\n";
    for (yaml, want) in [
        ("routes: [{path_prefix: /, pool: p}]\nserver: {Threads: 2}\n", "server.Threads (line 4, column 10): unknown field `Threads` in `server`; did you mean `threads`?"),
        ("routes: [{path_prefix: /, pool: p}]\nserver: {grace-period: 1s}\n", "server.grace-period (line 4, column 10): unknown field `grace-period` in `server`; did you mean `grace_period`?"),
        ("routes: [{path_prefix: /, pool: p}]\nserver: {grace: 1s}\n", "server.grace (line 4, column 10): unknown field `grace` in `server`; did you mean `grace_period`?"),
        ("route: [{path_prefix: /, pool: p}]\n", "route (line 3, column 1): unknown field `route` in the file; did you mean `routes`?"),
        ("routes: [{path: /, pool: p}]\n", "routes[0].path (line 3, column 11): unknown field `path` in a route; did you mean `path_prefix`?"),
        ("routes: [{path_prefix: /, pool: p, pol: q}]\n", "routes[0].pol (line 3, column 36): unknown field `pol` in a route (`pool` is already set); remove it"),
        ("routes: [{path_prefix: /, pool: p}]\nbilling: {units: [{name: a, terms: [{of: requests, every: 2}]}]}\n", "billing.units[0].terms[0].every (line 4, column 52): unknown field `every` in a term; remove it (the keys here are: of, per, chunk)"),
    ] {
        let e = errors(&format!("{base}{yaml}"));
        assert_eq!(e, [want], "for {yaml:?}");
    }
}

#[test]
fn values_of_the_wrong_kind_name_the_kind_wanted() {
    let e = errors(
        r#"
server: {threads: "2", fd_reserve: -1}
listeners: {address: "127.0.0.1:8080"}
demo_page: yes
pools:
  - {name: p, backends: "127.0.0.1:1"}
  - {name: q, backends: [[1], "127.0.0.1:2"], health_check: tcp}
routes:
  - {path_prefix: /p, pool: p}
  -
billing: {units: [{name: a, terms: [{of: requests, per: true}]}]}
"#,
    );
    assert_eq!(
        e,
        [
            "server.threads (line 2, column 10): \"2\": must be a whole number; write it without quotes: 2",
            "server.fd_reserve (line 2, column 24): \"-1\": must be a whole number, 0 or more, e.g. 4",
            "listeners (line 3, column 1): \"{address: 127.0.0.1:8080}\": must be a list of entries like a listener; put `- ` before the entry, or wrap it in [ ]",
            "demo_page (line 4, column 1): \"yes\": must be true or false",
            "pools[0].backends (line 6, column 15): \"127.0.0.1:1\": must be a list; write it as [\"127.0.0.1:1\"]",
            "pools[1].backends[0] (line 7, column 26): \"[1]\": must be a single value (text, an address, a duration or a name), not a list or a map",
            "pools[1].health_check (line 7, column 47): \"tcp\": must be a health check: a map with the keys kind, interval, path (`key: value`, one per line or in { })",
            "routes[1] (line 10, column 4): \"~\": must be a route: a map with the keys name, host, path_prefix, kind, pool, tenant, object, limits, auth, origins, allow_no_origin, admission (`key: value`, one per line or in { })",
            "billing.units[0].terms[0].per (line 11, column 52): \"true\": must be a number (e.g. 20) or a duration (e.g. 60s)",
        ]
    );
}

#[test]
fn missing_required_keys_are_named_once() {
    let e = errors(
        r#"
listeners: [{tls: {cert: c.pem}}]
pools: [{backends: ["127.0.0.1:1"]}]
routes: [{pool: p}, {path_prefx: /x, pool: p}]
objects: [{name: r, builtin: room}]
"#,
    );
    assert_eq!(
        e,
        [
            "listeners[0].tls.key (line 2, column 14): `tls` needs `key`; add it, e.g. `key: /etc/weir/key.pem`",
            "listeners[0].address (line 2, column 13): a listener needs `address`; add it, e.g. `address: \"127.0.0.1:8080\"`",
            "pools[0].name (line 3, column 9): a pool needs `name`; add it, e.g. `name: demo`",
            "routes[0].path_prefix (line 4, column 10): a route needs `path_prefix`; add it, e.g. `path_prefix: /ws`",
            // The misspelt key stands for the missing one: reported once.
            "routes[1].path_prefx (line 4, column 22): unknown field `path_prefx` in a route; did you mean `path_prefix`?",
            "objects[0].id (line 5, column 11): an object namespace needs `id`; add it, e.g. `id: {path: /rooms/{id}}`",
            "listeners[0].tls.cert: \"c.pem\": file not found; give the path of a PEM file readable by weir",
            "routes[0].pool: \"p\": no pool has this name; use one of: <pools[0].name>",
            "routes[1].pool: \"p\": no pool has this name; use one of: <pools[0].name>",
        ]
    );
}

#[test]
fn a_file_that_is_not_a_map_is_one_error() {
    assert_eq!(
        errors("- listeners\n- routes\n"),
        ["(document) (line 1, column 1): \"[listeners, routes]\": the file must be a map of sections, e.g. `listeners:`, `pools:` and `routes:` at the start of their lines"]
    );
}

#[test]
fn empty_sections_are_left_out_and_scalars_keep_their_text() {
    let c = parse(
        "server:\nlog:\nlisteners: [{address: \"127.0.0.1:8080\"}]\npools: [{name: 1.50, backends: [\"127.0.0.1:1\"]}]\nroutes: [{path_prefix: /, pool: 1.50, tenant: 0042}]\n",
        "t",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.threads, 2);
    assert_eq!(c.pools[0].name, "1.50");
    assert_eq!(c.routes[0].tenant.as_deref(), Some("0042"));
}

// The key table of keys.rs against the structs of file.rs, through serde itself: every key the
// table names deserializes with the kind it gives, every struct field is in the table (serde's
// own "expected one of" list), in the same order, and exactly the table's required keys are.

use serde_yaml::{Mapping, Value};

/// A value of `kind` that the file struct must accept.
fn sample(kind: keys::Kind) -> Value {
    match kind {
        keys::Kind::Text => Value::String("x".into()),
        keys::Kind::Count => Value::Number(1.into()),
        keys::Kind::Bool => Value::Bool(true),
        keys::Kind::NumberOrText => Value::Number(1.5.into()),
        keys::Kind::Map(section) => Value::Mapping(
            section.keys.iter().map(|k| (Value::String(k.name.into()), sample(k.kind))).collect::<Mapping>(),
        ),
        keys::Kind::List(item) => Value::Sequence(vec![sample(*item)]),
    }
}

/// Every map in `sample(kind)`: its path (a key, or `None` for the first list item) and section.
fn maps(
    kind: keys::Kind,
    at: Vec<Option<&'static str>>,
    out: &mut Vec<(Vec<Option<&'static str>>, &'static keys::Section)>,
) {
    match kind {
        keys::Kind::Map(section) => {
            for k in section.keys {
                let mut next = at.clone();
                next.push(Some(k.name));
                maps(k.kind, next, out);
            }
            out.push((at, section));
        }
        keys::Kind::List(item) => {
            let mut next = at;
            next.push(None);
            maps(*item, next, out);
        }
        _ => {}
    }
}

fn map_at<'a>(doc: &'a mut Value, path: &[Option<&str>]) -> &'a mut Mapping {
    let mut v = doc;
    for step in path {
        v = match step {
            Some(key) => v.get_mut(*key).unwrap(),
            None => v.get_mut(0).unwrap(),
        };
    }
    v.as_mapping_mut().unwrap()
}

fn deserializes(doc: &Value) -> Result<file::FileConfig, String> {
    serde_yaml::from_value::<file::FileConfig>(doc.clone()).map_err(|e| e.to_string())
}

#[test]
fn the_key_table_matches_the_file_structs() {
    let full = sample(keys::Kind::Map(&keys::FILE));
    deserializes(&full).unwrap_or_else(|e| panic!("a key of the table is not in file.rs, or of another kind: {e}"));
    let mut all = Vec::new();
    maps(keys::Kind::Map(&keys::FILE), Vec::new(), &mut all);
    assert!(all.len() >= 19, "{}", all.len());
    for (path, section) in all {
        let table: Vec<&str> = section.keys.iter().map(|k| k.name).collect();
        // serde's list of the struct's fields.
        let mut doc = full.clone();
        map_at(&mut doc, &path).insert("zz_not_a_key".into(), Value::Null);
        let e = deserializes(&doc).expect_err("an unknown key");
        let expected = e.split_once(", expected").map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        assert_eq!(
            fields, table,
            "{} ({path:?}): the table's keys differ from the struct's fields: {e}",
            section.file_struct
        );
        for key in section.keys {
            let mut doc = full.clone();
            map_at(&mut doc, &path).remove(key.name);
            match (deserializes(&doc).map(|_| ()), key.required) {
                (Ok(_), None) => {}
                (Err(e), Some(_)) if e.contains(&format!("missing field `{}`", key.name)) => {}
                (r, required) => panic!(
                    "{}.{}: the table says required: {}, serde says {r:?}",
                    section.file_struct,
                    key.name,
                    required.is_some()
                ),
            }
            if let keys::Kind::NumberOrText = key.kind {
                let mut doc = full.clone();
                map_at(&mut doc, &path).insert(key.name.into(), "60s".into());
                deserializes(&doc).unwrap_or_else(|e| panic!("{}.{}: text: {e}", section.file_struct, key.name));
            }
        }
    }
}

#[test]
fn the_full_sample_passes_the_key_check() {
    let mut doc = sample(keys::Kind::Map(&keys::FILE));
    let checked = keys::check(&mut doc);
    assert!(checked.errors.is_empty(), "{:?}", checked.errors);
    assert_eq!(doc, sample(keys::Kind::Map(&keys::FILE)));
}

/// A minimal valid file with `extra` appended (top-level sections).
fn minimal(extra: &str) -> String {
    format!(
        "listeners: [{{address: \"127.0.0.1:8080\"}}]\npools: [{{name: p, backends: [\"127.0.0.1:9000\"]}}]\n\
         routes: [{{path_prefix: /, pool: p, tenant: t}}]\n{extra}"
    )
}

#[test]
fn relative_paths_resolve_against_the_config_files_directory() {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    std::fs::write(etc.join("admin.token"), "0123456789abcdef0123\n").unwrap();
    std::fs::write(etc.join("keys"), format!("{} acme\n", "ab".repeat(32))).unwrap();
    let yaml = minimal(
        "usage: {spool_dir: spool, sinks: [{kind: file, path: ../usage.jsonl}]}\ndata_dir: data\n\
         access_log: /var/log/weir-access.jsonl\nadmin: {address: \"127.0.0.1:9090\", token_file: admin.token}\n",
    )
    .replace("tenant: t}", "tenant: t, auth: {keys_file: keys}}");
    let path = etc.join("weir.yaml");
    std::fs::write(&path, yaml).unwrap();
    let c = load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.usage.spool_dir, etc.join("spool"));
    assert_eq!(c.data_dir, etc.join("data"));
    assert!(
        matches!(&c.usage.sinks[0].kind, SinkKind::File { path, .. } if *path == etc.join("../usage.jsonl")),
        "{:?}",
        c.usage.sinks[0].kind
    );
    assert_eq!(c.access_log, Some(AccessLogTarget::File("/var/log/weir-access.jsonl".into())), "absolute stays");
    assert_eq!(c.admin_token.as_deref(), Some("0123456789abcdef0123"));
    assert!(c.usage.spool_dir.is_absolute());

    // Without a file (`parse`) relative paths stay relative to the working directory, as before.
    let c = parse(&minimal("usage: {spool_dir: spool}\n"), "t").unwrap();
    assert_eq!(c.usage.spool_dir, std::path::PathBuf::from("spool"));

    // A relative path that is missing names where it was looked for.
    let e = errors(&minimal("admin: {address: \"127.0.0.1:9090\", token_file: nowhere.token}\n"));
    assert!(e[0].starts_with("admin.token_file: \"nowhere.token\": cannot be read"), "{e:?}");
    let e = parse_in(&minimal("admin: {address: \"127.0.0.1:9090\", token_file: nowhere.token}\n"), "t", &etc)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("(at {}, relative to the config file's directory)", etc.join("nowhere.token").display())),
        "{e}"
    );
}

#[test]
fn secrets_come_from_files_and_the_environment_and_are_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "0123456789abcdef0123\n").unwrap();
    std::fs::write(dir.path().join("selection"), "fastest-secret-value").unwrap();
    let path_var = std::env::var("PATH").expect("PATH is set under cargo");
    let yaml = minimal(
        "admin: {address: \"127.0.0.1:9090\", token: \"${file:token}\"}\n\
         usage: {sinks: [{kind: postgres, url: \"host=db password=${PATH}\"}]}\n",
    )
    .replace("tenant: t", "tenant: \"$${literal}\"");
    let c = parse_in(&yaml, "t", dir.path()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.admin_token.as_deref(), Some("0123456789abcdef0123"));
    assert_eq!(c.routes[0].tenant.as_deref(), Some("${literal}"));
    assert!(
        matches!(&c.usage.sinks[0].kind, SinkKind::Postgres { url, .. } if *url == format!("host=db password={path_var}"))
    );

    // Every problem at once: a missing variable, a missing file, a bad value that came from a
    // file (shown as written), and an ordinary error elsewhere.
    let yaml = minimal(
        "admin: {address: \"127.0.0.1:9090\", token: \"${WEIR_TEST_SURELY_UNSET_VARIABLE}\"}\n\
         data_dir: \"${file:missing}\"\nserver: {threads: 0}\n",
    )
    .replace("backends: [", "selection: \"${file:selection}\", backends: [");
    let e = parse_in(&yaml, "t", dir.path()).unwrap_err();
    let text = e.to_string();
    assert!(!text.contains("fastest-secret-value"), "{text}");
    let lines: Vec<String> = e.errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines.iter().any(|l| l.starts_with(
        "admin.token: \"${WEIR_TEST_SURELY_UNSET_VARIABLE}\": the environment variable WEIR_TEST_SURELY_UNSET_VARIABLE is not set"
    )), "{text}");
    let missing = dir.path().join("missing").display().to_string();
    assert!(
        lines.iter().any(|l| l.starts_with("data_dir: \"${file:missing}\": cannot read") && l.contains(&missing)),
        "{text}"
    );
    assert!(lines.iter().any(|l| l.starts_with("pools[0].selection: \"${file:selection}\": must be")), "{text}");
    assert!(lines.iter().any(|l| l.starts_with("server.threads: \"0\"")), "{text}");
}

#[test]
fn a_quota_over_a_unit_names_a_billing_unit() {
    let units = "billing:\n  units:\n    - {name: credits, terms: [{of: messages_in}]}\n";
    let ok = format!("{units}quotas:\n  - {{tenant: acme, of: \"unit:credits\", limit: 5, per: day}}\n");
    let c = parse(&minimal(&ok), "t").unwrap();
    assert_eq!((c.quotas[0].of, c.quotas[0].name.as_str()), (crate::config::QuotaOf::Unit(0), "credits_per_day"));
    let bad = format!("{units}quotas:\n  - {{tenant: acme, of: \"unit:nope\", limit: 5, per: day}}\n");
    let e = errors(&minimal(&bad));
    assert!(e.iter().any(|e| e.contains("quotas[0].of") && e.contains("known: credits")), "{e:?}");
}

#[test]
fn backend_and_sink_tls_resolve_paths_name_bad_keys_and_warn_without_verification() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.path().join("ca.pem"), cert.cert.pem()).unwrap();
    let pools = "pools: [{name: p, backends: [\"localhost:9000\"], tls: {ca_file: ca.pem}}]";
    let yaml = minimal(
        "usage: {sinks: [{kind: http, url: \"https://localhost/e\", ca_file: ca.pem, auth_header: \"Bearer x\"}]}\n",
    )
    .replace("pools: [{name: p, backends: [\"127.0.0.1:9000\"]}]", pools);
    let path = dir.path().join("weir.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let c = load(&path).unwrap_or_else(|e| panic!("{e}"));
    let tls = c.pools[0].tls.as_ref().expect("pool tls");
    assert_eq!(tls.ca_file.as_deref(), Some(dir.path().join("ca.pem").as_path()));
    assert!(tls.verify && tls.sni.is_none());
    assert_eq!(tls.names.first().map(|(_, n)| n.as_str()), Some("localhost"), "default SNI: the host as written");
    match &c.usage.sinks[0].kind {
        SinkKind::Http { addr, tls: Some(t), auth_header, .. } => {
            assert_eq!(
                (addr.as_str(), t.sni.as_deref(), auth_header.as_deref()),
                ("localhost:443", Some("localhost"), Some("Bearer x"))
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(warnings(&c).is_empty());

    std::fs::write(&path, yaml.replace("tls: {ca_file: ca.pem}", "tls: {verify: false}")).unwrap();
    let w = warnings(&load(&path).unwrap());
    assert!(w.iter().any(|w| w.starts_with("pools[0].tls.verify: false")), "{w:?}");

    let bad = yaml
        .replace("tls: {ca_file: ca.pem}", "tls: {ca_file: missing.pem, client_cert: ca.pem}")
        .replace("https://localhost/e\", ca_file: ca.pem", "http://localhost/e\", ca_file: ca.pem");
    std::fs::write(&path, bad).unwrap();
    let e = load(&path).unwrap_err().to_string();
    assert!(e.contains("pools[0].tls.ca_file") && e.contains("missing.pem"), "{e}");
    assert!(e.contains("pools[0].tls.client_cert") && e.contains("client_key"), "{e}");
    assert!(e.contains("usage.sinks[0].ca_file") && e.contains("https:// URLs only"), "{e}");
}

#[test]
fn client_certificates_need_a_listener_that_asks_for_them_and_bad_values_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    for f in ["ca.pem", "cert.pem"] {
        std::fs::write(dir.path().join(f), cert.cert.pem()).unwrap();
    }
    std::fs::write(dir.path().join("key.pem"), cert.key_pair.serialize_pem()).unwrap();
    let route = "routes: [{path_prefix: /, pool: p, auth: {client_cert: {tenant_from: o, allow: [\"t-*\"]}}}]";
    let mtls = "{address: \"127.0.0.1:8443\", tls: {cert: cert.pem, key: key.pem, client_auth: {ca_file: ca.pem, mode: optional}}}";
    let yaml = |listeners: &str| {
        format!("listeners: [{listeners}]\npools: [{{name: p, backends: [\"127.0.0.1:9000\"]}}]\n{route}\n")
    };
    let path = dir.path().join("weir.yaml");
    std::fs::write(&path, yaml(&format!("{mtls}, {{address: \"127.0.0.1:8080\"}}"))).unwrap();
    let c = load(&path).unwrap_or_else(|e| panic!("{e}"));
    let ca = c.listeners[0].tls.as_ref().and_then(|t| t.client_auth.as_ref()).expect("client_auth");
    assert_eq!(
        (ca.ca_file.as_path(), ca.mode),
        (dir.path().join("ca.pem").as_path(), crate::client_cert::Mode::Optional)
    );
    match &c.routes[0].auth.as_ref().expect("auth").methods[0] {
        AuthMethod::ClientCert(a) => {
            assert_eq!((a.tenant_from, a.allow.as_slice()), (TenantFrom::O, &["t-*".to_string()][..]))
        }
        other => panic!("{other:?}"),
    }
    let w = warnings(&c);
    assert!(w.iter().any(|w| w.starts_with("listeners[1]: 127.0.0.1:8080 asks for no client certificate")), "{w:?}");

    std::fs::write(&path, yaml("{address: \"127.0.0.1:8080\"}")).unwrap();
    let e = load(&path).unwrap_err().to_string();
    assert!(e.contains("routes[0].auth.client_cert") && e.contains("no listener asks for client certificates"), "{e}");

    let bad = yaml(&mtls.replace("mode: optional", "mode: sometimes").replace("ca_file: ca.pem", "ca_file: key.pem"))
        .replace("tenant_from: o", "tenant_from: email");
    std::fs::write(&path, bad).unwrap();
    let e = load(&path).unwrap_err().to_string();
    assert!(e.contains("listeners[0].tls.client_auth.mode") && e.contains("sometimes"), "{e}");
    assert!(e.contains("listeners[0].tls.client_auth.ca_file") && e.contains("no PEM certificate"), "{e}");
    assert!(e.contains("routes[0].auth.client_cert.tenant_from") && e.contains("email"), "{e}");
}
