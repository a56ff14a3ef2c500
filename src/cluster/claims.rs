//! Object claims in etcd: which instance owns an object id, with a fencing token.
//!
//! Warm path (once per object connection, on both the instance a client reached and the
//! owner). A claim is one transaction: "if `<name>/objects/<ns>/<id>` has no `create_revision`,
//! put `{"instance":…,"peer":…}` under my lease; else get it". The key's `create_revision` is the
//! object's fencing token: it only grows, so a newer owner always has a higher token. The
//! owner deletes the key (compare `create_revision == token`, so it never deletes a successor's
//! key) when the last connection it counts for the object ends.
//!
//! Locally, one slot per key counts the connections that hold the claim (`ClaimGuard`s); the
//! slot's async mutex orders a claim and the release before it, so a connection that arrives
//! while the delete of the previous occupancy is pending keeps the key instead. The map's own
//! mutex is never held across an await.

use super::{Cluster, OP_TIMEOUT};
use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// How a claim went (the `result` label of `weir_object_claims_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimResult {
    /// This instance created the key: it is the new owner.
    Created,
    /// This instance already owned the object.
    Mine,
    /// Another instance owns it: the client is relayed there.
    Elsewhere,
    /// etcd did not answer (or this instance holds no lease).
    Failed,
}

impl ClaimResult {
    /// Every result, for metrics set up at startup.
    pub const ALL: [ClaimResult; 4] =
        [ClaimResult::Created, ClaimResult::Mine, ClaimResult::Elsewhere, ClaimResult::Failed];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ClaimResult::Created => "created",
            ClaimResult::Mine => "mine",
            ClaimResult::Elsewhere => "elsewhere",
            ClaimResult::Failed => "failed",
        }
    }
}

/// The value of an object key.
#[derive(Debug, Serialize, Deserialize)]
struct Owner {
    /// The owner instance.
    instance: String,
    /// Its peer listener, `ip:port`.
    peer: String,
}

/// Who owns an object.
#[derive(Debug)]
pub enum Claim {
    /// This instance: serve it here, holding the guard for the connection's life.
    Mine(ClaimGuard),
    /// Another instance: relay the client to its peer listener.
    Elsewhere {
        /// The owner instance.
        owner: String,
        /// Its peer listener.
        peer: SocketAddr,
        /// The object's fencing token (the key's `create_revision`).
        token: i64,
    },
}

/// Why an object could not be claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimError {
    /// etcd did not answer in time, or this instance holds no lease: 503 `cluster_unavailable`.
    Unavailable(String),
    /// The key names this instance under a lease it no longer holds (an earlier incarnation of
    /// the same name): it goes when that lease expires; 503 `object_moving`.
    Stale,
}

/// One key's local state.
#[derive(Debug, Default)]
pub(super) struct Slot {
    /// The fencing token while this instance owns the key (also while its delete is pending).
    pub(super) token: Option<i64>,
    /// Connections holding the claim.
    pub(super) holders: usize,
    /// The host recorded in the key (host namespaces' claims).
    pub(super) host: Option<String>,
}

pub(super) type SlotRef = Arc<tokio::sync::Mutex<Slot>>;

/// This instance's claims, by key.
#[derive(Default)]
pub(super) struct Local {
    slots: Mutex<HashMap<String, SlotRef>>,
}

impl Local {
    pub(super) fn slot(&self, key: &str) -> SlotRef {
        crate::sync::lock(&self.slots).entry(key.to_string()).or_default().clone()
    }

    pub(super) fn current(&self, key: &str, slot: &SlotRef) -> bool {
        crate::sync::lock(&self.slots).get(key).is_some_and(|s| Arc::ptr_eq(s, slot))
    }

    /// Drop `slot` from the map if it is still the key's and holds nothing.
    pub(super) fn forget(&self, key: &str, slot: &SlotRef, state: &Slot) {
        if state.holders == 0 && state.token.is_none() {
            let mut slots = crate::sync::lock(&self.slots);
            if slots.get(key).is_some_and(|s| Arc::ptr_eq(s, slot)) {
                slots.remove(key);
            }
        }
    }

