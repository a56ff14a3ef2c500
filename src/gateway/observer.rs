//! `ConnObserver`: the one observer of a connection's relay or tap, holding what listens to it:
//! its metric handles, its live-set entry and, on object routes, the object's accounting. The relay defines the `Observer` trait; this is its only implementation.
//!
//! Hot path: `progress` runs once per relay wakeup and returns at once unless wire bytes moved.
//! Then the live set takes the new counts and hands back the ones they replace, and every other
//! listener gets the difference: the metric counters, the tenant's quota, the object (when a
//! message completed). The live-set entry's copy is the one record of what was reported, so the
//! observer keeps no counts of its own beyond the wire total. Warm path: built at the 101;
//! dropped at the end, which closes the connection's share of the active gauge and observes its
//! duration.

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
    /// Wire bytes (both directions) at the last live-set update.
    observed_wire: u64,
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
        ConnObserver { metrics, live, object, quota, observed_wire: 0 }
    }

    /// Its live-set entry.
    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }
}

impl Observer for ConnObserver {
    fn progress(&mut self, [client, backend]: [&DirectionCounts; 2]) {
        // Every count moves with the bytes fed (frames, messages and payload only with wire
        // bytes), so unchanged wire bytes mean nothing to tell.
        let wire = client.wire_bytes + backend.wire_bytes;
        if wire == self.observed_wire {
            return;
        }
        self.observed_wire = wire;
        let [c0, b0] = self.live.observe([client, backend]);
        self.metrics.update(Direction::ClientToBackend, client, &c0);
        self.metrics.update(Direction::BackendToClient, backend, &b0);
        let (messages, before) = (client.messages + backend.messages, c0.messages + b0.messages);
        if let Some(tenant) = &self.quota {
            tenant.add(messages.saturating_sub(before), wire.saturating_sub(c0.wire_bytes + b0.wire_bytes));
        }
        if messages != before {
            if let Some(object) = &self.object {
                object.touch();
            }
        }
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
