//! Clusters: several weir instances that keep the one-owner-per-object promise together,
//! through etcd (v3 API: leases, transactions).
//!
//! - here: `Cluster`, the etcd client and this instance's health; `Membership`, the background
//!   service that holds the instance's lease (background).
//! - `claims.rs`: object claims: "create `<name>/objects/<ns>/<id>` under my lease if absent,
//!   else read it" in one transaction; the key's `create_revision` is the fencing token; the
//!   key goes when the object's occupancy here ends (warm: once per connection).
//! - `hosts.rs`: claims of host-namespace ids: every instance connects the clients of one id
//!   to the one host recorded in etcd (warm: once per connection).
//! - `peer.rs`: the peer hop's first line, `WEIR-PEER 1 <hmac> <identity>`: built by the
//!   instance a client reached, checked (constant time) by the owner (warm, pure).
//!
//! Membership: one lease per instance (`cluster.lease_ttl`), kept alive every third of its TTL;
//! `<name>/members/<instance>` → its peer address, attached to it. When the keepalive fails,
//! the instance is unhealthy (`weir_cluster_healthy` 0) and object routes answer 503
//! `cluster_unavailable` until it succeeds again. Pool routes never touch etcd.
//!
//! Self-eviction (split brain): the lease is trusted until the send time of the last keepalive
//! etcd acknowledged + TTL − `margin()`; etcd cannot expire it before then. A watchdog (beside the
//! keepalive loop, one timer per process) gives the lease up at that deadline: every claim is
//! forgotten, the generation moves on (`ClaimCheck`s of older claims turn false), and every
//! `LeaseLost` watcher (each namespace's registry) evicts its claimed objects, so their clients
//! get 1012 before another instance can claim them. The keepalive loop then revokes the old
//! lease (if etcd still has it) and joins with a new one. The gateway serves the peer listener
//! (`gateway::peer`) and the registries implement `LeaseLost`; this module imports neither.

// Bytes from the network never panic here: every failure is a value (see the module doc).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod claims;
pub mod hosts;
pub mod peer;

pub use claims::{Claim, ClaimCheck, ClaimError, ClaimGuard, ClaimResult};
pub use hosts::HostClaim;

use crate::metrics::Metrics;
use async_trait::async_trait;
use etcd_client::{Client, ConnectOptions, GetOptions, PutOptions};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

/// Longest time one etcd request may take (claims, keepalives, reads) before it counts as
/// failed: a claim is on a client's upgrade path.
pub const OP_TIMEOUT: Duration = Duration::from_secs(1);

/// What an owner of claimed objects does when this instance loses its lease (a namespace's
/// registry: it evicts every object it holds under a claim, so their clients get 1012). The
/// cluster defines it so that it imports nothing from above.
pub trait LeaseLost: Send + Sync {
    /// Every claim of this instance is gone: stop serving the claimed objects at once.
    fn lease_lost(&self);
}

/// One instance's view of its cluster.
pub struct Cluster {
    config: crate::config::Cluster,
    /// Set once the membership service connected (it owns the client's runtime).
    client: OnceLock<Client>,
    /// The lease this instance's keys are attached to; 0 while it has none.
    lease: AtomicI64,
    /// The lease is held and etcd answered the last keepalive.
    healthy: AtomicBool,
    metrics: Metrics,
    claims: claims::Local,
    /// Counts lease losses: a claim made under an older generation is gone.
    generation: AtomicU64,
    /// The lease may be trusted until then (ms after `epoch`; 0: no lease): the last
    /// acknowledged keepalive's send time + TTL − `margin()`. Past it, the instance evicts its
    /// objects itself, before etcd can expire the lease and let another instance claim them.
    valid_until: AtomicU64,
    epoch: Instant,
    /// Told when the lease is lost (weak: a namespace dropped by a reload goes).
    watchers: Mutex<Vec<Weak<dyn LeaseLost>>>,
}

