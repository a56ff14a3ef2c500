//! The `weir` command line: `--version`, `check` (all errors at once, exit 1), `run`
//! refusing a bad config before binding anything, `run` on a busy port (exits at once, one line),
//! and `usage` on a file sink.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn weir(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_weir")).args(args).output().expect("run weir")
}

#[test]
fn version_prints_the_crate_version_and_commit() {
    let out = weir(&["--version"]);
    assert!(out.status.success());
    let commit = weir::metrics::build_commit();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("weir {} (commit {commit})", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn check_accepts_the_shipped_config() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config.yaml");
    let out = weir(&["check", "--config", shipped]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("ok (1 listener(s), 1 pool(s), 1 object namespace(s), 2 route(s))"));
}

const BAD: &str = r#"
listeners: [{address: "127.0.0.1"}]
pools: [{name: p, backends: ["127.0.0.1:1"], selection: fastest}]
routes: [{path_prefix: /ws, pool: q}]
"#;

#[test]
fn check_prints_every_error_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, BAD).unwrap();
    let out = weir(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("3 configuration errors"), "{err}");
    assert!(
        err.contains("listeners[0].address: \"127.0.0.1\": is not host:port; write it as \"127.0.0.1:8080\""),
        "{err}"
    );
    assert!(
        err.contains("pools[0].selection: \"fastest\": must be round_robin, random, ip_hash or least_connections"),
        "{err}"
    );
    assert!(err.contains("routes[0].pool: \"q\": no pool has this name; use one of: p"), "{err}");
}

#[test]
fn run_refuses_a_bad_config_and_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, BAD).unwrap();
    let out = weir(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("3 configuration errors"));
    let out = weir(&["run", "--config", dir.path().join("missing.yaml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the file"));
}

/// Three misspelt keys (top level, in a route, in a sink) and one value of the wrong kind: serde
/// alone stopped at the first of them.
const TYPOS: &str = include_str!("fixtures/config/typos.yaml");

#[test]
fn check_reports_every_unknown_key_and_type_error_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typos.yaml");
    std::fs::write(&path, TYPOS).unwrap();
    for command in ["check", "run"] {
        let out = weir(&[command, "--config", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "weir {command}");
        let err = String::from_utf8_lossy(&out.stderr);
        let want = [
            "typos.yaml: 4 configuration errors",
            "  server.threads (line 3, column 3): \"many\": must be a whole number, 0 or more, e.g. 4",
            "  timeout (line 4, column 1): unknown field `timeout` in the file; did you mean `timeouts`?",
            "  usage.sinks[0].rotate_byte (line 10, column 39): unknown field `rotate_byte` in a sink; did you mean `rotate_bytes`?",
            "  routes[1].pool_name (line 18, column 5): unknown field `pool_name` in a route; did you mean `pool`?",
        ];
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), want.len(), "weir {command}:\n{err}");
        assert!(lines[0].ends_with(want[0]), "weir {command}:\n{err}");
        assert_eq!(&lines[1..], &want[1..], "weir {command}:\n{err}");
    }
}

/// `weir run` with a config whose listener (or admin) address is `busy`: it must exit non-zero
/// within 10 s with one line naming the address, the key and the cause, and no panic.
fn run_on_a_busy_port(busy: u16, listener: u16, admin: u16, key: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("busy.yaml");
    let yaml = format!(
        "listeners: [{{address: \"127.0.0.1:{listener}\"}}]\nadmin: {{address: \"127.0.0.1:{admin}\"}}\n\
         usage: {{file: \"{usage}\", spool_dir: \"{spool}\"}}\n\
         pools: [{{name: p, backends: [\"builtin:echo\"]}}]\nroutes: [{{path_prefix: /, pool: p}}]\n",
        usage = dir.path().join("usage.jsonl").display(),
        spool = dir.path().join("spool").display(),
    );
    std::fs::write(&path, yaml).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "--config", path.to_str().unwrap()])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run weir");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for weir") {
            break Some(status);
        }
        if start.elapsed() > Duration::from_secs(10) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50)); // poll interval; the loop re-checks
    };
    if status.is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("weir's stderr");
    let err = String::from_utf8_lossy(&out.stderr);
    let status = status.unwrap_or_else(|| panic!("weir still running after 10 s with {key} busy:\n{err}"));
    assert!(!status.success(), "{status}:\n{err}");
    let want = format!(
        "weir: cannot listen on 127.0.0.1:{busy} ({key}): Address already in use; stop the other process or \
         choose another port"
    );
    assert_eq!(err.trim_end(), want, "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn run_exits_at_once_when_a_listener_port_is_busy() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().port();
    run_on_a_busy_port(busy, busy, crate::support::free_port(), "listeners[0].address");
}

#[test]
fn run_exits_at_once_when_the_admin_port_is_busy() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().port();
    run_on_a_busy_port(busy, crate::support::free_port(), busy, "admin.address");
}

#[test]
fn usage_reads_a_file_sink_and_names_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.jsonl");
    let record = |kind: &str, seq: u64, at: &str, ms: u64| {
        format!(
            r#"{{"record":"{kind}","idempotency_key":"c1:{seq}","seq":{seq},"at":"{at}","connection_id":"c1","tenant":"acme","status":101,"duration_ms":{ms},"active_ms":{ms},"idle_ms":0,"client_to_backend":{{"messages":{seq},"payload_bytes":{b}}},"backend_to_client":{{"messages":{seq},"payload_bytes":{b}}}}}"#,
            b = seq * 3
        )
    };
    let lines =
        [record("start", 0, "2026-11-22T23:59:59.000Z", 0), record("stop", 1, "2026-11-23T00:00:01.500Z", 2500)];
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let file = path.to_str().unwrap();
    let out = weir(&["usage", "--file", file, "--by", "day", "--format", "csv"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "day,connections,rejected,connection_seconds,active_seconds,idle_seconds,messages_in,messages_out,bytes_in,bytes_out\n\
         2026-11-22,1,0,0.000,0.000,0.000,0,0,0,0\n\
         2026-11-23,1,0,2.500,2.500,0.000,1,1,3,3\n"
    );
    let out = weir(&["usage", "--file", dir.path().join("missing.jsonl").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.jsonl: no such file"));
    let out = weir(&["usage", "--file", file, "--table", "t"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("use it with --postgres, not --file"));
    let out = weir(&["usage", "--file", file, "--from", "2026-11-23", "--to", "2026-11-22"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--from must be earlier than --to"));
    assert_eq!(weir(&["usage"]).status.code(), Some(2), "a source is required");
}
