//! Claims of host-namespace objects: every instance sends the clients of one id to the one host
//! recorded in etcd, whatever its own health view says.
//!
//! Warm path (once per connection to an object host, in a cluster). The ids of a host namespace
//! are served by the hosts themselves, so every instance connects its clients to the host
//! directly (no peer hop); what must be shared is *which* host. Each instance with connections
//! to an id holds a key `<name>/hosts/<ns>/<id>/<instance>` → `{"host": …}` under its lease, and
//! every such key names the same host:
//! - a claim reads the id's keys; if there are any, it copies their host into its own key, in
//!   one transaction guarded by the `create_revision` of the key it read (still there, so the
//!   host is still current);
//! - if there are none, it records its own choice (rendezvous over the hosts it sees healthy) in
//!   a transaction guarded by "no key under the id's prefix" (an empty range compares as absent),
//!   so of two instances choosing at once, one wins and the other copies it;
//! - the key goes when the instance's last connection to the id ends (guarded by its
//!   `create_revision`), or with its lease.
//!
//! So an id moves to another host only once no instance has a connection to it any more: the
//! single-process rule (`objects::registry`) held across instances. Locally, holders share one
//! key through the same slots as built-in claims (`claims.rs`).

use super::claims::ClaimGuard;
use super::{ClaimError, ClaimResult, Cluster, OP_TIMEOUT};
use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The value of a holder key.
#[derive(Debug, Serialize, Deserialize)]
struct Recorded {
    /// The host serving the id, as written in the namespace's `hosts`.
    host: String,
}

/// A claim of a host-namespace id: the host to connect to, and this connection's hold on it.
#[derive(Debug)]
pub struct HostClaim {
    /// The host recorded for the id (a `hosts` entry of the namespace, as configured).
    pub host: String,
    /// Held for the connection's life (with the object's lease).
    pub guard: ClaimGuard,
}

impl Cluster {
    /// The host that serves `id` of host namespace `namespace`: the one recorded in etcd, or
    /// `choice` (recorded now) when no instance has connections to it. `Ok(None)`: none is
    /// recorded and `choice` is `None` (no host is eligible here).
    pub async fn claim_host(
        self: &Arc<Self>,
        namespace: &str,
        id: &str,
        choice: Option<&str>,
    ) -> Result<Option<HostClaim>, ClaimError> {
        let prefix = format!("{}/hosts/{namespace}/{id}/", self.config.name);
        let key = format!("{prefix}{}", self.config.instance);
        for _ in 0..8 {
            let Some((slot, mut state, generation)) = self.lock_slot(&key).await? else { continue };
            if let (Some(token), Some(host)) = (state.token, state.host.clone()) {
                state.holders += 1;
                self.count(ClaimResult::Mine);
                return Ok(Some(HostClaim {
                    host,
                    guard: ClaimGuard::new(self, key, slot.clone(), token, generation),
                }));
            }
            let found = self.record_host(&prefix, &key, choice).await;
            let claim = match found {
                Ok(Some((token, host, result))) => {
                    self.count(result);
                    (state.token, state.host, state.holders) = (Some(token), Some(host.clone()), 1);
                    return Ok(Some(HostClaim {
                        host,
                        guard: ClaimGuard::new(self, key, slot.clone(), token, generation),
                    }));
                }
                Ok(None) => Ok(None),
                Err(e) => Err(self.failed(e)),
            };
            self.claims.forget(&key, &slot, &state);
            return claim;
        }
        Err(ClaimError::Unavailable("claim slot kept changing".into()))
    }

    /// Read the id's holder keys and add ours with their host (or with `choice` when there
    /// are none): the token (our key's `create_revision`), the host and how it went.
    async fn record_host(
        &self,
        prefix: &str,
        key: &str,
        choice: Option<&str>,
    ) -> Result<Option<(i64, String, ClaimResult)>, ClaimError> {
        let unavailable = |why: String| ClaimError::Unavailable(why);
        let lease = self.lease.load(std::sync::atomic::Ordering::Acquire);
        let Some(mut client) = self.client().filter(|_| lease != 0) else {
            return Err(unavailable("no lease".into()));
        };
        // Bounded: each retry follows a holder that left between the read and the write.
        for _ in 0..4 {
            let get = client.get(prefix, Some(GetOptions::new().with_prefix()));
            let kvs = match tokio::time::timeout(OP_TIMEOUT, get).await {
                Ok(Ok(r)) => r.kvs().to_vec(),
                Ok(Err(e)) => return Err(unavailable(format!("claim: {e}"))),
                Err(_) => return Err(unavailable("claim timed out".into())),
            };
            if let Some(mine) = kvs.iter().find(|kv| kv.key() == key.as_bytes()) {
                // Ours from a release whose delete failed (same lease), or an earlier
                // incarnation's (it goes with that lease).
                if mine.lease() != lease {
                    return Err(ClaimError::Stale);
                }
            }
            let (guard, host, result) = match kvs.first() {
                Some(kv) => {
                    let recorded: Recorded =
                        serde_json::from_slice(kv.value()).map_err(|e| unavailable(format!("bad host record: {e}")))?;
                    let still = Compare::create_revision(kv.key(), CompareOp::Equal, kv.create_revision());
                    (still, recorded.host, ClaimResult::Elsewhere)
                }
                None => {
                    let Some(choice) = choice else { return Ok(None) };
                    let none = Compare::create_revision(prefix, CompareOp::Equal, 0).with_prefix();
                    (none, choice.to_string(), ClaimResult::Created)
                }
            };
            let value = serde_json::to_vec(&Recorded { host: host.clone() }).map_err(|e| unavailable(e.to_string()))?;
            let txn = Txn::new()
                .when([guard])
                .and_then([TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease))), TxnOp::get(key, None)]);
            let response = match tokio::time::timeout(OP_TIMEOUT, client.txn(txn)).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => return Err(unavailable(format!("claim: {e}"))),
                Err(_) => return Err(unavailable("claim timed out".into())),
            };
            if !response.succeeded() {
                continue;
            }
            let token = response.op_responses().into_iter().find_map(|op| match op {
                TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.create_revision()),
                _ => None,
            });
            let Some(token) = token else { return Err(unavailable("claimed key vanished".into())) };
            return Ok(Some((token, host, result)));
        }
        Err(unavailable("the id's holders kept changing".into()))
    }
}
