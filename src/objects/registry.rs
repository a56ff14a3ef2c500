//! The live placements of one namespace: which host serves each id that has connections, and
//! the leases that keep it there.
//!
//! Warm path (once per connection: `place`, and the lease's drop), plus the health callback.
//! One mutex per namespace guards a map `id → Entry`; it is never held across an await.
//!
//! The rules, in one place:
//! - An id with live connections stays on its host while that host is eligible (healthy and not
//!   marked down), even when a host that would win the rendezvous appears or recovers.
//! - An id without live connections is placed fresh by rendezvous over the eligible hosts.
//! - When a host fails (health check, or a refused connection), every id on it is *evicted*: its
//!   relays close their clients with 1012 and the entry stops taking connections. A new
//!   connection for an evicted id waits (bounded) until the old connections are gone, then is
//!   placed fresh: two hosts never serve one id at once, as far as this process can tell.
//! - When the last lease of an id drops, the entry goes and its occupancy is written as an
//!   object usage record (if any connection was established).

use super::accounting::Occupancy;
use crate::billing::UsageLog;
use crate::metrics::Metrics;
use prometheus::{IntCounter, IntGauge};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Why an id could not be placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaceError {
    /// No host is eligible (all failing their health check, marked down or already tried).
    NoHost,
    /// The id's previous host failed and its connections did not end within the wait.
    Moving,
}

/// Why ids moved off a host (the `reason` label of `weir_object_moves_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveReason {
    /// The host failed its health check.
    HealthCheck,
    /// Connecting to the host failed.
    ConnectFailed,
    /// This instance lost its cluster lease, and with it its claim of the object.
    ClaimLost,
}

impl MoveReason {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            MoveReason::HealthCheck => "health_check",
            MoveReason::ConnectFailed => "connect_failed",
            MoveReason::ClaimLost => "claim_lost",
        }
    }
}

/// An object host.
struct Host {
    /// The host as written in config: the rendezvous key.
    key: String,
    addr: SocketAddr,
    /// As last reported by the health check (true until a probe fails).
    healthy: AtomicBool,
    /// Set when a connection to it failed: ineligible until then (or a healthy probe).
    down_until: Mutex<Option<Instant>>,
}

/// One id with live connections.
struct Entry {
    host: Option<usize>,
    live: usize,
    evicted: bool,
    /// Held under this instance's claim in the cluster (evicted when the lease is lost).
    claimed: bool,
    /// Turns true on eviction; dropped (closing every receiver) when the entry goes.
    evict: watch::Sender<bool>,
    occupancy: ObjectHandle,
}

/// Shared accounting of one object, touched by every socket that carries its messages.
#[derive(Clone, Debug)]
pub struct ObjectHandle(Arc<Mutex<Occupancy>>);

impl ObjectHandle {
    fn lock(&self) -> MutexGuard<'_, Occupancy> {
        crate::sync::lock(&self.0)
    }

    /// A message was processed now.
    pub fn touch(&self) {
        self.lock().touch(Instant::now());
    }
}

/// One occupied object as the admin API shows it.
#[derive(Debug, Clone)]
pub struct ObjectView {
    /// The object id.
    pub id: String,
    /// Its host: `host:port` as configured, or `builtin:<kind>`.
    pub host: String,
    /// Connections holding a lease on it (established or still connecting).
    pub leases: usize,
    /// When its occupancy began (wall clock).
    pub since: std::time::SystemTime,
    /// How long it has been occupied so far.
    pub occupied: Duration,
    /// Its host failed: its connections are being closed with 1012.
    pub moving: bool,
}

/// The live placements of one namespace.
pub struct Registry {
    namespace: String,
    /// `builtin:<kind>` for built-in namespaces (no hosts).
    builtin: Option<String>,
    hosts: Vec<Host>,
    idle_window: Duration,
    /// How long a host whose connection failed stays ineligible.
    down_for: Duration,
    entries: Mutex<HashMap<String, Entry>>,
    usage: Arc<UsageLog>,
    metrics: Metrics,
    active: IntGauge,
    placements: IntCounter,
}

