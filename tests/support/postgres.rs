//! A private PostgreSQL server for the tests: Debian's server binaries
//! (`/usr/lib/postgresql/<version>/bin`, installed by `scripts/test.sh`), a fresh cluster in a
//! temporary directory, trust authentication, listening on 127.0.0.1 on a free port with its
//! unix socket in the same directory, and a database `weir`. PostgreSQL refuses to run as root,
//! so when the tests run as root every server command runs as the `postgres` OS user
//! (`runuser -u postgres --`) and the directory is chowned to it. Stopped on drop.

use super::{free_port, DEADLINE};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio_postgres::{Client, NoTls};

/// A running (or stopped) private PostgreSQL cluster.
pub struct Postgres {
    bin: PathBuf,
    /// Temporary directory: `data/` (the cluster), the unix socket, `server.log`, `ctl.log`.
    dir: tempfile::TempDir,
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// Run the server commands as the `postgres` user (the tests run as root).
    as_postgres: bool,
    running: bool,
    /// TLS only over TCP (`hostssl`): the harness's own sessions use the unix socket.
    tls: bool,
}

/// The newest `/usr/lib/postgresql/<version>/bin` holding `initdb`.
fn server_bin() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let version = e.file_name().to_str()?.parse::<u32>().ok()?;
                    let bin = e.path().join("bin");
                    bin.join("initdb").exists().then_some((version, bin))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!("no PostgreSQL server in /usr/lib/postgresql/*/bin/initdb: run ./scripts/test.sh (it installs Debian's postgresql) or apt-get install postgresql")
    })
}

