//! Connection caps and new-connection rates (`admission:`, `routes[].admission`): how many
//! WebSockets may be open in all, per route, per tenant and per client address (an IPv4
//! address, an IPv6 /64), and how fast new ones may come per address and per tenant (token
//! buckets).
//!
//! Warm path: `Caps::admit` once per upgrade (after authentication, before the backend is
//! connected), and the `Permit` it returns gives its counts back when the connection ends
//! (dropped with the connection's task). Memory is bounded: at most `max_tracked_ips` addresses
//! and `MAX_TENANTS` tenants are tracked; beyond that a new address (tenant) shares one overflow
//! entry with every other untracked one, so its caps and rates apply to them together, until an
//! idle tracked entry (nothing open) is evicted to make room.

use crate::config::{Admission, NewConnRate};
use crate::sync::lock;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Tenants tracked at once; more share one entry.
pub const MAX_TENANTS: usize = 100_000;
/// Entries looked at for an idle one to evict when a table is full.
const EVICTION_PROBES: usize = 64;

/// Why `admit` refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `admission.max_connections` or the route's `max_connections`: 503.
    Full,
    /// The client address has `max_connections_per_ip` open: 429.
    IpFull,
    /// The tenant has `max_connections_per_tenant` open: 429.
    TenantFull,
    /// The client address is over `ip_rate`: 429, retry after this many seconds.
    IpRate(u64),
    /// The tenant is over `tenant_rate`: 429, retry after this many seconds.
    TenantRate(u64),
}

/// One tracked client address or tenant.
#[derive(Debug)]
struct Entry {
    open: u64,
    tokens: f64,
    at: Instant,
}

/// A bounded table of entries keyed by `K`, with one shared overflow entry.
struct Table<K> {
    map: HashMap<K, Entry>,
    overflow: Entry,
    max: usize,
}

impl<K: std::hash::Hash + Eq + Clone> Table<K> {
    fn new(max: usize, burst: f64, now: Instant) -> Table<K> {
        Table { map: HashMap::new(), overflow: Entry { open: 0, tokens: burst, at: now }, max }
    }

    /// The entry of `key` (created, evicting an idle one if full), or the overflow entry; the
    /// key under which it is kept (`None`: overflow).
    fn entry(&mut self, key: &K, burst: f64, now: Instant) -> (&mut Entry, Option<K>) {
        if !self.map.contains_key(key) && self.map.len() >= self.max {
            let idle = self.map.iter().take(EVICTION_PROBES).find(|(_, e)| e.open == 0).map(|(k, _)| k.clone());
            match idle {
                Some(k) => {
                    self.map.remove(&k);
                }
                None => return (&mut self.overflow, None),
            }
        }
        let e = self.map.entry(key.clone()).or_insert(Entry { open: 0, tokens: burst, at: now });
        (e, Some(key.clone()))
    }

    fn release(&mut self, key: &Option<K>) {
        let e = match key {
            Some(k) => self.map.get_mut(k),
            None => Some(&mut self.overflow),
        };
        if let Some(e) = e {
            e.open = e.open.saturating_sub(1);
        }
    }
}

/// Refill `e`'s bucket to `now` and take one token: `Ok`, or the seconds until one is there.
fn take_token(e: &mut Entry, rate: Option<NewConnRate>, now: Instant) -> Result<(), u64> {
    let Some(r) = rate else { return Ok(()) };
    let elapsed = now.saturating_duration_since(e.at).as_secs_f64();
    e.at = now;
    e.tokens = (e.tokens + elapsed * r.per_second).min(r.burst);
    if e.tokens >= 1.0 {
        e.tokens -= 1.0;
        Ok(())
    } else {
        Err(((1.0 - e.tokens) / r.per_second).ceil().max(1.0) as u64)
    }
}

/// The key of a client address: an IPv4 address, or the /64 of an IPv6 one. Two words rather
/// than a `u128`: every permit holds one, and a `u128` would align the permit, and the
/// connection's ending state around it, to 16 bytes.
type IpKey = [u64; 2];

fn ip_key(ip: IpAddr) -> IpKey {
    match ip {
        IpAddr::V4(v4) => [0, u64::from(u32::from(v4)) | (0xffff << 32)],
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => ip_key(IpAddr::V4(v4)),
            None => [(u128::from(v6) >> 64) as u64, 0],
        },
    }
}

/// The process's caps and rates: one for the process, kept across reloads (a reload changes
/// its settings, `reconfigure`, never its counts).
pub struct Caps {
    cfg: arc_swap::ArcSwap<Admission>,
    total: AtomicU64,
    /// Open connections per route name.
    routes: Mutex<HashMap<String, Arc<AtomicU64>>>,
    ips: Mutex<Table<IpKey>>,
    tenants: Mutex<Table<Arc<str>>>,
}