    /// The lease is gone and every key with it: forget every claim (their guards release
    /// nothing). Returns how many there were.
    pub(super) fn forget_all(&self) -> usize {
        let mut slots = crate::sync::lock(&self.slots);
        let n = slots.len();
        slots.clear();
        n
    }
}

/// One connection's hold on this instance's claim of an object. Dropping the last one deletes
/// the key (guarded by the token), in a task of its own.
pub struct ClaimGuard {
    cluster: Arc<Cluster>,
    key: String,
    slot: SlotRef,
    token: i64,
    /// The lease generation it was made under.
    generation: u64,
}

impl std::fmt::Debug for ClaimGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimGuard").field("key", &self.key).field("token", &self.token).finish()
    }
}

impl ClaimGuard {
    /// A hold on `key`'s claim (its slot's holders already count it).
    pub(super) fn new(cluster: &Arc<Cluster>, key: String, slot: SlotRef, token: i64, generation: u64) -> ClaimGuard {
        ClaimGuard { cluster: cluster.clone(), key, slot, token, generation }
    }

    /// The object's fencing token.
    pub fn token(&self) -> i64 {
        self.token
    }

    /// True while the claim stands: the lease it was made under is still held and confirmed.
    pub fn current(&self) -> bool {
        self.check().current()
    }

    /// A cheap, cloneable test of `current` for the object's sessions.
    pub fn check(&self) -> ClaimCheck {
        ClaimCheck { cluster: self.cluster.clone(), generation: self.generation }
    }

    /// The cluster, to `watch` for the loss of the lease.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }
}

/// Whether a claim still stands, asked by an owned object before it acts on a message (an
/// instance resumed after a pause must not serve an object another instance has claimed since,
/// even in the moment before its watchdog evicts it). Warm path: an atomic load and a clock
/// read.
#[derive(Clone)]
pub struct ClaimCheck {
    cluster: Arc<Cluster>,
    generation: u64,
}

impl ClaimCheck {
    /// True while the lease the claim was made under is held and confirmed recently enough.
    pub fn current(&self) -> bool {
        self.cluster.generation() == self.generation && self.cluster.owner_valid()
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        let (cluster, key, slot, token) =
            (self.cluster.clone(), std::mem::take(&mut self.key), self.slot.clone(), self.token);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { cluster.release(&key, &slot, token).await });
        }
    }
}

impl Cluster {
    fn object_key(&self, namespace: &str, id: &str) -> String {
        format!("{}/objects/{namespace}/{id}", self.config.name)
    }

    pub(super) fn count(&self, r: ClaimResult) {
        self.metrics.object_claims.with_label_values(&[r.as_str()]).inc();
    }

    /// `key`'s slot, locked, with the lease generation of now; `None` when a release removed
    /// the slot meanwhile (look again). Fails without a confirmed lease.
    pub(super) async fn lock_slot(
        &self,
        key: &str,
    ) -> Result<Option<(SlotRef, tokio::sync::OwnedMutexGuard<Slot>, u64)>, ClaimError> {
        if !self.owner_valid() {
            // No lease, or one not confirmed recently enough to be sure etcd still has it.
            return Err(self.failed(ClaimError::Unavailable("lease not confirmed".into())));
        }
        let generation = self.generation();
        let slot = self.claims.slot(key);
        let state = slot.clone().lock_owned().await;
        Ok(self.claims.current(key, &slot).then_some((slot, state, generation)))
    }

    /// Count a failed claim; etcd not answering makes this instance unhealthy.
    pub(super) fn failed(&self, e: ClaimError) -> ClaimError {
        self.count(ClaimResult::Failed);
        if let ClaimError::Unavailable(why) = &e {
            self.set_healthy(false, why);
        }
        e
    }

