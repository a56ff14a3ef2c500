//! `ConnObserver`: the one observer of a connection's relay or tap, holding what listens to it:
//! its metric handles, its live-set entry and, on object routes, the object's accounting. The
//! relay defines the `Observer` trait; this is its only implementation.
//!
//! Hot path: `progress` runs once per relay wakeup that moved bytes, with what that wakeup
//! counted. The live-set entry adds it to the connection's counts (the one copy of them: the
//! relay keeps none, and the interim sweeper and the admin API read the entry), and every other
//! listener gets it as it is: the metric counters, the tenant's quota, the object (when a message
//! completed). Warm path: built at the 101; dropped at the end, which closes the connection's
//! share of the active gauge and observes its duration.

use crate::metering::live::Live;
use crate::metering::quota::Tenant;
use crate::metrics::ConnMetrics;
use crate::objects::registry::ObjectHandle;
use crate::relay::report::Party;
use crate::relay::scanner::DirectionCounts;
use crate::relay::{Direction, Observer};
use std::sync::Arc;

/// What listens to one connection while it runs.
pub struct ConnObserver {
    metrics: ConnMetrics,
    live: Arc<Live>,
    /// The object's shared accounting, touched per wakeup that completed a message (relays to
    /// object hosts; built-in objects touch it themselves).
    object: Option<ObjectHandle>,
    /// The tenant's quota counters.
    quota: Option<Arc<Tenant>>,
}

impl ConnObserver {
    /// An observer for a connection that starts now; counts it in the active gauge.
    pub fn new(
        metrics: ConnMetrics,
        live: Arc<Live>,
        object: Option<ObjectHandle>,
        quota: Option<Arc<Tenant>>,
    ) -> ConnObserver {
        metrics.active.inc();
        if let Some(t) = &quota {
            t.opened();
        }
        ConnObserver { metrics, live, object, quota }
    }

    /// Its live-set entry.
    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }

    /// Its route's metric handles.
    pub fn metrics(&self) -> &ConnMetrics {
        &self.metrics
    }
}

impl Observer for ConnObserver {
    fn progress(&mut self, [client, backend]: [&DirectionCounts; 2], at: std::time::Instant) {
        self.live.add([client, backend], at);
        self.metrics.add(Direction::ClientToBackend, client);
        self.metrics.add(Direction::BackendToClient, backend);
        let messages = client.messages + backend.messages;
        if let Some(tenant) = &self.quota {
            tenant.add(messages, client.wire_bytes + backend.wire_bytes);
        }
        if messages != 0 {
            if let Some(object) = &self.object {
                object.touch();
            }
        }
    }

    fn totals(&self) -> [DirectionCounts; 2] {
        self.live.counts()
    }

    fn poll_stop(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<crate::relay::Stop> {
        self.live.poll_stop(cx)
    }

    fn poll_shutdown(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        self.live.poll_shutdown(cx)
    }

    fn poll_push(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Vec<u8>> {
        self.live.poll_pushes(cx, true).map(|pushes| {
            let mut frames = Vec::with_capacity(pushes.iter().map(|p| p.payload.len() + 10).sum());
            for p in pushes {
                frames.extend_from_slice(&crate::relay::frame::encode_data_frame(p.text, &p.payload));
            }
            frames
        })
    }

    fn rtt(&mut self, side: Party, rtt: std::time::Duration) {
        let i = usize::from(side == Party::Backend);
        self.metrics.rtt[i].observe(rtt.as_secs_f64());
        self.live.set_rtt(side, rtt);
    }
}

impl Drop for ConnObserver {
    fn drop(&mut self) {
        if let Some(tenant) = &self.quota {
            tenant.closed();
        }
        self.metrics.active.dec();
        // From the request head, as the stop record's `duration_ms`.
        self.metrics.duration.observe(self.live.meter.started().elapsed().as_secs_f64());
    }
}