/// One admitted connection's share of the counts; given back on drop.
pub struct Permit {
    caps: Arc<Caps>,
    route: Arc<AtomicU64>,
    ip: Option<Option<IpKey>>,
    tenant: Option<Option<Arc<str>>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let c = &self.caps;
        c.total.fetch_sub(1, Ordering::Relaxed);
        self.route.fetch_sub(1, Ordering::Relaxed);
        if let Some(k) = &self.ip {
            lock(&c.ips).release(k);
        }
        if let Some(k) = &self.tenant {
            lock(&c.tenants).release(k);
        }
    }
}

impl Caps {
    /// Caps under `cfg`.
    pub fn new(cfg: Admission) -> Arc<Caps> {
        let now = Instant::now();
        let burst = |r: Option<NewConnRate>| r.map_or(0.0, |r| r.burst);
        Arc::new(Caps {
            total: AtomicU64::new(0),
            routes: Mutex::default(),
            ips: Mutex::new(Table::new(cfg.max_tracked_ips, burst(cfg.ip_rate), now)),
            tenants: Mutex::new(Table::new(MAX_TENANTS, burst(cfg.tenant_rate), now)),
            cfg: arc_swap::ArcSwap::from_pointee(cfg),
        })
    }

    /// New settings (a reload): open connections stay counted; a smaller address table keeps
    /// its entries and evicts idle ones as new addresses come.
    pub fn reconfigure(&self, cfg: Admission) {
        lock(&self.ips).max = cfg.max_tracked_ips;
        self.cfg.store(Arc::new(cfg));
    }

    /// The open-connection counter of the route named `name` (the same one across reloads).
    pub fn route_counter(&self, name: &str) -> Arc<AtomicU64> {
        lock(&self.routes).entry(name.to_string()).or_default().clone()
    }

    /// Admit one more connection on the route counted by `route` (capped at `route_cap`, 0:
    /// none; see `route_counter`) from `ip`
    /// for `tenant`, or say why not. Counts nothing when it refuses; `None` when no cap or rate
    /// applies at all (a connection then holds no permit: it costs nothing to count).
    pub fn admit(
        self: &Arc<Self>,
        route: &Arc<AtomicU64>,
        route_cap: u64,
        tenant: Option<&str>,
        ip: Option<IpAddr>,
        now: Instant,
    ) -> Result<Option<Permit>, Refusal> {
        let c = self.cfg.load();
        let uncapped = c.max_connections == 0
            && route_cap == 0
            && c.max_connections_per_ip == 0
            && c.ip_rate.is_none()
            && c.max_connections_per_tenant == 0
            && c.tenant_rate.is_none();
        if uncapped {
            return Ok(None);
        }
        let over = |open: u64, cap: u64| cap != 0 && open >= cap;
        let route_open = route.load(Ordering::Relaxed);
        if over(self.total.load(Ordering::Relaxed), c.max_connections) || over(route_open, route_cap) {
            return Err(Refusal::Full);
        }
        // Addresses first (the cheaper refusal for a flood), then tenants; a refusal by the
        // tenant gives the address its token and count back.
        let ip_key = match ip.filter(|_| c.max_connections_per_ip != 0 || c.ip_rate.is_some()) {
            None => None,
            Some(ip) => {
                let mut ips = lock(&self.ips);
                let (e, key) = ips.entry(&ip_key(ip), c.ip_rate.map_or(0.0, |r| r.burst), now);
                if over(e.open, c.max_connections_per_ip) {
                    return Err(Refusal::IpFull);
                }
                take_token(e, c.ip_rate, now).map_err(Refusal::IpRate)?;
                e.open += 1;
                Some(key)
            }
        };
        let tenant_key = match tenant.filter(|_| c.max_connections_per_tenant != 0 || c.tenant_rate.is_some()) {
            None => None,
            Some(t) => {
                let mut tenants = lock(&self.tenants);
                let (e, key) = tenants.entry(&Arc::from(t), c.tenant_rate.map_or(0.0, |r| r.burst), now);
                let refused = if over(e.open, c.max_connections_per_tenant) {
                    Some(Refusal::TenantFull)
                } else {
                    take_token(e, c.tenant_rate, now).err().map(Refusal::TenantRate)
                };
                if let Some(r) = refused {
                    drop(tenants);
                    if let Some(k) = &ip_key {
                        let mut ips = lock(&self.ips);
                        ips.release(k);
                    }
                    return Err(r);
                }
                e.open += 1;
                Some(key)
            }
        };
        self.total.fetch_add(1, Ordering::Relaxed);
        route.fetch_add(1, Ordering::Relaxed);
        Ok(Some(Permit { caps: self.clone(), route: route.clone(), ip: ip_key, tenant: tenant_key }))
    }

