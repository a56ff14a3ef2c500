//! Clusters: several weir instances that keep the one-owner-per-object promise together,
//! through etcd (v3 API: leases, transactions).
//!
//! - here: `Cluster`, the etcd client and this instance's health; `Membership`, the background
//!   service that holds the instance's lease (background).
//! - `claims.rs`: object claims: "create `<name>/objects/<ns>/<id>` under my lease if absent,
//!   else read it" in one transaction; the key's `create_revision` is the fencing token; the
//!   key goes when the object's occupancy here ends (warm: once per connection).
//! - `peer.rs`: the peer hop's first line, `WEIR-PEER 1 <hmac> <identity>`: built by the
//!   instance a client reached, checked (constant time) by the owner (warm, pure).
//!
//! Membership: one lease per instance (`cluster.lease_ttl`), kept alive every third of its TTL;
//! `<name>/members/<instance>` → its peer address, attached to it. When the keepalive fails,
//! the instance is unhealthy (`weir_cluster_healthy` 0) and object routes answer 503
//! `cluster_unavailable` until it succeeds again; a lease that expired meanwhile is granted
//! anew (the claims made under it are gone from etcd, and forgotten here). Pool routes never
//! touch etcd. The gateway serves the peer listener (`gateway::peer`); this module imports
//! nothing from it.

// Bytes from the network never panic here: every failure is a value (see the module doc).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod claims;
pub mod peer;

pub use claims::{Claim, ClaimError, ClaimGuard, ClaimResult};

use crate::metrics::Metrics;
use async_trait::async_trait;
use etcd_client::{Client, ConnectOptions, GetOptions, PutOptions};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Longest time one etcd request may take (claims, keepalives, reads) before it counts as
/// failed: a claim is on a client's upgrade path.
pub const OP_TIMEOUT: Duration = Duration::from_secs(1);

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
        })
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
        let key = c.member_key(&c.config.instance);
        let value = c.config.peer_address.to_string();
        match tokio::time::timeout(OP_TIMEOUT, client.put(key, value, Some(PutOptions::new().with_lease(id)))).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("member key: {e}")),
            Err(_) => return Err("member key timed out".into()),
        }
        c.lease.store(id, Ordering::Release);
        tracing::info!(instance = %c.config.instance, lease = id, ttl, "cluster: joined");
        Ok(Held { id, confirmed: Instant::now(), keeper: None })
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
        let round = async {
            keeper.keep_alive().await?;
            stream.message().await
        };
        match tokio::time::timeout(OP_TIMEOUT, round).await {
            Ok(Ok(Some(r))) if r.ttl() > 0 => {
                held.confirmed = Instant::now();
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
        let mut held: Option<Held> = None;
        loop {
            match held.as_mut() {
                None => match self.join(&mut client).await {
                    Ok(h) => {
                        held = Some(h);
                        c.set_healthy(true, "");
                    }
                    Err(why) => c.set_healthy(false, &why),
                },
                Some(h) => match self.keep(&mut client, h).await {
                    Ok(()) => c.set_healthy(true, ""),
                    Err((expired, why)) => {
                        c.set_healthy(false, &why);
                        if expired || h.confirmed.elapsed() >= c.config.lease_ttl {
                            // Every key under the lease is gone: so are this instance's claims.
                            tracing::warn!(instance = %c.config.instance, lease = h.id, "cluster: lease lost; its claims are gone");
                            c.lease.store(0, Ordering::Release);
                            c.claims.forget_all();
                            held = None;
                        }
                    }
                },
            }
            if c.healthy() {
                self.count_members(&mut client).await;
            }
            tokio::select! {
                () = tokio::time::sleep(tick) => {}
                _ = shutdown.changed() => break,
            }
        }
        if let Some(h) = held {
            let _ = tokio::time::timeout(OP_TIMEOUT, client.lease_revoke(h.id)).await;
            tracing::info!(instance = %c.config.instance, "cluster: left (lease revoked)");
        }
        c.lease.store(0, Ordering::Release);
        c.set_healthy(false, "shutting down");
    }
}
