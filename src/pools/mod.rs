//! Backend pools: Pingora load balancers with weir's health probes.
//!
//! Cold path: `Pools::build` at startup (and at every reload) creates one `LoadBalancer` per
//! pool, reusing the unchanged pools of the running snapshot, and hands its health checks to the
//! `HealthRunner` (`runner.rs`). Warm path: `Pools::select` picks a healthy
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
pub mod runner;

use crate::config::{Backend as ConfBackend, HealthCheck, Pool, Selection};
use crate::metrics::{Metrics, Place};
use pingora_load_balancing::selection::{Consistent, Random, RoundRobin};
use pingora_load_balancing::{Backend, LoadBalancer};
pub use runner::{HealthRunner, HealthTask};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// Each backend's readiness (passing its health check; always without one), index-aligned with
/// its pool's backends: written by the pool's probe on every change Pingora observes, read per
/// connection.
pub type Ready = Arc<[std::sync::atomic::AtomicBool]>;

/// One pool at run time: its balancer, its backends and its running health check. Shared by
/// every config snapshot that leaves the pool unchanged (a reload keeps its health state and
/// its round-robin position); its health check stops when the last snapshot holding it goes.
struct PoolRt {
    name: String,
    balancer: Balancer,
    /// Its backends as (label, address), for the admin API.
    backends: Vec<(String, SocketAddr)>,
    /// Their readiness, by the same index (Pingora's health as its probe last reported it).
    ready: Ready,
    /// Their open counts, by the same index: the entries of `Backends::open` (shared by every
    /// snapshot), resolved once here so that a connection takes no lock and hashes nothing.
    open: Vec<Arc<AtomicUsize>>,
    /// Picks the backend with the fewest open connections (`least_connections`).
    least: bool,
    /// What it was built from (config and resolved addresses): equal means reusable.
    built_from: String,
    _health: Option<HealthTask>,
}

/// All pools of one config snapshot, indexed like `Config::pools`.
pub struct Pools {
    pools: Vec<Arc<PoolRt>>,
    /// What outlives a reload: drains and open counts, by backend address.
    backends: Arc<Backends>,
}

/// Per backend address, shared by every snapshot (a drain and the open count outlive a reload).
#[derive(Default)]
struct Backends {
    /// Backends an operator is draining: never selected for a new connection.
    draining: std::sync::RwLock<std::collections::HashSet<SocketAddr>>,
    /// Whether `draining` holds any backend (set under its write lock): with none drained, a
    /// selection takes no lock and hashes no address for it.
    any_draining: std::sync::atomic::AtomicBool,
    /// Open connections per backend (from connect to end; `OpenCount`); an entry is added for
    /// every backend a snapshot names (cold), and only read on the warm path.
    open: std::sync::RwLock<std::collections::HashMap<SocketAddr, Arc<AtomicUsize>>>,
}

/// One connection's share of its backend's open count: counted from connect, given back on drop
/// (warm path: one atomic add each way).
#[derive(Debug)]
pub struct OpenCount(Arc<AtomicUsize>);

impl Drop for OpenCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
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

/// The resolved address of each backend: built-in backends are bound before the pools are built.
pub type Resolve<'a> = &'a dyn Fn(&ConfBackend) -> SocketAddr;

/// Told of every change of a backend's health (address, healthy).
pub type HealthListener = std::sync::Arc<dyn Fn(SocketAddr, bool) + Send + Sync>;

impl Pools {
    /// Build the balancers; their health checks run on `runner`.
    pub fn build(
        pools: &[Pool],
        resolve: Resolve<'_>,
        metrics: &Metrics,
        runner: &HealthRunner,
    ) -> std::io::Result<Pools> {
        Pools::build_with(pools, resolve, metrics, &[], runner, None, false)
    }