impl Registry {
    /// A registry for `namespace`: `hosts` as (config key, address), or a built-in `builtin`.
    pub fn new(
        namespace: &str,
        builtin: Option<String>,
        hosts: &[(String, SocketAddr)],
        idle_window: Duration,
        down_for: Duration,
        usage: Arc<UsageLog>,
        metrics: Metrics,
    ) -> Registry {
        Registry {
            namespace: namespace.to_string(),
            builtin,
            hosts: hosts
                .iter()
                .map(|(key, addr)| Host {
                    key: key.clone(),
                    addr: *addr,
                    healthy: AtomicBool::new(true),
                    down_until: Mutex::new(None),
                })
                .collect(),
            idle_window,
            down_for,
            entries: Mutex::new(HashMap::new()),
            usage,
            active: metrics.objects_active.with_label_values(&[namespace]),
            placements: metrics.object_placements.with_label_values(&[namespace]),
            metrics,
        }
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        crate::sync::lock(&self.entries)
    }

    fn eligible(&self, host: usize, exclude: &[usize]) -> bool {
        let Some(h) = self.hosts.get(host) else { return false };
        let down = crate::sync::lock(&h.down_until).is_some_and(|t| Instant::now() < t);
        h.healthy.load(Ordering::Relaxed) && !down && !exclude.contains(&host)
    }

    /// Lease `id` for one connection: its current host, or a fresh rendezvous placement that
    /// skips the hosts in `exclude` (already tried). Waits at most `wait` for the connections
    /// of an evicted placement to end.
    /// `tenant` is recorded on a fresh placement's occupancy.
    pub async fn place(
        self: &Arc<Self>,
        id: &str,
        tenant: Option<&str>,
        exclude: &[usize],
        wait: Duration,
    ) -> Result<Lease, PlaceError> {
        self.place_with(id, tenant, exclude, None, wait).await
    }

    /// As `place`, but on host `host` (its index), whatever this process's health view says: the
    /// host a cluster recorded for the id. A live placement of the id on another host is
    /// evicted and waited for.
    pub async fn place_on(
        self: &Arc<Self>,
        id: &str,
        tenant: Option<&str>,
        host: usize,
        wait: Duration,
    ) -> Result<Lease, PlaceError> {
        self.place_with(id, tenant, &[], Some(host), wait).await
    }

    /// The host a fresh placement of `id` would get (rendezvous over the eligible hosts not in
    /// `exclude`), or the one it has while it is placed: its `hosts` entry as configured.
    pub fn choose(&self, id: &str, exclude: &[usize]) -> Option<&str> {
        let placed = self.entries().get(id).filter(|e| !e.evicted).and_then(|e| e.host);
        let host = placed.filter(|h| self.eligible(*h, exclude)).or_else(|| {
            let candidates = self.hosts.iter().enumerate().filter(|(i, _)| self.eligible(*i, exclude));
            super::placement::owner(&self.namespace, id, candidates.map(|(i, h)| (i, h.key.as_str())))
        })?;
        self.hosts.get(host).map(|h| h.key.as_str())
    }

    /// The index of the host written `key` in the namespace's `hosts`.
    pub fn host_named(&self, key: &str) -> Option<usize> {
        self.hosts.iter().position(|h| h.key == key)
    }

