//! Backend pools: Pingora load balancers with weir's health probes.
//!
//! Cold path: `Pools::build` at startup creates one `LoadBalancer` per pool and returns the
//! background services that run its health checks. Warm path: `Pools::select` picks a healthy
//! backend once per connection (lock-free reads inside Pingora's selector).
//!
//! - `health.rs`: the health probes (background).
//! - `builtin.rs`: backends built into weir (`builtin:<kind>`), bound on loopback at startup
//!   (cold); `echo.rs`: the echo backend (warm, its own service).

// Bytes from the network never panic here: every failure is a value (see the module doc).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod builtin;
pub mod echo;
pub mod health;

use crate::config::{Backend as ConfBackend, HealthCheck, Pool, Selection};
use crate::metrics::Metrics;
use pingora_core::services::background::GenBackgroundService;
use pingora_load_balancing::selection::{Consistent, Random, RoundRobin};
use pingora_load_balancing::{Backend, LoadBalancer};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Most backends tried for one connection when connecting fails.
pub const MAX_CONNECT_ATTEMPTS: usize = 3;

/// The `backend` label of a configured backend: its address, or `builtin:<kind>`.
pub fn backend_label(b: &ConfBackend) -> String {
    match b {
        ConfBackend::Addr(a) => a.to_string(),
        ConfBackend::Builtin(crate::config::BuiltinKind::Echo) => "builtin:echo".into(),
    }
}

/// One pool's balancer, by selection policy.
enum Balancer {
    RoundRobin(Arc<LoadBalancer<RoundRobin>>),
    Random(Arc<LoadBalancer<Random>>),
    IpHash(Arc<LoadBalancer<Consistent>>),
}

/// All pools, indexed like `Config::pools`.
pub struct Pools {
    balancers: Vec<Balancer>,
    /// Each pool's name and backends as (label, address), for the admin API.
    names: Vec<(String, Vec<(String, SocketAddr)>)>,
    /// Backends an operator is draining: never selected for a new connection.
    draining: std::sync::RwLock<std::collections::HashSet<SocketAddr>>,
}

/// One backend as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendView {
    /// The backend as configured (`host:port` or `builtin:echo`).
    pub label: String,
    /// Its address.
    pub addr: SocketAddr,
    /// Passing its health check (always, without one).
    pub healthy: bool,
    /// Drained by an operator.
    pub draining: bool,
}

/// A background service that runs health checks for a pool.
pub type HealthService = Box<dyn pingora_core::services::ServiceWithDependents>;

/// The resolved address of each backend: built-in backends are bound before the pools are built.
pub type Resolve<'a> = &'a dyn Fn(&ConfBackend) -> SocketAddr;

/// Told of every change of a backend's health (address, healthy).
pub type HealthListener = std::sync::Arc<dyn Fn(SocketAddr, bool) + Send + Sync>;

impl Pools {
    /// Build the balancers; returns them with the services that probe backend health.
    pub fn build(
        pools: &[Pool],
        resolve: Resolve<'_>,
        metrics: &Metrics,
    ) -> std::io::Result<(Pools, Vec<HealthService>)> {
        Pools::build_with(pools, resolve, metrics, &[])
    }

    /// `build`, with a health listener per pool (`listeners[i]` for `pools[i]`, if any).
    pub fn build_with(
        pools: &[Pool],
        resolve: Resolve<'_>,
        metrics: &Metrics,
        listeners: &[Option<HealthListener>],
    ) -> std::io::Result<(Pools, Vec<HealthService>)> {
        let mut balancers = Vec::new();
        let mut names = Vec::new();
        let mut services: Vec<HealthService> = Vec::new();
        for (i, pool) in pools.iter().enumerate() {
            let listener = listeners.get(i).cloned().flatten();
            let addrs: Vec<String> = pool.backends.iter().map(|b| resolve(b).to_string()).collect();
            // The `backend` label is the backend as configured: `builtin:echo` stays
            // `builtin:echo` (its loopback port changes at every start).
            let labels: Vec<(SocketAddr, String)> =
                pool.backends.iter().map(|b| (resolve(b), backend_label(b))).collect();
            names.push((pool.name.clone(), labels.iter().map(|(a, l)| (l.clone(), *a)).collect()));
            for (_, label) in &labels {
                metrics.backend_healthy.with_label_values(&[&pool.name, label]).set(1);
            }
            macro_rules! lb {
                ($variant:ident, $sel:ty) => {{
                    let mut lb = LoadBalancer::<$sel>::try_from_iter(addrs.iter().map(String::as_str))?;
                    let probe = health::Probe::new(pool, labels.clone(), metrics.clone(), listener.clone());
                    let interval = probe.interval();
                    if let Some(interval) = interval {
                        lb.set_health_check(Box::new(probe));
                        lb.health_check_frequency = Some(interval);
                    }
                    let service = GenBackgroundService::new(format!("health check {}", pool.name), Arc::new(lb));
                    let task = service.task();
                    if interval.is_some() {
                        services.push(Box::new(service));
                    }
                    Balancer::$variant(task)
                }};
            }
            balancers.push(match pool.selection {
                Selection::RoundRobin => lb!(RoundRobin, RoundRobin),
                Selection::Random => lb!(Random, Random),
                Selection::IpHash => lb!(IpHash, Consistent),
            });
        }
        Ok((Pools { balancers, names, draining: Default::default() }, services))
    }