    /// `build`, with a health listener per pool (`listeners[i]` for `pools[i]`, if any), reusing
    /// the pools of `previous` (a reload's running snapshot) that did not change. `namespaces`:
    /// these are an object namespace's hosts (labelled `namespace`, not `pool`).
    pub fn build_with(
        pools: &[Pool],
        resolve: Resolve<'_>,
        metrics: &Metrics,
        listeners: &[Option<HealthListener>],
        runner: &HealthRunner,
        previous: Option<&Pools>,
        namespaces: bool,
    ) -> std::io::Result<Pools> {
        let backends: Arc<Backends> = previous.map(|p| p.backends.clone()).unwrap_or_default();
        let mut built = Vec::new();
        for (i, pool) in pools.iter().enumerate() {
            let listener = listeners.get(i).cloned().flatten();
            let addrs: Vec<String> = pool.backends.iter().map(|b| resolve(b).to_string()).collect();
            let built_from = format!("{pool:?} at {addrs:?}");
            let reused =
                previous.and_then(|p| p.pools.iter().find(|r| r.name == pool.name && r.built_from == built_from));
            if let Some(rt) = reused {
                built.push(rt.clone());
                continue;
            }
            // The `backend` label is the backend as configured: `builtin:echo` stays
            // `builtin:echo` (its loopback port changes at every start).
            let labels: Vec<(SocketAddr, String)> =
                pool.backends.iter().map(|b| (resolve(b), backend_label(b))).collect();
            let place = if namespaces { Place::namespace(&pool.name) } else { Place::pool(&pool.name) };
            let [pool_label, ns_label] = place.labels();
            for (_, label) in &labels {
                metrics.backend_healthy.with_label_values(&[pool_label, ns_label, label]).set(1);
            }
            // Pingora starts every backend healthy, and so does this view of it.
            let ready: Ready = labels.iter().map(|_| std::sync::atomic::AtomicBool::new(true)).collect();
            let mut health = None;
            macro_rules! lb {
                ($variant:ident, $sel:ty) => {{
                    let mut lb = LoadBalancer::<$sel>::try_from_iter(addrs.iter().map(String::as_str))?;
                    let probe = health::Probe::new(
                        pool,
                        place.clone(),
                        labels.clone(),
                        ready.clone(),
                        metrics.clone(),
                        listener.clone(),
                    );
                    if let Some(interval) = probe.interval() {
                        lb.set_health_check(Box::new(probe));
                        lb.health_check_frequency = Some(interval);
                    }
                    let lb = Arc::new(lb);
                    if lb.health_check_frequency.is_some() {
                        health = Some(runner.run(lb.clone()));
                    }
                    Balancer::$variant(lb)
                }};
            }
            let balancer = match pool.selection {
                // Least connections picks itself (`Pools::select`); the balancer keeps health.
                Selection::RoundRobin | Selection::LeastConnections => lb!(RoundRobin, RoundRobin),
                Selection::Random => lb!(Random, Random),
                Selection::IpHash => lb!(IpHash, Consistent),
            };
            let open = {
                let mut open = backends.open.write().unwrap_or_else(|p| p.into_inner());
                labels.iter().map(|(a, _)| open.entry(*a).or_default().clone()).collect()
            };
            built.push(Arc::new(PoolRt {
                name: pool.name.clone(),
                balancer,
                backends: labels.iter().map(|(a, l)| (l.clone(), *a)).collect(),
                ready,
                open,
                least: pool.selection == Selection::LeastConnections,
                built_from,
                _health: health,
            }));
        }
        Ok(Pools { pools: built, backends })
    }

    /// Every backend address of every pool.
    pub fn addresses(&self) -> std::collections::HashSet<SocketAddr> {
        self.pools.iter().flat_map(|p| p.backends.iter().map(|(_, a)| *a)).collect()
    }

    /// Whether pool `i` is the very pool (same balancer, same health state) as one of `other`.
    pub fn is_shared_with(&self, i: usize, other: &Pools) -> bool {
        self.pools.get(i).is_some_and(|p| other.pools.iter().any(|o| Arc::ptr_eq(p, o)))
    }

    /// Drain (`true`) or undrain backend `addr`: a drained backend gets no new connection.
    pub fn set_draining(&self, addr: SocketAddr, on: bool) {
        let mut d = self.backends.draining.write().unwrap_or_else(|p| p.into_inner());
        if on {
            d.insert(addr);
        } else {
            d.remove(&addr);
        }
        self.backends.any_draining.store(!d.is_empty(), Ordering::Release);
    }

