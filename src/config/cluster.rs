//! `cluster:`: validation of the membership and claim settings and the peer listener.
//!
//! Cold path (startup and `weir check`). Every bad value is reported with its key path, like the
//! rest of the file; the secret is read here (never shown in an error).

use super::file::FileCluster;
use super::model::Cluster;
use super::validate::Validator;
use std::time::Duration;

/// Default `cluster.lease_ttl`.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(5);
/// Shortest `cluster.lease_ttl`: keepalives go out every third of it.
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(2);
/// Longest `cluster.lease_ttl`: a dead owner's claims live this long.
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(60);
/// Shortest peer secret, characters.
pub const MIN_SECRET_LEN: usize = 16;

/// True for a name that may stand in an etcd key segment: 1 to 64 of `A-Z a-z 0-9 . _ -`.
fn key_segment(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

impl Validator {
    /// `cluster:`; `None` when any part of it is wrong (each problem reported).
    pub(super) fn cluster(&mut self, c: &FileCluster) -> Option<Cluster> {
        let before = self.error_count();
        for (key, value) in [("cluster.name", &c.name), ("cluster.instance", &c.instance)] {
            if !key_segment(value) {
                self.err(key, value, "must be 1 to 64 letters, digits, `.`, `_` or `-` (it is part of etcd keys)");
            }
        }
        if c.etcd.is_empty() {
            self.err("cluster.etcd", "[]", "name at least one etcd endpoint, e.g. [\"127.0.0.1:2379\"]");
        }
        for (i, e) in c.etcd.iter().enumerate() {
            let ok = e.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok || e.contains('/') {
                self.err(format!("cluster.etcd[{i}]"), e, "is not host:port; write it as \"127.0.0.1:2379\"");
            }
        }
        let lease_ttl = match c.lease_ttl.as_deref() {
            None => DEFAULT_LEASE_TTL,
            Some(s) => match humantime::parse_duration(s) {
                Ok(d) if (MIN_LEASE_TTL..=MAX_LEASE_TTL).contains(&d) && d.subsec_nanos() == 0 => d,
                Ok(_) => {
                    self.err("cluster.lease_ttl", s, "must be whole seconds between 2s and 60s; the default is 5s");
                    DEFAULT_LEASE_TTL
                }
                Err(_) => {
                    self.err("cluster.lease_ttl", s, "is not a duration; write a number with a unit, e.g. \"5s\"");
                    DEFAULT_LEASE_TTL
                }
            },
        };
        let peer_address = self.addr("cluster.peer.address", &c.peer.address);
        if let Some(a) = peer_address {
            if a.port() == 0 || a.ip().is_unspecified() {
                self.err(
                    "cluster.peer.address",
                    a,
                    "is published to the other instances: name the address they reach, with a port (not 0.0.0.0 or port 0)",
                );
            }
        }
        let path = &c.peer.secret_file;
        let secret = match std::fs::read_to_string(self.path(path)) {
            Ok(text) => {
                let s = text.lines().next().unwrap_or("").trim().to_string();
                if s.len() < MIN_SECRET_LEN || !s.bytes().all(|b| b.is_ascii_graphic()) {
                    self.err(
                        "cluster.peer.secret_file",
                        path,
                        "its first line must be at least 16 printable characters without spaces, e.g. from `weir key new`",
                    );
                }
                s.into_bytes()
            }
            Err(e) => {
                let shown = self.shown_at(path);
                self.err("cluster.peer.secret_file", path, format!("cannot be read ({e}){shown}"));
                Vec::new()
            }
        };
        let history = c.history.as_ref().map(|h| {
            let ca_file = h.ca_file.as_ref().map(|p| self.existing_file("cluster.history.ca_file", p));
            match crate::config::pg_url::TlsMode::of(&h.postgres) {
                Ok((crate::config::pg_url::TlsMode::Off, _)) if ca_file.is_some() => self.err(
                    "cluster.history.ca_file",
                    h.ca_file.as_deref().unwrap_or_default(),
                    "applies to TLS only; add sslmode=verify-full (or require) to cluster.history.postgres, or remove ca_file",
                ),
                Ok(_) => {}
                // The connection string is not shown: it may hold a password.
                Err(e) => self.err("cluster.history.postgres", "(connection string)", e),
            }
            if h.postgres.trim().is_empty() {
                self.err(
                    "cluster.history.postgres",
                    "\"\"",
                    "name the database, e.g. \"host=127.0.0.1 user=weir dbname=weir\"",
                );
            }
            crate::config::model::ClusterHistory { postgres: h.postgres.clone(), ca_file }
        });
        if self.error_count() > before {
            return None;
        }
        Some(Cluster {
            name: c.name.clone(),
            instance: c.instance.clone(),
            etcd: c.etcd.clone(),
            lease_ttl,
            peer_address: peer_address?,
            secret,
            history,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::parse;

    fn yaml(cluster: &str) -> String {
        format!(
            "listeners: [{{address: \"127.0.0.1:8080\"}}]\npools: [{{name: p, backends: [\"127.0.0.1:9000\"]}}]\nroutes: [{{path_prefix: /, pool: p}}]\ncluster: {cluster}\n"
        )
    }

    #[test]
    fn a_cluster_is_read_with_its_secret() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("peer.secret"), "0123456789abcdef-secret\n").unwrap();
        let text = yaml("{name: prod, instance: weir-a, etcd: [\"127.0.0.1:2379\"], peer: {address: \"127.0.0.1:7443\", secret_file: peer.secret}}");
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, text).unwrap();
        let c = crate::config::load(&path).unwrap().cluster.unwrap();
        assert_eq!(c.lease_ttl, std::time::Duration::from_secs(5));
        assert_eq!(c.secret, b"0123456789abcdef-secret");
        assert!(!format!("{c:?}").contains("secret-"), "the secret is never shown");
    }

    #[test]
    fn every_cluster_error_at_once() {
        let text = yaml("{name: \"a/b\", instance: \"\", etcd: [\"localhost\"], lease_ttl: 1s, peer: {address: \"0.0.0.0:7443\", secret_file: /nonexistent/peer.secret}}");
        let errors: Vec<String> = match parse(&text, "t.yaml") {
            Ok(_) => panic!("expected errors"),
            Err(e) => e.errors.iter().map(|e| e.to_string()).collect(),
        };
        for key in [
            "cluster.name",
            "cluster.instance",
            "cluster.etcd[0]",
            "cluster.lease_ttl",
            "cluster.peer.address",
            "cluster.peer.secret_file",
        ] {
            assert!(errors.iter().any(|e| e.contains(key)), "no error for {key} in {errors:#?}");
        }
    }

    #[test]
    fn a_shared_history_is_read_and_its_errors_named_without_the_connection_string() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("peer.secret"), "0123456789abcdef-secret\n").unwrap();
        let base = "{name: prod, instance: weir-a, etcd: [\"127.0.0.1:2379\"], peer: {address: \"127.0.0.1:7443\", secret_file: peer.secret}";
        let path = dir.path().join("c.yaml");
        std::fs::write(
            &path,
            yaml(&format!("{base}, history: {{postgres: \"host=db user=weir password=hunter2\"}}}}")),
        )
        .unwrap();
        let c = crate::config::load(&path).unwrap().cluster.unwrap();
        let h = c.history.clone().unwrap();
        assert_eq!((h.postgres.as_str(), h.ca_file), ("host=db user=weir password=hunter2", None));
        assert!(!format!("{c:?}").contains("hunter2"), "the connection string is never shown");
        std::fs::write(&path, yaml(&format!("{base}, history: {{postgres: \"host=db password=hunter2 sslmode=sometimes\", ca_file: /nonexistent/ca.pem}}}}"))).unwrap();
        let errors = crate::config::load(&path).unwrap_err().to_string();
        for key in ["cluster.history.postgres", "cluster.history.ca_file", "verify-full"] {
            assert!(errors.contains(key), "no {key} in {errors}");
        }
        assert!(!errors.contains("hunter2"), "{errors}");
    }

    #[test]
    fn a_missing_key_is_named() {
        let text = yaml("{name: prod, instance: a, etcd: [\"127.0.0.1:2379\"]}");
        let errors = match parse(&text, "t.yaml") {
            Ok(_) => panic!("expected errors"),
            Err(e) => e.to_string(),
        };
        assert!(errors.contains("peer"), "{errors}");
    }
}