    /// Connections open now (admitted and not yet ended).
    pub fn open(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn admission() -> Admission {
        Admission {
            max_connections: 0,
            max_connections_per_ip: 0,
            max_connections_per_tenant: 0,
            ip_rate: None,
            tenant_rate: None,
            max_tracked_ips: 100,
        }
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn caps_count_open_connections_and_give_them_back() {
        let caps = Caps::new(Admission { max_connections: 3, max_connections_per_ip: 2, ..admission() });
        let (r0, r1) = (caps.route_counter("a"), caps.route_counter("b"));
        let now = Instant::now();
        let a = caps.admit(&r0, 0, None, ip("10.0.0.1"), now).unwrap();
        let b = caps.admit(&r0, 0, None, ip("10.0.0.1"), now).unwrap();
        assert_eq!(caps.admit(&r0, 0, None, ip("10.0.0.1"), now).err(), Some(Refusal::IpFull));
        let c = caps.admit(&r1, 0, None, ip("10.0.0.2"), now).unwrap();
        assert_eq!(caps.admit(&r1, 0, None, ip("10.0.0.3"), now).err(), Some(Refusal::Full), "3 in all");
        drop(a);
        assert_eq!(caps.open(), 2);
        let d = caps.admit(&r0, 1, None, ip("10.0.0.1"), now);
        assert_eq!(d.err(), Some(Refusal::Full), "route 0 holds b: its cap of 1 is reached");
        drop((b, c));
        assert_eq!(caps.open(), 0);
    }

    #[test]
    fn ipv6_addresses_share_their_64_and_mapped_v4_is_v4() {
        assert_eq!(ip_key("2001:db8::1".parse().unwrap()), ip_key("2001:db8::ffff:2".parse().unwrap()));
        assert_ne!(ip_key("2001:db8::1".parse().unwrap()), ip_key("2001:db8:0:1::1".parse().unwrap()));
        assert_eq!(ip_key("::ffff:10.0.0.1".parse().unwrap()), ip_key("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn rates_refuse_with_retry_after_and_refill() {
        let rate = Some(NewConnRate { per_second: 2.0, burst: 2.0 });
        let caps = Caps::new(Admission {
            ip_rate: rate,
            tenant_rate: Some(NewConnRate { per_second: 1.0, burst: 3.0 }),
            ..admission()
        });
        let r0 = caps.route_counter("a");
        let t0 = Instant::now();
        let _a = caps.admit(&r0, 0, Some("acme"), ip("10.0.0.1"), t0).unwrap();
        let _b = caps.admit(&r0, 0, Some("acme"), ip("10.0.0.1"), t0).unwrap();
        assert_eq!(caps.admit(&r0, 0, Some("acme"), ip("10.0.0.1"), t0).err(), Some(Refusal::IpRate(1)));
        let _c = caps.admit(&r0, 0, Some("acme"), ip("10.0.0.2"), t0).unwrap();
        assert_eq!(caps.admit(&r0, 0, Some("acme"), ip("10.0.0.3"), t0).err(), Some(Refusal::TenantRate(1)));
        // The address that the tenant refused kept its token.
        let t1 = t0 + Duration::from_secs(1);
        assert!(caps.admit(&r0, 0, Some("acme"), ip("10.0.0.1"), t1).is_ok());
    }

    #[test]
    fn the_address_table_is_bounded_and_evicts_idle_entries() {
        let caps = Caps::new(Admission { max_connections_per_ip: 1, max_tracked_ips: 2, ..admission() });
        let r0 = caps.route_counter("a");
        let now = Instant::now();
        let a = caps.admit(&r0, 0, None, ip("10.0.0.1"), now).unwrap();
        let _b = caps.admit(&r0, 0, None, ip("10.0.0.2"), now).unwrap();
        // Full, nothing idle: a third address shares the overflow entry (cap 1 for all of them).
        let c = caps.admit(&r0, 0, None, ip("10.0.0.3"), now).unwrap();
        assert_eq!(caps.admit(&r0, 0, None, ip("10.0.0.4"), now).err(), Some(Refusal::IpFull));
        assert_eq!(lock(&caps.ips).map.len(), 2);
        drop((a, c));
        // 10.0.0.1 is idle now: evicted to make room for 10.0.0.4.
        assert!(caps.admit(&r0, 0, None, ip("10.0.0.4"), now).is_ok());
        assert_eq!(lock(&caps.ips).map.len(), 2);
    }
}