    fn is_draining(&self, addr: &SocketAddr) -> bool {
        self.backends.any_draining.load(Ordering::Acquire)
            && self.backends.draining.read().unwrap_or_else(|p| p.into_inner()).contains(addr)
    }

    /// The address of `backend` (its label or address) in the pool named `pool`.
    pub fn find(&self, pool: &str, backend: &str) -> Option<SocketAddr> {
        let p = self.pools.iter().find(|p| p.name == pool)?;
        p.backends.iter().find(|(l, a)| l == backend || a.to_string() == backend).map(|(_, a)| *a)
    }

    /// Every pool by name with its backends.
    pub fn describe(&self) -> Vec<(String, Vec<BackendView>)> {
        self.pools
            .iter()
            .map(|p| {
                let views = p
                    .backends
                    .iter()
                    .map(|(label, addr)| BackendView {
                        label: label.clone(),
                        addr: *addr,
                        healthy: p.healthy(addr),
                        draining: self.is_draining(addr),
                    })
                    .collect();
                (p.name.clone(), views)
            })
            .collect()
    }

    /// Count one connection open to backend `addr` of pool `pool` until the returned count
    /// drops (`None` for an address that is not one of the pool's).
    pub fn opened(&self, pool: usize, addr: SocketAddr) -> Option<OpenCount> {
        let c = self.pools.get(pool)?.open_of(&addr)?;
        c.fetch_add(1, Ordering::Relaxed);
        Some(OpenCount(c.clone()))
    }

    /// Whether the pool named `pool` selects by least connections.
    pub fn least_connections(&self, pool: &str) -> bool {
        self.pools.iter().any(|p| p.name == pool && p.least)
    }

    /// Pick a healthy backend of pool `pool` not in `tried`; `client` keys `ip_hash`.
    pub fn select(&self, pool: usize, client: Option<IpAddr>, tried: &[SocketAddr]) -> Option<SocketAddr> {
        let p = self.pools.get(pool)?;
        let eligible = |a: &SocketAddr| !tried.contains(a) && !self.is_draining(a) && p.healthy(a);
        if p.least {
            return p
                .backends
                .iter()
                .zip(&p.open)
                .map(|((_, a), open)| (*a, open.load(Ordering::Relaxed)))
                .filter(|(a, _)| eligible(a))
                .min_by_key(|(_, open)| *open)
                .map(|(a, _)| a);
        }
        // One backend: every algorithm picks it when it is eligible, so Pingora's selection (an
        // `ArcSwap` load, a hash set of the backends tried, a hash per backend) is skipped.
        if let [(_, addr)] = p.backends.as_slice() {
            return Some(*addr).filter(eligible);
        }
        // Only `ip_hash` reads the key (the address as text: the same mapping as before); the
        // others ignore it, so they are not handed a formatted string per connection.
        let key = match (&p.balancer, client) {
            (Balancer::IpHash(_), Some(ip)) => ip.to_string(),
            _ => String::new(),
        };
        let accept = |b: &Backend, healthy: bool| {
            healthy && !b.addr.as_inet().is_some_and(|a| tried.contains(a) || self.is_draining(a))
        };
        let backend = match &p.balancer {
            Balancer::RoundRobin(lb) => lb.select_with(key.as_bytes(), 256, accept),
            Balancer::Random(lb) => lb.select_with(key.as_bytes(), 256, accept),
            Balancer::IpHash(lb) => lb.select_with(key.as_bytes(), 256, accept),
        }?;
        backend.addr.as_inet().copied()
    }
}

impl PoolRt {
    /// The open count of backend `addr`.
    fn open_of(&self, addr: &SocketAddr) -> Option<&Arc<AtomicUsize>> {
        self.backends.iter().zip(&self.open).find(|((_, a), _)| a == addr).map(|(_, c)| c)
    }

    /// Whether the backend at `addr` passes its health check (a pool lists a few backends: a
    /// scan of them and one atomic load).
    fn healthy(&self, addr: &SocketAddr) -> bool {
        self.backends.iter().zip(self.ready.iter()).any(|((_, a), ready)| a == addr && ready.load(Ordering::Acquire))
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