impl Cluster {
    /// The cluster of `config`; nothing runs until `membership()` is started.
    pub fn new(config: crate::config::Cluster, metrics: Metrics) -> Arc<Cluster> {
        metrics.cluster_healthy.set(0);
        Arc::new(Cluster {
            config,
            client: OnceLock::new(),
            lease: AtomicI64::new(0),
            healthy: AtomicBool::new(false),
            metrics,
            claims: claims::Local::default(),
            generation: AtomicU64::new(0),
            valid_until: AtomicU64::new(0),
            epoch: Instant::now(),
            watchers: Mutex::new(Vec::new()),
        })
    }

    /// How long before the lease's expiry on etcd's side this instance gives its objects up:
    /// a quarter of the TTL, at least 500 ms (clock rates differ, and the eviction itself takes
    /// a moment).
    pub fn margin(&self) -> Duration {
        (self.config.lease_ttl / 4).max(Duration::from_millis(500))
    }

    fn ms_since_epoch(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// The lease is confirmed as of `sent` (when the grant or keepalive that etcd answered was
    /// sent): trust it until `sent` + TTL − margin.
    fn confirmed(&self, sent: Instant) {
        let until = sent + self.config.lease_ttl.saturating_sub(self.margin());
        self.valid_until.store(self.ms_since_epoch(until).max(1), Ordering::Release);
    }

    /// True while this instance may serve the objects it claimed: it holds a lease whose last
    /// confirmation is recent enough that etcd cannot have expired it.
    pub fn owner_valid(&self) -> bool {
        let until = self.valid_until.load(Ordering::Acquire);
        until != 0 && self.ms_since_epoch(Instant::now()) < until
    }

    /// The current lease generation (a claim made under an older one is gone).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Tell `watcher` when the lease is lost (once per watcher; cheap to repeat).
    pub fn watch(&self, watcher: &Arc<dyn LeaseLost>) {
        let mut all = crate::sync::lock(&self.watchers);
        if all.iter().any(|w| std::ptr::addr_eq(w.as_ptr(), Arc::as_ptr(watcher))) {
            return;
        }
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(watcher));
    }

    /// The lease is lost (expired on etcd's side, or not confirmed in time): forget every claim,
    /// then have every watcher evict its claimed objects (1012 to their clients).
    fn lose_lease(&self, why: &str) {
        if self.lease.swap(0, Ordering::AcqRel) == 0 && self.valid_until.load(Ordering::Acquire) == 0 {
            return;
        }
        self.valid_until.store(0, Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
        let forgotten = self.claims.forget_all();
        self.set_healthy(false, why);
        let watchers: Vec<Arc<dyn LeaseLost>> =
            crate::sync::lock(&self.watchers).iter().filter_map(Weak::upgrade).collect();
        for w in watchers {
            w.lease_lost();
        }
        self.metrics.cluster_evictions.inc();
        tracing::warn!(instance = %self.config.instance, why, claims = forgotten, "cluster: lease lost; this instance's objects were evicted (1012) and its claims forgotten");
    }

    /// This instance's name.
    pub fn instance(&self) -> &str {
        &self.config.instance
    }

    /// The cluster's settings.
    pub fn config(&self) -> &crate::config::Cluster {
        &self.config
    }

    /// True while the lease is held and etcd answers: object upgrades may go on.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    fn set_healthy(&self, healthy: bool, why: &str) {
        if self.healthy.swap(healthy, Ordering::AcqRel) != healthy {
            if healthy {
                tracing::info!(instance = %self.config.instance, "cluster: etcd reachable, lease held; object routes open");
            } else {
                tracing::warn!(instance = %self.config.instance, why, "cluster: etcd unreachable; object routes answer 503 cluster_unavailable");
            }
        }
        self.metrics.cluster_healthy.set(i64::from(healthy));
    }

    fn client(&self) -> Option<Client> {
        self.client.get().cloned()
    }

    fn member_key(&self, instance: &str) -> String {
        format!("{}/members/{instance}", self.config.name)
    }