    async fn place_with(
        self: &Arc<Self>,
        id: &str,
        tenant: Option<&str>,
        exclude: &[usize],
        forced: Option<usize>,
        wait: Duration,
    ) -> Result<Lease, PlaceError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let mut gone = match self.try_place(id, tenant, exclude, forced) {
                Ok(lease) => return Ok(lease),
                Err(None) => return Err(PlaceError::NoHost),
                Err(Some(gone)) => gone,
            };
            // The sender is dropped when the old placement's last lease goes.
            let drained = async { while gone.changed().await.is_ok() {} };
            if tokio::time::timeout_at(deadline, drained).await.is_err() {
                return Err(PlaceError::Moving);
            }
        }
    }

    /// One attempt: a lease, or `Err(Some(rx))` to wait for an evicted placement to drain
    /// (`rx` closes when it has), or `Err(None)` when no host is eligible. `forced`: the host,
    /// eligible or not.
    fn try_place(
        self: &Arc<Self>,
        id: &str,
        tenant: Option<&str>,
        exclude: &[usize],
        forced: Option<usize>,
    ) -> Result<Lease, Option<watch::Receiver<bool>>> {
        let mut entries = self.entries();
        if let Some(e) = entries.get_mut(id) {
            let stays = match forced {
                Some(f) => e.host == Some(f),
                None => e.host.is_none_or(|h| self.eligible(h, exclude)),
            };
            if !e.evicted && stays {
                e.live += 1;
                return Ok(self.lease(id, e));
            }
            if !e.evicted {
                // Its host turned ineligible between a health report and now (or the cluster
                // recorded another one).
                self.evict(e, MoveReason::HealthCheck);
            }
            return Err(Some(e.evict.subscribe()));
        }
        let (host, key) = if let Some(b) = &self.builtin {
            (None, b.clone())
        } else if let Some(f) = forced {
            let h = self.hosts.get(f).ok_or(None)?;
            (Some(f), h.key.clone())
        } else {
            let candidates = self.hosts.iter().enumerate().filter(|(i, _)| self.eligible(*i, exclude));
            let owner = super::placement::owner(&self.namespace, id, candidates.map(|(i, h)| (i, h.key.as_str())));
            let owner = owner.ok_or(None)?;
            (Some(owner), self.hosts[owner].key.clone())
        };
        let occupancy = ObjectHandle(Arc::new(Mutex::new(Occupancy::new(
            key,
            tenant.map(str::to_string),
            self.idle_window,
            Instant::now(),
        ))));
        let (evict, _) = watch::channel(false);
        let entry = Entry { host, live: 1, evicted: false, claimed: false, evict, occupancy };
        let lease = self.lease(id, &entry);
        entries.insert(id.to_string(), entry);
        self.active.inc();
        self.placements.inc();
        Ok(lease)
    }

    fn lease(self: &Arc<Self>, id: &str, e: &Entry) -> Lease {
        Lease {
            registry: self.clone(),
            id: id.to_string(),
            host: e.host,
            object: e.occupancy.clone(),
            evicted: e.evict.subscribe(),
            connected: false,
            claim: None,
        }
    }

    /// Close every connection of `e` with 1012 and stop giving it new ones.
    fn evict(&self, e: &mut Entry, reason: MoveReason) {
        e.evicted = true;
        let _ = e.evict.send(true);
        e.occupancy.lock().mark_moved();
        self.metrics.object_moves.with_label_values(&[&self.namespace, reason.as_str()]).inc();
    }

    /// Host `host` failed: evict its ids. Returns how many moved.
    fn host_failed(&self, host: usize, reason: MoveReason) -> usize {
        let mut moved = 0;
        for e in self.entries().values_mut() {
            if e.host == Some(host) && !e.evicted {
                self.evict(e, reason);
                moved += 1;
            }
        }
        if let Some(h) = self.hosts.get(host) {
            tracing::warn!(namespace = %self.namespace, host = %h.key, reason = reason.as_str(), moved, "object host failed; its objects move");
        }
        moved
    }

    /// Evict `id` (if it is placed and not evicted yet) for `reason`.
    fn evict_id(&self, id: &str, reason: MoveReason) {
        if let Some(e) = self.entries().get_mut(id).filter(|e| !e.evicted) {
            self.evict(e, reason);
        }
    }

    /// Every occupied object of the namespace, by id (warm: the admin API).
    pub fn describe(&self) -> Vec<ObjectView> {
        let now = Instant::now();
        let mut all: Vec<ObjectView> = self.entries().iter().map(|(id, e)| Self::view_of(id, e, now)).collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// Object `id`, if it is occupied.
    pub fn view(&self, id: &str) -> Option<ObjectView> {
        self.entries().get(id).map(|e| Self::view_of(id, e, Instant::now()))
    }

    fn view_of(id: &str, e: &Entry, now: Instant) -> ObjectView {
        let o = e.occupancy.lock();
        let (since, since_wall) = o.since();
        ObjectView {
            id: id.to_string(),
            host: o.host.clone(),
            leases: e.live,
            since: since_wall,
            occupied: now.saturating_duration_since(since),
            moving: e.evicted,
        }
    }

    /// The health check reports `addr` healthy or not (Pingora calls this on every change).
    pub fn health_changed(&self, addr: SocketAddr, healthy: bool) {
        let Some(i) = self.hosts.iter().position(|h| h.addr == addr) else { return };
        self.hosts[i].healthy.store(healthy, Ordering::Relaxed);
        if healthy {
            *crate::sync::lock(&self.hosts[i].down_until) = None;
        } else {
            self.host_failed(i, MoveReason::HealthCheck);
        }
    }

    /// The last lease of an entry may have gone: drop it and write its record.
    fn release(&self, id: &str) {
        let ended = {
            let mut entries = self.entries();
            match entries.get_mut(id) {
                Some(e) if e.live > 1 => {
                    e.live -= 1;
                    None
                }
                Some(_) => entries.remove(id),
                None => None,
            }
        };
        let Some(entry) = ended else { return };
        self.active.dec();
        let occupancy = entry.occupancy.lock();
        if occupancy.billable() {
            self.usage.write_object(&occupancy.record(&self.namespace, id, Instant::now()));
        }
    }
}

