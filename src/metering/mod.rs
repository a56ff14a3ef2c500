//! Metering: the producers of connection records. One `Meter` per connection; its records are
//! `start` (at the 101), `interim` (every `usage.interim_interval`, from one shared sweeper) and
//! `stop` (at the end), each with a sequence number, the cumulative counts so far and an
//! idempotency key (`<connection>:<seq>`); a failed handshake gets one `stop` record through
//! `LiveSet::reject`. Metering writes every connection record itself; the record contract and
//! the log belong to `billing`.
//!
//! Warm path (per connection). A `Meter` holds the identity and clocks of a connection: a
//! monotonic `Instant` for the duration and a wall-clock `SystemTime` only for the record's
//! timestamps (never subtracted from each other). `live.rs` keeps the relayed connections and
//! runs the sweeper; `clock.rs` measures active time; `today.rs` tallies today's usage per tenant
//! for the admin status page; `quota.rs` enforces tenants' quotas and `standing.rs` reports them
//! from the saved file (`weir usage --quotas`, cold).

// Bytes from the network never panic here: every failure is a value (see the module doc).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod clock;
pub mod live;
pub mod quota;
pub mod rejections;
pub mod standing;
pub mod today;

use crate::billing::record::{ConnectionKey, Stamp};
use crate::billing::{CloseUsage, DirectionUsage, Identity, RecordKind, UsageRecord};
use crate::relay::report::RelayReport;
use crate::relay::scanner::DirectionCounts;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Identity and clocks of one connection, from the first byte of its request to its end.
#[derive(Debug)]
pub struct Meter {
    /// When metering started (`relay::mono::nanos`: 8 bytes of every live entry, where an `Instant`
    /// takes 16).
    started: u64,
    /// Who the connection is (with its id, client address and wall-clock start); filled in while
    /// it is routed and connected (`identity_mut`), then shared by every record.
    identity: Arc<Identity>,
    /// Subprotocol the backend chose, if any (its text boxed once more: a thin pointer, 8 bytes
    /// of every live entry where a `Box<str>` takes 16).
    subprotocol: Option<Box<Box<str>>>,
}

/// Why a handshake failed: the one record of a rejected connection.
#[derive(Debug, Clone, Copy)]
pub struct Rejection<'a> {
    /// HTTP status weir answered with (or 101 when the client left during the 101).
    pub status: u16,
    /// The record's `outcome` (a `RejectReason`'s outcome label).
    pub outcome: &'static str,
    /// The record's `reason`: the detail.
    pub reason: &'a str,
}

/// What a connection carried so far: counts per direction and its active time.
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    /// `[client → backend, backend → client]`.
    pub counts: &'a [DirectionCounts; 2],
    /// Time with traffic so far (see `clock::ActiveClock`).
    pub active: Duration,
}

impl Meter {
    /// Start metering a connection from `client` now.
    pub fn start(client: Option<SocketAddr>) -> Meter {
        let identity = Identity::new(uuid::Uuid::now_v7(), client, SystemTime::now());
        Meter { started: crate::relay::mono::now(), identity: Arc::new(identity), subprotocol: None }
    }

    /// Sortable unique id (UUIDv7), also sent to the backend as `X-Weir-Connection-Id`.
    pub fn id(&self) -> uuid::Uuid {
        self.identity.connection_id
    }

    /// The client's address.
    pub fn client(&self) -> Option<SocketAddr> {
        self.identity.client_addr
    }

    /// When metering started (monotonic).
    pub fn started(&self) -> Instant {
        crate::relay::mono::instant(self.started)
    }

    /// The subprotocol the backend chose, if any.
    pub fn subprotocol(&self) -> Option<&str> {
        self.subprotocol.as_deref().map(|s| &**s)
    }

    /// Note the subprotocol the backend chose (`None`: none).
    pub fn set_subprotocol(&mut self, chosen: Option<String>) {
        self.subprotocol = chosen.map(|s| Box::new(s.into_boxed_str()));
    }

    /// Who the connection is.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Fill in who the connection is, while it is routed and connected (before its first
    /// record; no copy is made while the meter is its only holder).
    pub fn identity_mut(&mut self) -> &mut Identity {
        Arc::make_mut(&mut self.identity)
    }

    /// The only record of a connection whose handshake failed.
    fn rejected(&self, r: Rejection<'_>) -> UsageRecord {
        let none = [DirectionCounts::default(); 2];
        let progress = Progress { counts: &none, active: Duration::ZERO };
        let mut record = self.snapshot(RecordKind::Stop, 0, progress);
        record.status = r.status;
        record.outcome = r.outcome.into();
        record.reason = Some(r.reason.to_string());
        record
    }

    /// The `stop` record (sequence `seq`) of a connection that ended as `report` says.
    fn stopped(&self, seq: u64, report: &RelayReport, active: Duration) -> UsageRecord {
        let mut r = self.snapshot(RecordKind::Stop, seq, Progress { counts: &report.counts, active });
        r.close = Some(CloseUsage {
            code: report.close_code,
            initiator: report.initiator.as_str().into(),
            clean: report.clean,
            cause: report.cause.as_str().into(),
        });
        r.outcome = report.outcome.as_str().into();
        r.reason = report.violation.map(|(d, v)| format!("{}: {}", d.as_str(), v.as_str()));
        r
    }

    /// A record of kind `kind` with sequence `seq` and the cumulative `progress` so far.
    fn snapshot(&self, kind: RecordKind, seq: u64, progress: Progress<'_>) -> UsageRecord {
        let duration = self.started().elapsed();
        let now_wall = self.identity.started_at.system_time() + duration;
        let active = progress.active.min(duration);
        let stop = kind == RecordKind::Stop;
        let at = Stamp::new(now_wall);
        UsageRecord {
            record: kind,
            idempotency_key: ConnectionKey { connection_id: self.identity.connection_id, seq },
            seq,
            ended_at: stop.then_some(at),
            at,
            identity: self.identity.clone(),
            duration_ms: duration.as_millis() as u64,
            active_ms: active.as_millis() as u64,
            idle_ms: (duration.as_millis() - active.as_millis()) as u64,
            requests: 1,
            status: 101,
            subprotocol: self.subprotocol().map(str::to_owned),
            client_to_backend: DirectionUsage::from(&progress.counts[0]),
            backend_to_client: DirectionUsage::from(&progress.counts[1]),
            gateway: DirectionUsage::default(),
            close: None,
            outcome: if stop { "".into() } else { "open".into() },
            reason: None,
            units: Default::default(),
        }
    }
}