    /// The background service that holds this instance's membership.
    pub fn membership(self: &Arc<Self>) -> Membership {
        Membership(self.clone())
    }
}

/// Holds the instance's lease and member key, keeps the lease alive, counts the members.
pub struct Membership(Arc<Cluster>);

/// What the keepalive loop knows about the lease.
struct Held {
    id: i64,
    /// Last time etcd confirmed the lease.
    confirmed: Instant,
    keeper: Option<(etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream)>,
}

impl Membership {
    /// Grant a lease and publish the member key under it.
    async fn join(&self, client: &mut Client) -> Result<Held, String> {
        let c = &self.0;
        let ttl = c.config.lease_ttl.as_secs() as i64;
        let grant = tokio::time::timeout(OP_TIMEOUT, client.lease_grant(ttl, None)).await;
        let id = match grant {
            Ok(Ok(g)) => g.id(),
            Ok(Err(e)) => return Err(format!("lease grant: {e}")),
            Err(_) => return Err("lease grant timed out".into()),
        };
        let sent = Instant::now();
        let key = c.member_key(&c.config.instance);
        let value = c.config.peer_address.to_string();
        match tokio::time::timeout(OP_TIMEOUT, client.put(key, value, Some(PutOptions::new().with_lease(id)))).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("member key: {e}")),
            Err(_) => return Err("member key timed out".into()),
        }
        c.lease.store(id, Ordering::Release);
        c.confirmed(sent);
        tracing::info!(instance = %c.config.instance, lease = id, ttl, "cluster: joined");
        Ok(Held { id, confirmed: sent, keeper: None })
    }

    /// One keepalive; `Err(true)` when the lease is gone (expired or revoked).
    async fn keep(&self, client: &mut Client, held: &mut Held) -> Result<(), (bool, String)> {
        if held.keeper.is_none() {
            match tokio::time::timeout(OP_TIMEOUT, client.lease_keep_alive(held.id)).await {
                Ok(Ok(pair)) => held.keeper = Some(pair),
                Ok(Err(e)) => return Err((false, format!("keepalive stream: {e}"))),
                Err(_) => return Err((false, "keepalive stream timed out".into())),
            }
        }
        let Some((keeper, stream)) = held.keeper.as_mut() else { return Err((false, "no keepalive stream".into())) };
        let sent = Instant::now();
        let round = async {
            keeper.keep_alive().await?;
            stream.message().await
        };
        match tokio::time::timeout(OP_TIMEOUT, round).await {
            Ok(Ok(Some(r))) if r.ttl() > 0 => {
                // etcd renewed the lease when it got the keepalive, after `sent`.
                held.confirmed = sent;
                if self.0.lease.load(Ordering::Acquire) == held.id {
                    self.0.confirmed(sent);
                }
                Ok(())
            }
            Ok(Ok(Some(_))) => Err((true, "lease expired".into())),
            Ok(Ok(None)) => {
                held.keeper = None;
                Err((false, "keepalive stream ended".into()))
            }
            Ok(Err(e)) => {
                held.keeper = None;
                Err((false, format!("keepalive: {e}")))
            }
            Err(_) => {
                held.keeper = None;
                Err((false, "keepalive timed out".into()))
            }
        }
    }

    /// Join, then keep the lease alive every third of its TTL until shutdown; join anew when it
    /// is lost. Returns the lease held at shutdown.
    async fn keep_alive(&self, client: &mut Client, shutdown: &mut ShutdownWatch) -> Option<Held> {
        let c = &self.0;
        let mut held: Option<Held> = None;
        loop {
            if let Some(h) = held.as_ref().filter(|h| c.lease.load(Ordering::Acquire) != h.id) {
                // The watchdog gave the lease up: revoke it (its keys go at once if etcd
                // answers; else they expire with it) and join anew.
                let _ = tokio::time::timeout(OP_TIMEOUT, client.lease_revoke(h.id)).await;
                held = None;
            }
            match held.as_mut() {
                None => match self.join(client).await {
                    Ok(h) => {
                        held = Some(h);
                        c.set_healthy(true, "");
                    }
                    Err(why) => c.set_healthy(false, &why),
                },
                Some(h) => match self.keep(client, h).await {
                    Ok(()) if c.lease.load(Ordering::Acquire) == h.id => c.set_healthy(true, ""),
                    // Renewed, but the watchdog gave it up meanwhile: revoked above.
                    Ok(()) => continue,
                    Err((expired, why)) => {
                        c.set_healthy(false, &why);
                        if expired || h.confirmed.elapsed() >= c.config.lease_ttl.saturating_sub(c.margin()) {
                            // Every key under the lease is gone (or may be soon): so are this
                            // instance's claims.
                            c.lose_lease(&format!("lease {} lost: {why}", h.id));
                            held = None;
                        }
                    }
                },
            }
            if c.healthy() {
                self.count_members(client).await;
            }
            tokio::select! {
                () = tokio::time::sleep(c.config.lease_ttl / 3) => {}
                _ = shutdown.changed() => return held,
            }
        }
    }

    /// Evict this instance's objects when the lease's deadline passes unconfirmed (never
    /// returns). Split brain is what this prevents: an instance cut off from etcd stops serving
    /// its objects before etcd can expire its lease and let another instance claim them.
    async fn watchdog(&self) {
        let c = &self.0;
        loop {
            let until = c.valid_until.load(Ordering::Acquire);
            let wake = if until == 0 {
                tokio::time::Instant::now() + c.config.lease_ttl / 3
            } else {
                tokio::time::Instant::from_std(c.epoch + Duration::from_millis(until))
            };
            tokio::time::sleep_until(wake).await;
            if until != 0 && c.valid_until.load(Ordering::Acquire) == until && !c.owner_valid() {
                c.lose_lease("no keepalive acknowledged within the lease TTL minus the margin");
            }
        }
    }

    /// Count the live members (`weir_cluster_members`).
    async fn count_members(&self, client: &mut Client) {
        let c = &self.0;
        let prefix = format!("{}/members/", c.config.name);
        let get = client.get(prefix, Some(GetOptions::new().with_prefix().with_count_only()));
        if let Ok(Ok(r)) = tokio::time::timeout(OP_TIMEOUT, get).await {
            c.metrics.cluster_members.set(r.count());
        }
    }
}