impl crate::cluster::LeaseLost for Registry {
    /// Evict every object held under a claim: its clients get 1012, and it is claimed and
    /// placed anew (on whichever instance wins) once they are gone.
    fn lease_lost(&self) {
        let mut moved = 0;
        for e in self.entries().values_mut().filter(|e| e.claimed && !e.evicted) {
            self.evict(e, MoveReason::ClaimLost);
            moved += 1;
        }
        if moved > 0 {
            tracing::warn!(namespace = %self.namespace, moved, "cluster lease lost: this instance's objects move");
        }
    }
}

/// One connection's hold on an object placement. Dropping it releases the placement.
pub struct Lease {
    registry: Arc<Registry>,
    id: String,
    host: Option<usize>,
    object: ObjectHandle,
    evicted: watch::Receiver<bool>,
    connected: bool,
    /// This instance's claim of the object in the cluster's etcd, held as long as the lease
    /// (the last one dropped ends the claim, after the occupancy's record is written).
    claim: Option<crate::cluster::ClaimGuard>,
}

impl Lease {
    /// The object id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The host's address (`None` for built-in objects).
    pub fn addr(&self) -> Option<SocketAddr> {
        self.host.and_then(|h| self.registry.hosts.get(h)).map(|h| h.addr)
    }

    /// The index of the host, for `place`'s `exclude` list.
    pub fn host_index(&self) -> Option<usize> {
        self.host
    }

    /// Hold `claim` (the cluster's claim of the object) for as long as this lease. The
    /// placement is evicted when the cluster lease is lost (at once if it already was).
    pub fn keep(&mut self, claim: crate::cluster::ClaimGuard) {
        let registry: Arc<dyn crate::cluster::LeaseLost> = self.registry.clone();
        claim.cluster().watch(&registry);
        if let Some(e) = self.registry.entries().get_mut(&self.id) {
            e.claimed = true;
        }
        // Checked after the flag is set: a loss before this is seen here, one after it by
        // `lease_lost`.
        if !claim.current() {
            self.registry.evict_id(&self.id, MoveReason::ClaimLost);
        }
        self.claim = Some(claim);
    }

    /// The test of this instance's claim of the object, when it holds one (in a cluster).
    pub fn claim_check(&self) -> Option<crate::cluster::ClaimCheck> {
        self.claim.as_ref().map(crate::cluster::ClaimGuard::check)
    }

    /// The object's shared accounting.
    pub fn object(&self) -> &ObjectHandle {
        &self.object
    }

    /// A receiver that turns true when the object is evicted from its host.
    pub fn evicted(&self) -> watch::Receiver<bool> {
        self.evicted.clone()
    }

    /// The connection was established (101 sent): it counts in the object's occupancy.
    pub fn connected(&mut self) {
        self.connected = true;
        self.object.lock().connected();
    }

    /// The connection ended having carried `counts` (`[client→object, object→client]`).
    pub fn finish(mut self, counts: &[crate::relay::scanner::DirectionCounts; 2]) {
        if std::mem::take(&mut self.connected) {
            self.object.lock().disconnected(counts);
        }
    }

