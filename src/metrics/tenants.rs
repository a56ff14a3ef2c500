//! Bounded `tenant` label values: tenants come from the config (routes, API keys, quotas, the
//! default tenant) and from credentials (JWT claims, forward auth), so the set is not under a
//! client's control but may be large. The first `MAX_TENANT_LABELS` tenants seen (the config's
//! first, registered at startup and at every reload) get a label of their own; every later one
//! is counted under `other`; a connection without a tenant under `none`.
//!
//! Warm path: `label` once per connection (a read lock and a hash lookup).

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

/// Tenants with series of their own; the rest share `OTHER`.
pub const MAX_TENANT_LABELS: usize = 100;
/// The label of tenants beyond `MAX_TENANT_LABELS`.
pub const OTHER: &str = "other";
/// The label of connections without a tenant.
pub const NONE: &str = "none";

/// The tenants that have a label of their own.
#[derive(Default)]
pub struct TenantLabels {
    known: RwLock<HashSet<Arc<str>>>,
}

impl TenantLabels {
    /// The label of `tenant` (registering it while there is room).
    pub fn label(&self, tenant: Option<&str>) -> Arc<str> {
        let Some(t) = tenant else { return Arc::from(NONE) };
        if let Some(k) = self.known.read().unwrap_or_else(|p| p.into_inner()).get(t) {
            return k.clone();
        }
        let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = known.get(t) {
            return k.clone();
        }
        if known.len() >= MAX_TENANT_LABELS || t == OTHER || t == NONE {
            return Arc::from(OTHER);
        }
        let k: Arc<str> = Arc::from(t);
        known.insert(k.clone());
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_tenants_get_labels_and_the_rest_share_other() {
        let l = TenantLabels::default();
        assert_eq!(&*l.label(None), NONE);
        assert_eq!(&*l.label(Some("acme")), "acme");
        for i in 1..MAX_TENANT_LABELS {
            assert_eq!(&*l.label(Some(&format!("t{i}"))), format!("t{i}"));
        }
        assert_eq!(&*l.label(Some("late")), OTHER, "over the cap");
        assert_eq!(&*l.label(Some("acme")), "acme", "a known tenant keeps its label");
        assert_eq!(&*TenantLabels::default().label(Some("other")), OTHER, "no tenant can pose as the bucket");
    }
}