fn running_as_root() -> bool {
    let out = Command::new("id").arg("-u").output().expect("run id -u");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

impl Postgres {
    /// Create a cluster, start it and create the database `weir`.
    pub async fn start_new() -> Postgres {
        Postgres::create(None).await
    }

    /// Like `start_new`, serving TLS with `cert` (`ssl = on`) and accepting TCP sessions over
    /// TLS only (`hostssl` in pg_hba.conf).
    pub async fn start_new_tls(cert: &super::tls::TestCert) -> Postgres {
        Postgres::create(Some(cert)).await
    }

    async fn create(tls: Option<&super::tls::TestCert>) -> Postgres {
        let bin = server_bin();
        let dir = tempfile::tempdir().expect("tempdir");
        let as_postgres = running_as_root();
        let mut owner = None;
        if as_postgres {
            let uid = Command::new("id").args(["-u", "postgres"]).output().expect("id -u postgres");
            let gid = Command::new("id").args(["-g", "postgres"]).output().expect("id -g postgres");
            let num = |o: std::process::Output| String::from_utf8_lossy(&o.stdout).trim().parse::<u32>().ok();
            let (Some(uid), Some(gid)) = (num(uid), num(gid)) else {
                panic!("running as root, but there is no `postgres` user to run PostgreSQL as: install Debian's postgresql package");
            };
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("chown the cluster directory to postgres");
            owner = Some((uid, gid));
        }
        let mut pg = Postgres { bin, dir, port: free_port(), as_postgres, running: false, tls: tls.is_some() };
        let data = pg.data();
        pg.run("initdb", &["-D", &data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"]);
        let mut conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 50\n",
            pg.port,
            pg.dir.path().display()
        );
        if let Some(cert) = tls {
            // The key must belong to the server's user and be private to it.
            let (crt, key) = (pg.dir.path().join("server.crt"), pg.dir.path().join("server.key"));
            std::fs::copy(&cert.cert, &crt).expect("copy the server certificate");
            std::fs::copy(&cert.key, &key).expect("copy the server key");
            std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod key");
            for f in [&crt, &key] {
                std::os::unix::fs::chown(f, owner.map(|o| o.0), owner.map(|o| o.1)).expect("chown the TLS files");
            }
            conf.push_str(&format!(
                "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
                crt.display(),
                key.display()
            ));
            let hba_path = Path::new(&data).join("pg_hba.conf");
            let hba = std::fs::read_to_string(&hba_path).expect("read pg_hba.conf");
            let hba: String = hba
                .lines()
                .map(|l| l.strip_prefix("host ").map_or_else(|| l.to_string(), |rest| format!("hostssl {rest}")))
                .collect::<Vec<_>>()
                .join("\n");
            std::fs::write(&hba_path, hba + "\n").expect("write pg_hba.conf");
        }
        let conf_path = Path::new(&data).join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).expect("read postgresql.conf");
        text.push_str(&conf);
        std::fs::write(&conf_path, text).expect("write postgresql.conf");
        pg.start().await;
        let admin = pg.connect("postgres").await;
        admin.batch_execute("CREATE DATABASE weir").await.expect("create database weir");
        pg
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// Run the server program `program` with `args` (as `postgres` when root); panic with its
    /// output if it fails.
    fn run(&self, program: &str, args: &[&str]) {
        let mut cmd = self.command(program);
        // Output goes to a file: a pipe would be inherited by the server pg_ctl starts.
        let log = self.dir.path().join("ctl.log");
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("ctl.log");
        let status = cmd
            .args(args)
            .stdout(out.try_clone().expect("clone ctl.log"))
            .stderr(out)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        if !status.success() {
            let ctl = std::fs::read_to_string(&log).unwrap_or_default();
            let server = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
            panic!("{program} {args:?} failed ({status}):\n{ctl}\nserver.log:\n{server}");
        }
    }

    /// `program` from the server's bin directory, under `runuser -u postgres --` when root.
    fn command(&self, program: &str) -> Command {
        let exe = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        cmd.current_dir(self.dir.path()).stdin(Stdio::null());
        cmd
    }

    /// Start the server (again) on the same port and data directory; returns once it accepts
    /// connections (bounded by `DEADLINE`).
    pub async fn start(&mut self) {
        let log = self.dir.path().join("server.log").display().to_string();
        let timeout = DEADLINE.as_secs().to_string();
        self.run("pg_ctl", &["-D", &self.data(), "-l", &log, "-w", "-t", &timeout, "start"]);
        self.running = true;
        let _ = self.connect("postgres").await;
    }

    /// Stop the server (`pg_ctl stop -m fast`: sessions are ended, nothing is lost).
    pub fn stop(&mut self) {
        let timeout = DEADLINE.as_secs().to_string();
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "-t", &timeout, "stop"]);
        self.running = false;
    }

    /// libpq keyword/value connection string for the database `weir`.
    pub fn url(&self) -> String {
        self.url_for("weir")
    }

    fn url_for(&self, db: &str) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname={db} connect_timeout=5", self.port)
    }

    /// The harness's own sessions: over TCP, or the unix socket on a TLS-only server.
    fn session_url(&self, db: &str) -> String {
        if self.tls {
            format!("host={} port={} user=postgres dbname={db} connect_timeout=5", self.dir.path().display(), self.port)
        } else {
            self.url_for(db)
        }
    }

    /// A client of database `db`, retrying until the server accepts it (bounded by `DEADLINE`).
    async fn connect(&self, db: &str) -> Client {
        let start = Instant::now();
        loop {
            match tokio_postgres::connect(&self.session_url(db), NoTls).await {
                Ok((client, connection)) => {
                    tokio::spawn(connection);
                    return client;
                }
                Err(e) => {
                    assert!(
                        start.elapsed() < DEADLINE,
                        "PostgreSQL on port {} does not accept connections: {e}",
                        self.port
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await; // poll interval
                }
            }
        }
    }

    /// Run `sql` on database `weir`; every value as text (`NULL` as "NULL"). Panics on an error.
    pub async fn query(&self, sql: &str) -> Vec<Vec<String>> {
        self.try_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Run `sql` on database `weir`; every value as text, or the server's error message.
    pub async fn try_query(&self, sql: &str) -> Result<Vec<Vec<String>>, String> {
        let client = self.connect("weir").await;
        let messages = client
            .simple_query(sql)
            .await
            .map_err(|e| e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_string()))?;
        Ok(messages
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => {
                    Some((0..row.len()).map(|i| row.get(i).unwrap_or("NULL").to_string()).collect())
                }
                _ => None,
            })
            .collect())
    }

    /// The single value `sql` returns, parsed as an integer.
    pub async fn count(&self, sql: &str) -> i64 {
        let rows = self.query(sql).await;
        rows.first()
            .and_then(|r| r.first())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{sql} returned {rows:?}"))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            let data = self.data();
            let args = ["-D", data.as_str(), "-m", "immediate", "-w", "-t", "20", "stop"];
            let _ = self.command("pg_ctl").args(args).stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
    }
}