    /// Find or become the owner of object `id` of `namespace` (a linearizable transaction).
    pub async fn claim(self: &Arc<Self>, namespace: &str, id: &str) -> Result<Claim, ClaimError> {
        let key = self.object_key(namespace, id);
        // Bounded: the slot changes only when a release removes it between two looks.
        for _ in 0..8 {
            let Some((slot, mut state, generation)) = self.lock_slot(&key).await? else { continue };
            if let Some(token) = state.token {
                state.holders += 1;
                self.count(ClaimResult::Mine);
                return Ok(Claim::Mine(ClaimGuard::new(self, key, slot.clone(), token, generation)));
            }
            let result = self.claim_in_etcd(&key).await;
            let claim = match result {
                Ok(Found::Created(token)) | Ok(Found::Mine(token)) => {
                    self.count(if matches!(result, Ok(Found::Created(_))) {
                        ClaimResult::Created
                    } else {
                        ClaimResult::Mine
                    });
                    state.token = Some(token);
                    state.holders = 1;
                    return Ok(Claim::Mine(ClaimGuard::new(self, key, slot.clone(), token, generation)));
                }
                Ok(Found::Elsewhere { owner, peer, token }) => {
                    self.count(ClaimResult::Elsewhere);
                    Ok(Claim::Elsewhere { owner, peer, token })
                }
                Err(e) => Err(self.failed(e)),
            };
            self.claims.forget(&key, &slot, &state);
            return claim;
        }
        Err(ClaimError::Unavailable("claim slot kept changing".into()))
    }

    /// The transaction: create the key under this instance's lease, or read who has it.
    async fn claim_in_etcd(&self, key: &str) -> Result<Found, ClaimError> {
        let unavailable = |why: String| ClaimError::Unavailable(why);
        let lease = self.lease.load(std::sync::atomic::Ordering::Acquire);
        let Some(mut client) = self.client().filter(|_| lease != 0) else {
            return Err(unavailable("no lease".into()));
        };
        let me = Owner { instance: self.config.instance.clone(), peer: self.config.peer_address.to_string() };
        let value = serde_json::to_vec(&me).map_err(|e| unavailable(e.to_string()))?;
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease)))])
            .or_else([TxnOp::get(key, None)]);
        let response = match tokio::time::timeout(OP_TIMEOUT, client.txn(txn)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(unavailable(format!("claim: {e}"))),
            Err(_) => return Err(unavailable("claim timed out".into())),
        };
        if response.succeeded() {
            // The put's revision is the key's create_revision: the token.
            let token = response.header().map(|h| h.revision()).unwrap_or(0);
            return Ok(Found::Created(token));
        }
        let kv = response.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(g) => g.kvs().first().cloned(),
            _ => None,
        });
        let Some(kv) = kv else { return Err(unavailable("claimed key vanished".into())) };
        let owner: Owner =
            serde_json::from_slice(kv.value()).map_err(|e| unavailable(format!("bad owner value: {e}")))?;
        let token = kv.create_revision();
        if owner.instance == self.config.instance {
            // Ours from a release whose delete failed (same lease), or an earlier incarnation's.
            return if kv.lease() == lease { Ok(Found::Mine(token)) } else { Err(ClaimError::Stale) };
        }
        let peer = owner.peer.parse().map_err(|_| unavailable(format!("bad peer address {:?}", owner.peer)))?;
        Ok(Found::Elsewhere { owner: owner.instance, peer, token })
    }

    /// One holder of `key`'s claim (with `token`) is gone: the last one deletes the key.
    async fn release(&self, key: &str, slot: &SlotRef, token: i64) {
        let mut state = slot.lock().await;
        if state.token != Some(token) || state.holders == 0 {
            return;
        }
        state.holders -= 1;
        if state.holders > 0 {
            return;
        }
        if self.claims.current(key, slot) {
            if let Some(mut client) = self.client() {
                let txn = Txn::new()
                    .when([Compare::create_revision(key, CompareOp::Equal, token)])
                    .and_then([TxnOp::delete(key, None)]);
                match tokio::time::timeout(OP_TIMEOUT, client.txn(txn)).await {
                    Ok(Ok(_)) => {}
                    // The key stays until the lease ends; a claim here meanwhile adopts it.
                    Ok(Err(e)) => tracing::warn!(key, error = %e, "cluster: cannot delete an object claim"),
                    Err(_) => tracing::warn!(key, "cluster: deleting an object claim timed out"),
                }
            }
        }
        state.token = None;
        state.host = None;
        self.claims.forget(key, slot, &state);
    }
}

/// What the claim transaction found.
enum Found {
    Created(i64),
    Mine(i64),
    Elsewhere { owner: String, peer: SocketAddr, token: i64 },
}
