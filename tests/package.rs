//! Installing and running weir like a service (issue 16): the Debian package built by
//! `scripts/package.sh` from this test build's binary (its files, its conffile, its extracted
//! binary checking its own config, its systemd unit), the package installed by dpkg itself into
//! a throwaway root and its binary run as the unit runs it, `WEIR_CONFIG`, and a running weir
//! whose admin token comes from the environment and whose relative paths are relative to its
//! config file, not to its working directory.

use crate::support::{connect, free_port, http_get, raw_request, Weir};
use futures_util::SinkExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tokio_tungstenite::tungstenite::Message;

/// What the package must install (besides directories).
const FILES: [&str; 11] = [
    "./usr/bin/weir",
    "./etc/weir/config.yaml",
    "./lib/systemd/system/weir.service",
    "./usr/share/man/man1/weir.1.gz",
    "./usr/share/bash-completion/completions/weir",
    "./usr/share/fish/vendor_completions.d/weir.fish",
    "./usr/share/doc/weir/README.md",
    "./usr/share/doc/weir/LICENSE",
    "./usr/share/doc/weir/CHANGELOG.md",
    "./usr/share/doc/weir/copyright",
    "./usr/share/doc/weir/",
];

fn has(tool: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success())
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Build the package from this test build's binary into `out`; the .deb's path.
fn build_package(out: &Path) -> PathBuf {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/package.sh");
    let built = run(Command::new(script)
        .arg(env!("CARGO_BIN_EXE_weir"))
        .arg(out)
        // gzip: xz takes half a minute over a debug binary; the contents are the same.
        .env("WEIR_DEB_COMPRESSION", "gzip"));
    let deb = String::from_utf8_lossy(&built.stdout).lines().last().unwrap_or_default().to_string();
    assert!(deb.ends_with(".deb") && Path::new(&deb).is_file(), "package.sh printed {deb:?}");
    PathBuf::from(deb)
}

