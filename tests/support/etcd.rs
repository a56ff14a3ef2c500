//! A private etcd for the tests: Debian's `etcd` binary (package `etcd-server`, installed by
//! `scripts/test.sh`), one member on 127.0.0.1 with free client and peer ports, its data in a
//! temporary directory, no fsync and short heartbeat and election timeouts (it elects itself
//! within a few hundred milliseconds). Killed on drop.

use super::{eventually, free_port};
use std::process::{Child, Command, Stdio};

/// A running (or stopped) private etcd.
pub struct Etcd {
    child: Option<Child>,
    /// Temporary directory: `data/` and `etcd.log`.
    dir: tempfile::TempDir,
    /// Client port on 127.0.0.1.
    pub port: u16,
    /// Peer port on 127.0.0.1.
    peer: u16,
}

impl Etcd {
    /// Start a fresh single-member etcd; returns once it answers a read.
    pub async fn start() -> Etcd {
        let dir = tempfile::tempdir().expect("tempdir");
        let (port, peer) = (free_port(), free_port());
        let mut etcd = Etcd { child: None, dir, port, peer };
        etcd.run().await;
        etcd
    }

    /// Start it again after `stop`, on the same ports and data (the keys it had survive);
    /// returns once it answers a read.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "etcd is still running");
        self.run().await;
    }

    async fn run(&mut self) {
        let client_url = format!("http://127.0.0.1:{}", self.port);
        let peer_url = format!("http://127.0.0.1:{}", self.peer);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .expect("etcd.log");
        let child = Command::new("etcd")
            .args(["--name", "test", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("test={peer_url}")])
            .args(["--unsafe-no-fsync", "--heartbeat-interval", "10", "--election-timeout", "100"])
            .args(["--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run etcd ({e}): run ./scripts/test.sh (it installs Debian's etcd-server) or apt-get install etcd-server")
            });
        self.child = Some(child);
        eventually("etcd answers", || async { self.client().await?.get("probe", None).await.ok().map(|_| ()) }).await;
    }

    /// A client of this etcd, if it accepts one.
    pub async fn client(&self) -> Option<etcd_client::Client> {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(std::time::Duration::from_secs(1))
            .with_timeout(std::time::Duration::from_secs(2));
        etcd_client::Client::connect([format!("127.0.0.1:{}", self.port)], Some(options)).await.ok()
    }

    /// Every key under `prefix` with its value and create revision, in key order.
    pub async fn keys(&self, prefix: &str) -> Vec<(String, String, i64)> {
        let mut client = self.client().await.expect("etcd client");
        let r = client
            .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
            .await
            .unwrap_or_else(|e| panic!("etcd get {prefix}: {e}"));
        r.kvs()
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key()).to_string();
                let value = String::from_utf8_lossy(kv.value()).to_string();
                (key, value, kv.create_revision())
            })
            .collect()
    }

    /// Stop etcd at once (SIGKILL) and reap it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// etcd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
