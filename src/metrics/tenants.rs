//! Bounded `tenant` label values: tenants come from the config (routes, API keys, quotas, the
//! default tenant) and from credentials (JWT claims, forward auth), so the set is not under a
//! client's control but may be large. The first `MAX_TENANT_LABELS` tenants seen (the config's
//! first, registered at startup and at every reload) get a label of their own; every later one
//! is counted under `other`; a connection without a tenant under `none`.
//!
//! Each label's series handles are made once (`TenantLabels::series`) and kept with the label:
//! a connection's start and end take them with one lookup, instead of hashing its labels into
//! six metric families (issue 14: `with_label_values` was 1.7 % of a handshake cycle's
//! user-space instructions).
//!
//! Warm path: `series` twice per connection (a read lock and a hash lookup).

use prometheus::{IntCounter, IntGauge};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Tenants with series of their own; the rest share `OTHER`.
pub const MAX_TENANT_LABELS: usize = 100;
/// The label of tenants beyond `MAX_TENANT_LABELS`.
pub const OTHER: &str = "other";
/// The label of connections without a tenant.
pub const NONE: &str = "none";

/// One `tenant` label's series: what every connection of the tenant updates.
pub struct TenantSeries {
    /// The label value.
    pub label: Arc<str>,
    /// `weir_tenant_connections_active` (connections).
    pub active: IntGauge,
    /// `weir_tenant_connections_total` (connections).
    pub connections: IntCounter,
    /// `weir_tenant_messages_total` by direction, in `Direction::BOTH`'s order (messages).
    pub messages: [IntCounter; 2],
    /// `weir_tenant_wire_bytes_total` by direction, in `Direction::BOTH`'s order (bytes).
    pub wire_bytes: [IntCounter; 2],
}

/// The tenants that have a label of their own, and every label's series.
#[derive(Default)]
pub struct TenantLabels {
    known: RwLock<Known>,
}

#[derive(Default)]
struct Known {
    /// By label: the tenants' own, `OTHER` and `NONE`.
    series: HashMap<Arc<str>, Arc<TenantSeries>>,
    /// How many tenants have a label of their own (`OTHER` and `NONE` not counted).
    named: usize,
}

impl Known {
    /// The label `tenant` is counted under: `NONE` without a tenant; `OTHER` for a tenant named
    /// `none` or `other` (never the tenantless) and for a new one once `MAX_TENANT_LABELS` have
    /// their own; else its own name.
    fn label<'a>(&self, tenant: Option<&'a str>) -> &'a str {
        match tenant {
            None => NONE,
            Some(t) if t == NONE || t == OTHER => OTHER,
            Some(t) if self.named >= MAX_TENANT_LABELS && !self.series.contains_key(t) => OTHER,
            Some(t) => t,
        }
    }
}

impl TenantLabels {
    /// The series of `tenant`'s label (registering the tenant while there is room), made with
    /// `make` the first time a label is seen.
    pub fn series(&self, tenant: Option<&str>, make: impl FnOnce(Arc<str>) -> TenantSeries) -> Arc<TenantSeries> {
        {
            let known = self.known.read().unwrap_or_else(|p| p.into_inner());
            if let Some(s) = known.series.get(known.label(tenant)) {
                return s.clone();
            }
        }
        let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
        let label = known.label(tenant);
        if let Some(s) = known.series.get(label) {
            return s.clone();
        }
        if label != NONE && label != OTHER {
            known.named += 1;
        }
        let label: Arc<str> = Arc::from(label);
        let series = Arc::new(make(label.clone()));
        known.series.insert(label, series.clone());
        series
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(labels: &TenantLabels, tenant: Option<&str>) -> Arc<TenantSeries> {
        labels.series(tenant, |label| TenantSeries {
            label,
            active: IntGauge::new("a", "a").unwrap(),
            connections: IntCounter::new("c", "c").unwrap(),
            messages: [IntCounter::new("m", "m").unwrap(), IntCounter::new("m", "m").unwrap()],
            wire_bytes: [IntCounter::new("w", "w").unwrap(), IntCounter::new("w", "w").unwrap()],
        })
    }

    #[test]
    fn the_first_tenants_get_labels_and_the_rest_share_other() {
        let l = TenantLabels::default();
        assert_eq!(&*series(&l, None).label, NONE);
        assert_eq!(&*series(&l, Some("acme")).label, "acme");
        for i in 1..MAX_TENANT_LABELS {
            assert_eq!(&*series(&l, Some(&format!("t{i}"))).label, format!("t{i}"));
        }
        assert_eq!(&*series(&l, Some("late")).label, OTHER, "over the cap");
        assert_eq!(&*series(&l, Some("later")).label, OTHER, "over the cap");
        assert_eq!(&*series(&l, Some("acme")).label, "acme", "a known tenant keeps its label");
        assert_eq!(&*series(&l, None).label, NONE);
        assert_eq!(&*series(&TenantLabels::default(), Some("other")).label, OTHER, "no tenant can pose as the bucket");
        assert_eq!(&*series(&TenantLabels::default(), Some("none")).label, OTHER, "nor as the tenantless");
    }

    /// A label's series are made once: every later connection of the tenant updates the same
    /// handles (and so the same counters).
    #[test]
    fn a_label_s_series_are_made_once() {
        let l = TenantLabels::default();
        let a = series(&l, Some("acme"));
        a.connections.inc();
        assert!(Arc::ptr_eq(&a, &series(&l, Some("acme"))));
        assert_eq!(series(&l, Some("acme")).connections.get(), 1);
        let (late, later) = {
            for i in 0..MAX_TENANT_LABELS {
                series(&l, Some(&format!("t{i}")));
            }
            (series(&l, Some("late")), series(&l, Some("later")))
        };
        assert!(Arc::ptr_eq(&late, &later), "every tenant over the cap shares `other`'s series");
        assert!(Arc::ptr_eq(&series(&l, None), &series(&l, None)));
    }
}