#[test]
fn the_package_installs_a_binary_that_checks_its_own_config_and_a_valid_unit() {
    if !has("dpkg-deb") {
        eprintln!("skipped: dpkg-deb is not installed (Debian/Ubuntu: apt-get install dpkg)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let deb = build_package(tmp.path());

    let listing = String::from_utf8_lossy(&run(Command::new("dpkg-deb").arg("-c").arg(&deb)).stdout).to_string();
    for f in FILES {
        assert!(listing.lines().any(|l| l.ends_with(&format!(" {f}"))), "{f} missing from the package:\n{listing}");
    }
    let conffiles = run(Command::new("dpkg-deb").arg("-I").arg(&deb).arg("conffiles")).stdout;
    assert_eq!(String::from_utf8_lossy(&conffiles).trim(), "/etc/weir/config.yaml");
    let control = String::from_utf8_lossy(&run(Command::new("dpkg-deb").arg("-f").arg(&deb)).stdout).to_string();
    assert!(
        control.contains("Package: weir\n") && control.contains(&format!("Version: {}\n", env!("CARGO_PKG_VERSION")))
    );

    let root = tmp.path().join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let weir = root.join("usr/bin/weir");

    // The packaged config, with the postinst's token file and /var/lib/weir moved into the
    // throwaway root: `weir check` passes and creates nothing.
    let config = root.join("etc/weir/config.yaml");
    let shipped = std::fs::read_to_string(&config).unwrap();
    assert!(shipped.contains("token_file: /etc/weir/admin.token") && shipped.contains("/var/lib/weir/spool"));
    assert!(shipped.contains("demo_page: false") && shipped.contains("127.0.0.1:9000"));
    let rooted = shipped
        .replace("/etc/weir/", &format!("{}/", root.join("etc/weir").display()))
        .replace("/var/lib/weir/", &format!("{}/", root.join("var/lib/weir").display()));
    std::fs::write(&config, rooted).unwrap();
    std::fs::write(root.join("etc/weir/admin.token"), "0123456789abcdefghij\n").unwrap();
    let out = run(Command::new(&weir).arg("check").arg("--config").arg(&config));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (1 listener(s), 1 pool(s)"), "{out:?}");
    assert!(!root.join("var/lib/weir").exists(), "weir check created the state directory");

    // WEIR_CONFIG stands in for --config; the flag wins over it.
    let out = run(Command::new(&weir).arg("check").env("WEIR_CONFIG", &config));
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok ("), "{out:?}");
    run(Command::new(&weir).args(["check", "--config"]).arg(&config).env("WEIR_CONFIG", "/nonexistent/weir.yaml"));
    let out = Command::new(&weir).arg("check").env("WEIR_CONFIG", "/nonexistent/weir.yaml").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/weir.yaml"), "{out:?}");

    // The man page and completions came from the binary.
    let gz = std::fs::read(root.join("usr/share/man/man1/weir.1.gz")).unwrap();
    let mut page = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut page).unwrap();
    assert!(page.starts_with(".TH WEIR 1") && page.contains("WEIR_CONFIG") && page.contains("\\fBweir check\\fR"));
    if has("bash") {
        run(Command::new("bash").arg("-n").arg(root.join("usr/share/bash-completion/completions/weir")));
    }

    // The unit, as systemd reads it (the binary at its extracted path: verify checks it exists).
    if !has("systemd-analyze") {
        eprintln!("skipped: systemd-analyze verify (systemd-analyze is not installed)");
        return;
    }
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/weir.service")).unwrap();
    for line in [
        "ExecStart=/usr/bin/weir run --config /etc/weir/config.yaml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "StateDirectory=weir",
        "LimitNOFILE=1048576",
        "ProtectSystem=strict",
    ] {
        assert!(unit.lines().any(|l| l == line), "weir.service lacks {line}:\n{unit}");
    }
    let verify = tmp.path().join("weir.service");
    std::fs::write(&verify, unit.replace("/usr/bin/weir", &weir.display().to_string())).unwrap();
    let out = run(Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&verify));
    assert!(out.stderr.is_empty(), "systemd-analyze verify:\n{}", String::from_utf8_lossy(&out.stderr));
}

/// `weir run` from another working directory, through `WEIR_CONFIG`, with the admin token from
/// the environment and every path relative: the token guards the API, the spool and the usage
/// file land beside the config file, the log names them as absolute paths and has no colours.
#[tokio::test]
async fn a_service_config_takes_its_token_from_the_environment_and_paths_from_its_directory() {
    const TOKEN: &str = "env-admin-token-0123456789";
    let mut last_log = String::new();
    for _attempt in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let (etc, elsewhere) = (dir.path().join("etc"), dir.path().join("elsewhere"));
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::create_dir_all(&elsewhere).unwrap();
        let (port, admin_port) = (free_port(), free_port());
        let yaml = format!(
            "listeners: [{{address: \"127.0.0.1:{port}\"}}]\n\
             admin: {{address: \"127.0.0.1:{admin_port}\", token: \"${{WEIR_TEST_ADMIN_TOKEN}}\"}}\n\
             usage: {{file: usage.jsonl, spool_dir: spool, fsync_interval: 20ms}}\ndata_dir: data\n\
             server: {{threads: 2, grace_period: 1s}}\n\
             pools: [{{name: p, backends: [\"builtin:echo\"], health_check: {{kind: none}}}}]\n\
             routes: [{{name: p, path_prefix: /echo, pool: p}}]\n"
        );
        let config = etc.join("weir.yaml");
        std::fs::write(&config, yaml).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_weir"));
        command.arg("run").current_dir(&elsewhere).env("WEIR_CONFIG", &config).env("WEIR_TEST_ADMIN_TOKEN", TOKEN);
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        let admin = format!("127.0.0.1:{admin_port}").parse().unwrap();
        let weir = match Weir::spawn(command, dir, config, addr, admin, etc.join("usage.jsonl")).await {
            Ok(weir) => weir,
            Err(log) => {
                last_log = log;
                continue;
            }
        };
        let get = |token: Option<&str>| {
            let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
            format!("GET /api/connections HTTP/1.1\r\nHost: admin\r\n{auth}Connection: close\r\n\r\n")
        };
        assert_eq!(raw_request(weir.admin, &get(None)).await.unwrap().0, 401, "the API needs the token");
        assert_eq!(raw_request(weir.admin, &get(Some("${WEIR_TEST_ADMIN_TOKEN}"))).await.unwrap().0, 401);
        assert_eq!(raw_request(weir.admin, &get(Some(TOKEN))).await.unwrap().0, 200, "{}", weir.log());

        let mut ws = connect(&weir, "/echo").await;
        ws.send(Message::text("hi")).await.unwrap();
        crate::support::recv(&mut ws).await;
        ws.close(None).await.unwrap();
        let records = weir.records_eventually(1).await;
        assert_eq!(records[0].identity.route.as_deref(), Some("p"));
        assert!(etc.join("spool").is_dir(), "the spool is beside the config");
        assert!(!elsewhere.join("spool").exists() && !elsewhere.join("usage.jsonl").exists());

        let log = weir.log();
        let spool = etc.join("spool").display().to_string();
        assert!(log.contains(&format!("spool_dir={spool}")), "the log names the absolute spool:\n{log}");
        assert!(log.contains(&format!("usage_files={}", etc.join("usage.jsonl").display())), "{log}");
        assert!(!log.contains('\u{1b}'), "colour codes in a log that is not a terminal:\n{log}");
        assert!(!log.contains(TOKEN), "the token is logged:\n{log}");
        return;
    }
    panic!("weir did not become ready; last log:\n{last_log}");
}

/// dpkg on a throwaway root: `root` is the instdir, its `var/lib/dpkg` the database (created
/// empty here), the log beside it. `--force-script-chrootless` runs the maintainer scripts on this
/// system with `DPKG_ROOT` set (they touch only files under it: no user, no systemctl; see
/// packaging/debian/postinst); `--force-depends`: the empty database knows no libc6 or adduser;
/// `--force-not-root`: the tests may run unprivileged.
fn dpkg(root: &Path) -> Command {
    let admindir = root.join("var/lib/dpkg");
    std::fs::create_dir_all(admindir.join("info")).unwrap();
    std::fs::create_dir_all(admindir.join("updates")).unwrap();
    if !admindir.join("status").exists() {
        std::fs::write(admindir.join("status"), "").unwrap();
    }
    let mut c = Command::new("dpkg");
    c.arg(format!("--root={}", root.display()))
        .arg(format!("--admindir={}", admindir.display()))
        .arg(format!("--log={}", root.join("dpkg.log").display()))
        .args(["--force-not-root", "--force-script-chrootless", "--force-depends"])
        .env_remove("DPKG_ROOT");
    c
}

/// The package as a user installs it, but into a throwaway root with dpkg itself: dpkg records
/// it as installed, the postinst makes the admin token (only under the root), the installed
/// binary checks the installed config, then runs the way `weir.service`'s `ExecStart` does
/// (`/usr/bin/weir run --config /etc/weir/config.yaml`, working directory `/var/lib/weir`) with a
/// user's config on ephemeral ports and answers `/readyz` 200, and a purge removes it all.
///
/// Not done: `systemctl start` of the unit. It needs PID 1 to be systemd and root, and would
/// install a unit and a `weir` user on the live system; this test leaves nothing behind, so it
/// checks the unit with `systemd-analyze verify` (the test above) and runs `ExecStart` itself.
#[tokio::test]
async fn dpkg_installs_the_package_into_a_throwaway_root_and_the_installed_weir_becomes_ready() {
    if !has("dpkg") || !has("dpkg-deb") {
        eprintln!("skipped: dpkg is not installed (Debian/Ubuntu: apt-get install dpkg)");
        return;
    }
    let user_before = run(Command::new("sh").args(["-c", "getent passwd weir || true"])).stdout;
    let token_before = Path::new("/etc/weir/admin.token").exists();
    let tmp = tempfile::tempdir().unwrap();
    let deb = build_package(tmp.path());
    let root = tmp.path().join("root");
    run(dpkg(&root).arg("--install").arg(&deb));

    let status = |root: &Path| {
        let out = Command::new("dpkg-query")
            .arg(format!("--admindir={}", root.join("var/lib/dpkg").display()))
            .args(["-W", "-f=${Status}", "weir"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(status(&root), "install ok installed");
    let listed = String::from_utf8_lossy(
        &run(Command::new("dpkg-query")
            .arg(format!("--admindir={}", root.join("var/lib/dpkg").display()))
            .args(["-L", "weir"]))
        .stdout,
    )
    .to_string();
    for f in FILES.iter().map(|f| f.trim_start_matches('.').trim_end_matches('/')) {
        assert!(listed.lines().any(|l| l == f), "dpkg does not list {f}:\n{listed}");
        assert!(root.join(f.trim_start_matches('/')).exists(), "{f} is not installed");
    }
    // The postinst made the admin token under the root only, and no user.
    let token = root.join("etc/weir/admin.token");
    let text = std::fs::read_to_string(&token).expect("the postinst's admin token");
    assert!(text.len() == 41 && text.trim_end().chars().all(|c| c.is_ascii_alphanumeric()), "{text:?}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&token).unwrap().permissions().mode() & 0o777, 0o640);
    assert_eq!(Path::new("/etc/weir/admin.token").exists(), token_before, "the real /etc was touched");
    let user_after = run(Command::new("sh").args(["-c", "getent passwd weir || true"])).stdout;
    assert_eq!(user_after, user_before, "the postinst changed the system's users");

    // The installed binary checks the installed config (its absolute paths moved into the root).
    let weir_bin = root.join("usr/bin/weir");
    let config = root.join("etc/weir/config.yaml");
    let shipped = std::fs::read_to_string(&config).unwrap();
    let packaged = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/config.yaml")).unwrap();
    assert_eq!(shipped, packaged, "dpkg installed another config.yaml");
    let state = root.join("var/lib/weir");
    let rooted = shipped
        .replace("/etc/weir/", &format!("{}/", root.join("etc/weir").display()))
        .replace("/var/lib/weir/", &format!("{}/", state.display()));
    std::fs::write(&config, rooted).unwrap();
    let out = run(Command::new(&weir_bin).arg("check").arg("--config").arg(&config));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (1 listener(s), 1 pool(s)"), "{out:?}");

    // A user's own config, started as the unit's ExecStart does (systemd would make the state
    // directory: StateDirectory=weir) and from WorkingDirectory=/var/lib/weir.
    std::fs::create_dir_all(&state).unwrap();
    let mut last_log = String::new();
    let mut started = None;
    for _attempt in 0..3 {
        let (port, admin_port) = (free_port(), free_port());
        let yaml = format!(
            "listeners: [{{address: \"127.0.0.1:{port}\"}}]\n\
             admin: {{address: \"127.0.0.1:{admin_port}\", token_file: \"{token}\"}}\n\
             usage: {{file: \"{state}/usage.jsonl\", spool_dir: \"{state}/spool\", fsync_interval: 20ms}}\n\
             data_dir: \"{state}/data\"\nserver: {{threads: 2, grace_period: 1s}}\n\
             pools: [{{name: app, backends: [\"builtin:echo\"], health_check: {{kind: none}}}}]\n\
             routes: [{{name: app, path_prefix: /, pool: app}}]\n",
            token = token.display(),
            state = state.display()
        );
        std::fs::write(&config, yaml).unwrap();
        let mut command = Command::new(&weir_bin);
        command.arg("run").arg("--config").arg(&config).current_dir(&state);
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        let admin = format!("127.0.0.1:{admin_port}").parse().unwrap();
        let logs = tempfile::tempdir().unwrap();
        match Weir::spawn(command, logs, config.clone(), addr, admin, state.join("usage.jsonl")).await {
            Ok(w) => {
                started = Some(w);
                break;
            }
            Err(log) => last_log = log,
        }
    }
    let mut weir = started.unwrap_or_else(|| panic!("the installed weir did not become ready; last log:\n{last_log}"));
    let (status_code, _, body) = http_get(weir.admin, "/readyz").await.unwrap();
    assert_eq!(status_code, 200, "{body}");
    let mut ws = connect(&weir, "/echo").await;
    ws.send(Message::text("installed")).await.unwrap();
    assert_eq!(crate::support::recv(&mut ws).await, Message::text("installed"));
    ws.close(None).await.unwrap();
    weir.records_eventually(1).await;
    assert!(state.join("spool").is_dir(), "the spool is in the state directory");
    let exit = weir.terminate().expect("weir exits after SIGTERM");
    assert!(exit.success(), "{exit:?}\n{}", weir.log());

    // Purge: the files and the postinst's token go; the state directory stays (documented).
    run(dpkg(&root).arg("--purge").arg("weir"));
    assert_ne!(status(&root), "install ok installed");
    assert!(!weir_bin.exists() && !token.exists() && !config.exists(), "purge left files behind");
    assert!(state.join("spool").is_dir(), "purge removed /var/lib/weir");
}
