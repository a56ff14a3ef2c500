//! The `weir` command line: `--version`, `check` (all errors at once, exit 1), and `run`
//! refusing a bad config before binding anything.

use std::process::Command;

fn weir(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_weir")).args(args).output().expect("run weir")
}

#[test]
fn version_prints_the_crate_version() {
    let out = weir(&["--version"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("weir {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn check_accepts_the_shipped_config() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config.yaml");
    let out = weir(&["check", "--config", shipped]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (1 listener(s), 1 pool(s), 1 object namespace(s), 2 route(s))"));
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
    assert!(err.contains("listeners[0].address: \"127.0.0.1\": is not host:port; write it as \"127.0.0.1:8080\""), "{err}");
    assert!(err.contains("pools[0].selection: \"fastest\": must be round_robin, random or ip_hash"), "{err}");
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