    /// Drain (`true`) or undrain backend `addr`: a drained backend gets no new connection.
    pub fn set_draining(&self, addr: SocketAddr, on: bool) {
        let mut d = self.draining.write().unwrap_or_else(|p| p.into_inner());
        if on {
            d.insert(addr);
        } else {
            d.remove(&addr);
        }
    }

    fn is_draining(&self, addr: &SocketAddr) -> bool {
        self.draining.read().unwrap_or_else(|p| p.into_inner()).contains(addr)
    }

    /// The address of `backend` (its label or address) in the pool named `pool`.
    pub fn find(&self, pool: &str, backend: &str) -> Option<SocketAddr> {
        let (_, backends) = self.names.iter().find(|(n, _)| n == pool)?;
        backends.iter().find(|(l, a)| l == backend || a.to_string() == backend).map(|(_, a)| *a)
    }

    /// Every pool by name with its backends.
    pub fn describe(&self) -> Vec<(String, Vec<BackendView>)> {
        self.names
            .iter()
            .zip(&self.balancers)
            .map(|((name, backends), balancer)| {
                let views = backends
                    .iter()
                    .map(|(label, addr)| BackendView {
                        label: label.clone(),
                        addr: *addr,
                        healthy: balancer.healthy(addr),
                        draining: self.is_draining(addr),
                    })
                    .collect();
                (name.clone(), views)
            })
            .collect()
    }

    /// Pick a healthy backend of pool `pool` not in `tried`; `client` keys `ip_hash`.
    pub fn select(&self, pool: usize, client: Option<IpAddr>, tried: &[SocketAddr]) -> Option<SocketAddr> {
        let key = client.map(|ip| ip.to_string()).unwrap_or_default();
        let accept = |b: &Backend, healthy: bool| {
            healthy && !b.addr.as_inet().is_some_and(|a| tried.contains(a) || self.is_draining(a))
        };
        let backend = match self.balancers.get(pool)? {
            Balancer::RoundRobin(lb) => lb.select_with(key.as_bytes(), 256, accept),
            Balancer::Random(lb) => lb.select_with(key.as_bytes(), 256, accept),
            Balancer::IpHash(lb) => lb.select_with(key.as_bytes(), 256, accept),
        }?;
        backend.addr.as_inet().copied()
    }
}

impl Balancer {
    /// Whether the backend at `addr` passes its health check.
    fn healthy(&self, addr: &SocketAddr) -> bool {
        macro_rules! ready {
            ($lb:expr) => {{
                let backends = $lb.backends();
                backends
                    .get_backend()
                    .iter()
                    .find(|b| b.addr.as_inet() == Some(addr))
                    .is_some_and(|b| backends.ready(b))
            }};
        }
        match self {
            Balancer::RoundRobin(lb) => ready!(lb),
            Balancer::Random(lb) => ready!(lb),
            Balancer::IpHash(lb) => ready!(lb),
        }
    }
}

impl HealthCheck {
    /// Time between probes, or `None` when probing is off.
    pub fn interval(&self) -> Option<std::time::Duration> {
        match self {
            HealthCheck::None => None,
            HealthCheck::Tcp { interval }
            | HealthCheck::Http { interval, .. }
            | HealthCheck::Handshake { interval, .. } => Some(*interval),
        }
    }
}