    /// Connecting to the host failed: mark it down and move its ids. The caller places again
    /// with this host excluded.
    pub fn connect_failed(self) {
        if let Some(h) = self.host {
            if let Some(host) = self.registry.hosts.get(h) {
                *crate::sync::lock(&host.down_until) = Some(Instant::now() + self.registry.down_for);
            }
            self.registry.host_failed(h, MoveReason::ConnectFailed);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if std::mem::take(&mut self.connected) {
            self.object.lock().disconnected(&Default::default());
        }
        self.registry.release(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(hosts: usize) -> (Arc<Registry>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::register(&prometheus::Registry::new()).unwrap();
        let spool = crate::billing::spool::Spool::open(dir.path()).unwrap();
        let usage = Arc::new(UsageLog::new(spool, metrics.clone(), Default::default()));
        let hosts: Vec<(String, SocketAddr)> =
            (0..hosts).map(|i| (format!("h{i}:1"), SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16)))).collect();
        let r = Registry::new("ns", None, &hosts, Duration::from_secs(1), Duration::from_secs(60), usage, metrics);
        (Arc::new(r), dir)
    }

    fn records(r: &Registry, dir: &tempfile::TempDir) -> Vec<serde_json::Value> {
        r.usage.spool().flush();
        let (lines, _) = crate::billing::spool::read_lines(dir.path(), 0, u64::MAX, usize::MAX, usize::MAX).unwrap();
        lines.iter().map(|l| serde_json::from_slice(l).unwrap()).collect()
    }

    const WAIT: Duration = Duration::from_millis(200);

    #[tokio::test]
    async fn live_ids_stay_when_a_better_host_recovers() {
        let (r, _d) = registry(2);
        // Find an id whose rendezvous owner is host 1, then take host 1 down before placing it.
        let id = (0..)
            .map(|k| format!("id{k}"))
            .find(|id| super::super::placement::owner("ns", id, [(0, "h0:1"), (1, "h1:1")]) == Some(1))
            .unwrap();
        r.health_changed(r.hosts[1].addr, false);
        let a = r.place(&id, None, &[], WAIT).await.unwrap();
        assert_eq!(a.host_index(), Some(0));
        r.health_changed(r.hosts[1].addr, true);
        let b = r.place(&id, None, &[], WAIT).await.unwrap();
        assert_eq!(b.host_index(), Some(0), "a live id must not move to a recovered host");
        drop((a, b));
        let c = r.place(&id, None, &[], WAIT).await.unwrap();
        assert_eq!(c.host_index(), Some(1), "an id without connections is placed fresh");
    }

    #[tokio::test]
    async fn failure_evicts_and_new_placement_waits_for_the_drain() {
        let (r, dir) = registry(2);
        let mut a = r.place("x", None, &[], WAIT).await.unwrap();
        a.connected();
        let first = a.host_index().unwrap();
        let mut evicted = a.evicted();
        r.health_changed(r.hosts[first].addr, false);
        evicted.changed().await.unwrap();
        assert!(*evicted.borrow());
        // While `a` is live, the id cannot be placed elsewhere.
        assert_eq!(r.place("x", None, &[], WAIT).await.err(), Some(PlaceError::Moving));
        let r2 = r.clone();
        let waiter =
            tokio::spawn(async move { r2.place("x", None, &[], Duration::from_secs(5)).await.map(|l| l.host_index()) });
        tokio::task::yield_now().await;
        a.finish(&Default::default());
        assert_eq!(waiter.await.unwrap(), Ok(Some(1 - first)));
        let recs = records(&r, &dir);
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0]["moved"], true);
        assert_eq!(recs[0]["connections"], 1);
    }

    #[tokio::test]
    async fn connect_failure_marks_the_host_down() {
        let (r, dir) = registry(2);
        let a = r.place("y", None, &[], WAIT).await.unwrap();
        let bad = a.host_index().unwrap();
        a.connect_failed();
        let b = r.place("y", None, &[], WAIT).await.unwrap();
        assert_eq!(b.host_index(), Some(1 - bad));
        drop(b);
        // Still down for other ids too.
        for k in 0..20 {
            assert_eq!(r.place(&format!("z{k}"), None, &[], WAIT).await.unwrap().host_index(), Some(1 - bad));
        }
        // Never-connected placements are not billed.
        assert!(records(&r, &dir).is_empty());
        r.health_changed(r.hosts[1 - bad].addr, false);
        assert_eq!(r.place("q", None, &[], WAIT).await.err(), Some(PlaceError::NoHost));
    }
}
