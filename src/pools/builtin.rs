//! Backends built into weir, so the shipped config runs with nothing else started.
//!
//! Cold path: `Builtins::bind` binds one loopback listener per built-in kind the config uses
//! (before the pools are built, so pools can name its address); `services` returns the
//! background services that serve them: the `echo` backend (`builtin:echo` in a pool, a real
//! server behind the relay), limited by `echo.max_message`, its accept errors counted in
//! `metrics`. (The echo *object* gets the same limit from `objects::Objects::build`.)
//!
//! Built-in *objects* (`objects[].builtin`) are not servers: weir terminates their WebSockets
//! itself (`objects::session`).

use crate::config::{Backend, BuiltinKind, Config, EchoConfig};
use crate::metrics::Metrics;
use pingora_core::services::ServiceWithDependents;
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};

/// The built-in servers of one process.
pub struct Builtins {
    bound: HashMap<BuiltinKind, (SocketAddr, TcpListener)>,
    echo: EchoConfig,
}

impl Builtins {
    /// Bind a loopback listener on an ephemeral port for every built-in kind `config` uses, and
    /// set the echo object's limit (`echo.max_message`, process-wide).
    pub fn bind(config: &Config) -> std::io::Result<Builtins> {
        let mut bound = HashMap::new();
        for pool in &config.pools {
            for b in &pool.backends {
                if let Backend::Builtin(kind) = b {
                    if !bound.contains_key(kind) {
                        let l = TcpListener::bind("127.0.0.1:0")?;
                        l.set_nonblocking(true)?;
                        bound.insert(*kind, (l.local_addr()?, l));
                    }
                }
            }
        }
        Ok(Builtins { bound, echo: config.echo })
    }

    /// The address a backend is reached at (built-ins resolve to their loopback listener).
    pub fn resolve(&self, backend: &Backend) -> SocketAddr {
        match backend {
            Backend::Addr(a) => *a,
            Backend::Builtin(kind) => match self.bound.get(kind) {
                Some((addr, _)) => *addr,
                None => SocketAddr::from(([127, 0, 0, 1], 0)),
            },
        }
    }

    /// The address of every bound kind (what a reload may resolve `builtin:<kind>` to: a kind
    /// not bound at startup needs a restart).
    pub fn addresses(&self) -> HashMap<BuiltinKind, SocketAddr> {
        self.bound.iter().map(|(k, (a, _))| (*k, *a)).collect()
    }

    /// The services that serve the bound listeners; their accept errors are counted in
    /// `metrics` (`weir_accept_errors_total{listener}`).
    pub fn services(self, metrics: &Metrics) -> Vec<Box<dyn ServiceWithDependents>> {
        let echo = self.echo;
        self.bound
            .into_iter()
            .map(|(kind, (_, listener))| -> Box<dyn ServiceWithDependents> {
                match kind {
                    BuiltinKind::Echo => Box::new(super::echo::service(listener, echo.max_message, metrics)),
                }
            })
            .collect()
    }
}