#[async_trait]
impl BackgroundService for Membership {
    /// Connect, join, keep the lease alive every third of its TTL until shutdown, then revoke
    /// it (the instance's claims go at once rather than after the TTL).
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let c = &self.0;
        let tick = c.config.lease_ttl / 3;
        let options = ConnectOptions::new().with_connect_timeout(OP_TIMEOUT).with_timeout(OP_TIMEOUT);
        let mut client = loop {
            match Client::connect(&c.config.etcd, Some(options.clone())).await {
                Ok(client) => break client,
                Err(e) => c.set_healthy(false, &format!("connect: {e}")),
            }
            tokio::select! {
                () = tokio::time::sleep(tick) => {}
                _ = shutdown.changed() => return,
            }
        };
        let _ = c.client.set(client.clone());
        // The watchdog runs beside the keepalives (a keepalive round may itself hang for up to
        // `OP_TIMEOUT`): it evicts at the deadline, whatever the loop is waiting for.
        let held = tokio::select! {
            held = self.keep_alive(&mut client, &mut shutdown) => held,
            () = self.watchdog() => None,
        };
        if let Some(h) = held.filter(|h| c.lease.load(Ordering::Acquire) == h.id) {
            let _ = tokio::time::timeout(OP_TIMEOUT, client.lease_revoke(h.id)).await;
            tracing::info!(instance = %c.config.instance, "cluster: left (lease revoked)");
        }
        c.lease.store(0, Ordering::Release);
        c.set_healthy(false, "shutting down");
    }
}
