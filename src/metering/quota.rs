//! Quotas (`quotas:`): each tenant's budget of messages, bytes, connection seconds or a pricing
//! unit (`of: unit:<name>`) per UTC hour, day or month, enforced in the data path: a tenant over a budget gets 429 for new
//! upgrades and its open connections are closed with 1008 "quota exceeded" within about a second.
//!
//! Hot path: a connection's observer adds what moved to its tenant's `Tenant` counters (two
//! relaxed atomic adds per wakeup that moved bytes). Background: `QuotaTicker`, once a second,
//! adds connection seconds and (with unit quotas) the growth of each open connection's pricing
//! units since the last tick (`QuotaTicker`; the rest is added from the stop record when the
//! connection ends, `Quotas::connection_ended`, so a tenant's units equal its records'), rolls
//! periods, compares each budget, orders the tenant's open
//! connections closed (through the live set, only while an over-budget tenant has any), sets the
//! utilisation gauge and
//! every few seconds persists the usage of the current periods to `data_dir/quotas.json`, so a
//! restart keeps it (counted per weir instance: instances do not share usage). Warm path:
//! `Quotas::tenant` at the 101, `Quotas::refusal` at admission.
//!
//! Bounded: at most `MAX_TENANTS` tenants are tracked; beyond that, new tenants of a `"*"` quota
//! share one `other` budget. The utilisation gauge has one series per (tenant, quota) for the
//! first `MAX_TENANT_LABELS` tenants; the rest are summed into tenant `other`.

use super::live::LiveSet;
use crate::config::{Quota, QuotaOf, QuotaPeriod};
use crate::relay::close::Close;
use crate::relay::report::Cause;
use crate::relay::Stop;
use crate::sync::lock;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use prometheus::GaugeVec;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Tenants tracked at once.
pub const MAX_TENANTS: usize = 100_000;
/// Tenants with their own utilisation series; the rest are labelled `other`.
pub const MAX_TENANT_LABELS: usize = 100;
/// The shared budget of tenants beyond `MAX_TENANTS`, and their label.
pub const OTHER: &str = "other";
/// The file under `data_dir` that keeps the current periods' usage.
pub const FILE: &str = "quotas.json";
/// Seconds between saves of the usage file.
const SAVE_EVERY: u64 = 5;

/// One tenant's counters, shared by its connections.
#[derive(Debug)]
pub struct Tenant {
    name: Arc<str>,
    messages: AtomicU64,
    bytes: AtomicU64,
    /// Milliseconds of open connections, added by the ticker.
    conn_ms: AtomicU64,
    open: AtomicU64,
    /// Thousandths of each pricing unit a quota counts (indexed like `Quotas::unit_names`).
    unit_milli: Box<[AtomicU64]>,
}

impl Tenant {
    /// Add what a connection moved since it last reported.
    pub fn add(&self, messages: u64, bytes: u64) {
        if messages != 0 {
            self.messages.fetch_add(messages, Ordering::Relaxed);
        }
        if bytes != 0 {
            self.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// A connection of this tenant opened. Call `closed` when it ends.
    pub fn opened(&self) {
        self.open.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection of this tenant ended.
    pub fn closed(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    fn counter(&self, of: QuotaOf) -> u64 {
        match of {
            QuotaOf::Messages => self.messages.load(Ordering::Relaxed),
            QuotaOf::Bytes => self.bytes.load(Ordering::Relaxed),
            QuotaOf::ConnectionSeconds => self.conn_ms.load(Ordering::Relaxed) / 1000,
            QuotaOf::Unit(k) => self.unit_milli.get(k).map_or(0, |u| u.load(Ordering::Relaxed) / 1000),
        }
    }

    /// Add `delta` of unit `k` (a fraction of a thousandth is dropped).
    fn add_unit(&self, k: usize, delta: f64) {
        if let Some(u) = self.unit_milli.get(k) {
            if delta > 0.0 {
                u.fetch_add((delta * 1000.0) as u64, Ordering::Relaxed);
            }
        }
    }
}

/// A budget's state in its current period (ticker only).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
struct Period {
    /// Start of the period, Unix seconds.
    start: i64,
    /// The counter's value when the period started in this process.
    #[serde(skip)]
    base: u64,
    /// Usage carried over from before this process (a restart), in the quota's unit.
    carried: u64,
}

struct Tracked {
    tenant: Arc<Tenant>,
    /// Per rule index (`None`: the rule does not apply to this tenant).
    periods: Vec<Option<Period>>,
    /// Whether this tenant has its own utilisation series.
    labelled: bool,
}

/// Usage of the current periods as saved: tenant → quota name → period.
type Saved = HashMap<String, HashMap<String, Period>>;

/// Every tenant's budgets.
pub struct Quotas {
    rules: Vec<Quota>,
    tracked: Mutex<HashMap<Arc<str>, Tracked>>,
    /// Usage read from the file at startup, handed to tenants as they appear.
    saved: Mutex<Saved>,
    path: Option<PathBuf>,
    utilisation: GaugeVec,
    /// The refusal of each tenant over a budget: (quota name, seconds to its period's end).
    over: Mutex<HashMap<Arc<str>, (String, u64)>>,
    /// The pricing units (`billing.units` names at startup) that `QuotaOf::Unit` indexes.
    unit_names: Vec<String>,
    /// Units a quota counts: whether the ticker computes them.
    counts_units: bool,
    /// Each open connection's units counted so far (indexed like `unit_names`).
    counted: Mutex<HashMap<uuid::Uuid, Vec<f64>>>,
}

impl Quotas {
    /// The budgets of `rules` (their `QuotaOf::Unit` index `unit_names`, the `billing.units`
    /// names), their usage file in `data_dir` (`None`: not kept), exporting utilisation to
    /// `utilisation` {tenant, quota}.
    pub fn new(
        rules: Vec<Quota>,
        unit_names: Vec<String>,
        data_dir: Option<PathBuf>,
        utilisation: GaugeVec,
    ) -> Arc<Quotas> {
        let path = data_dir.map(|d| d.join(FILE));
        let saved = path
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| match serde_json::from_slice::<Saved>(&b) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "quota usage file unreadable; quotas start from zero");
                    None
                }
            })
            .unwrap_or_default();
        let names: Vec<String> = saved.keys().cloned().collect();
        let counts_units = rules.iter().any(|r| matches!(r.of, QuotaOf::Unit(_)));
        let quotas = Arc::new(Quotas {
            rules,
            unit_names,
            counts_units,
            counted: Mutex::default(),
            tracked: Mutex::default(),
            saved: Mutex::new(saved),
            path,
            utilisation,
            over: Mutex::default(),
        });
        // Tenants with usage from before the restart are known at once, so one already over a
        // budget is refused from the first upgrade on, not from the first tick.
        for name in names {
            quotas.tenant(&name);
        }
        quotas.tick(Duration::ZERO, unix_now());
        quotas
    }

    /// True when no quota is configured.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The counters of `tenant`, if a quota applies to it.
    pub fn tenant(&self, tenant: &str) -> Option<Arc<Tenant>> {
        let applies: Vec<bool> = self.rules.iter().map(|r| r.tenant.as_deref().is_none_or(|t| t == tenant)).collect();
        if !applies.contains(&true) {
            return None;
        }
        let mut tracked = lock(&self.tracked);
        if let Some(t) = tracked.get(tenant) {
            return Some(t.tenant.clone());
        }
        let named_only = self.rules.iter().all(|r| r.tenant.is_some());
        let key: Arc<str> =
            if tracked.len() >= MAX_TENANTS && !named_only { Arc::from(OTHER) } else { Arc::from(tenant) };
        let labelled = tracked.len() < MAX_TENANT_LABELS;
        let now = unix_now();
        let saved = lock(&self.saved).remove(&*key).unwrap_or_default();
        let entry = tracked.entry(key.clone()).or_insert_with(|| Tracked {
            tenant: Arc::new(Tenant {
                name: key.clone(),
                messages: AtomicU64::new(0),
                bytes: AtomicU64::new(0),
                conn_ms: AtomicU64::new(0),
                open: AtomicU64::new(0),
                unit_milli: self.unit_names.iter().map(|_| AtomicU64::new(0)).collect(),
            }),
            periods: self
                .rules
                .iter()
                .zip(&applies)
                .map(|(r, &on)| {
                    on.then(|| {
                        let start = period_start(r.per, now);
                        let carried = saved.get(&r.name).filter(|p| p.start == start).map_or(0, |p| p.carried);
                        Period { start, base: 0, carried }
                    })
                })
                .collect(),
            labelled,
        });
        Some(entry.tenant.clone())
    }

    /// Whether a quota counts pricing units (the ticker then computes open connections' units).
    pub fn counts_units(&self) -> bool {
        self.counts_units
    }

    /// Count connection `id`'s units so far (`units`, by name, cumulative) toward `tenant`:
    /// what grew since the last call.
    pub fn count_units(&self, tenant: &Tenant, id: uuid::Uuid, units: &std::collections::BTreeMap<String, f64>) {
        if !self.counts_units {
            return;
        }
        let mut counted = lock(&self.counted);
        let before = counted.entry(id).or_insert_with(|| vec![0.0; self.unit_names.len()]);
        for (k, name) in self.unit_names.iter().enumerate() {
            let now = units.get(name).copied().unwrap_or(0.0);
            if let Some(b) = before.get_mut(k) {
                tenant.add_unit(k, now - *b);
                *b = now.max(*b);
            }
        }
    }

    /// Connection `id` ended with `units` in its stop record: count what is left and forget it.
    pub fn connection_ended(&self, tenant: &Tenant, id: uuid::Uuid, units: &std::collections::BTreeMap<String, f64>) {
        if !self.counts_units {
            return;
        }
        self.count_units(tenant, id, units);
        lock(&self.counted).remove(&id);
    }

    /// The refusal for a new upgrade of `tenant`: `(quota name, seconds to its period's end)`
    /// when it is over a budget.
    pub fn refusal(&self, tenant: &str) -> Option<(String, u64)> {
        lock(&self.over).get(tenant).cloned()
    }

    /// One tick: add `elapsed` connection time, roll periods, compare budgets, export. Returns
    /// the tenants over a budget that still have connections open (to be closed).
    pub fn tick(&self, elapsed: Duration, now: i64) -> Vec<Arc<str>> {
        let mut to_close = Vec::new();
        let mut over = HashMap::new();
        let mut other_use: HashMap<String, f64> = HashMap::new();
        let mut tracked = lock(&self.tracked);
        for t in tracked.values_mut() {
            let open = t.tenant.open.load(Ordering::Relaxed);
            if open > 0 {
                let ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX).saturating_mul(open);
                t.tenant.conn_ms.fetch_add(ms, Ordering::Relaxed);
            }
            let mut is_over = None;
            for (rule, period) in self.rules.iter().zip(t.periods.iter_mut()) {
                let Some(p) = period else { continue };
                let counter = t.tenant.counter(rule.of);
                let start = period_start(rule.per, now);
                if start != p.start {
                    *p = Period { start, base: counter, carried: 0 };
                }
                let used = counter.saturating_sub(p.base).saturating_add(p.carried);
                let share = used as f64 / rule.limit as f64;
                if t.labelled {
                    self.utilisation.with_label_values(&[&*t.tenant.name, rule.name.as_str()]).set(share);
                } else {
                    *other_use.entry(rule.name.clone()).or_default() += share;
                }
                if used >= rule.limit && is_over.is_none() {
                    let left = period_end(rule.per, start).saturating_sub(now).max(1) as u64;
                    is_over = Some((rule.name.clone(), left));
                }
            }
            if let Some(o) = is_over {
                if t.tenant.open.load(Ordering::Relaxed) > 0 {
                    tracing::info!(tenant = %t.tenant.name, quota = %o.0, "tenant over its quota; closing its connections with 1008");
                    to_close.push(t.tenant.name.clone());
                }
                over.insert(t.tenant.name.clone(), o);
            }
        }
        drop(tracked);
        for (quota, share) in other_use {
            self.utilisation.with_label_values(&[OTHER, &quota]).set(share);
        }
        *lock(&self.over) = over;
        to_close
    }

    /// Write the current periods' usage to the usage file (a temporary file renamed over it).
    pub fn save(&self) {
        let Some(path) = &self.path else { return };
        let mut saved: Saved = lock(&self.saved).clone();
        for t in lock(&self.tracked).values() {
            let entry = saved.entry(t.tenant.name.to_string()).or_default();
            for (rule, p) in self.rules.iter().zip(&t.periods) {
                if let Some(p) = p {
                    let used = t.tenant.counter(rule.of).saturating_sub(p.base).saturating_add(p.carried);
                    entry.insert(rule.name.clone(), Period { start: p.start, base: 0, carried: used });
                }
            }
        }
        let tmp = path.with_extension("json.tmp");
        let written = serde_json::to_vec(&saved)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            tracing::warn!(error = %e, file = %path.display(), "cannot save quota usage; a restart would forget it");
        }
    }
}

/// One quota's usage as the usage file holds it (`read_saved`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavedUse {
    /// Start of the period it counts, Unix seconds (UTC).
    pub start: i64,
    /// Usage in that period, in the quota's unit.
    pub used: u64,
}

/// The usage file as read back: tenant → quota name → use.
pub type SavedUses = HashMap<String, HashMap<String, SavedUse>>;

/// The usage file in `data_dir` as the running process last saved it (`weir usage --quotas`);
/// `Ok(None)` when there is none yet.
pub fn read_saved(data_dir: &std::path::Path) -> Result<Option<SavedUses>, String> {
    let path = data_dir.join(FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let saved: Saved =
        serde_json::from_slice(&bytes).map_err(|e| format!("{} is not a quota usage file: {e}", path.display()))?;
    let uses = saved.into_iter().map(|(tenant, quotas)| {
        (tenant, quotas.into_iter().map(|(q, p)| (q, SavedUse { start: p.start, used: p.carried })).collect())
    });
    Ok(Some(uses.collect()))
}

/// The quota ticker: once a second, `Quotas::tick` and the close (1008, cause `quota`) of the
/// open connections of tenants over a budget (a scan of the live set, only while such a tenant
/// has connections open: new ones are refused); every few seconds and at shutdown, `save`.
pub struct QuotaTicker(pub Arc<Quotas>, pub Arc<LiveSet>);

impl QuotaTicker {
    fn tick(&self, elapsed: Duration) {
        if self.0.counts_units() {
            // The units of every open connection of a tenant with a quota, so far.
            let now = Instant::now();
            for l in self.1.all() {
                let Some(t) = l.meter.identity().tenant.as_deref().and_then(|t| self.0.tenant(t)) else { continue };
                self.0.count_units(&t, l.meter.id(), &self.1.units_so_far(&l, now));
            }
        }
        let over = self.0.tick(elapsed, unix_now());
        if over.is_empty() {
            return;
        }
        let close = Close::QuotaExceeded;
        for l in self.1.all() {
            if l.meter.identity().tenant.as_deref().is_some_and(|t| over.iter().any(|o| **o == *t)) {
                let order = (close.code(), close.reason().to_string());
                l.stop(Stop { client: order.clone(), backend: order, cause: Cause::Quota });
            }
        }
    }
}

#[async_trait]
impl BackgroundService for QuotaTicker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut last = Instant::now();
        let mut ticks = 0u64;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => {
                    self.tick(last.elapsed());
                    self.0.save();
                    return;
                }
            }
            let now = Instant::now();
            self.tick(now - last);
            last = now;
            ticks += 1;
            if ticks.is_multiple_of(SAVE_EVERY) {
                let q = self.0.clone();
                let _ = tokio::task::spawn_blocking(move || q.save()).await;
            }
        }
    }
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Start (Unix seconds, UTC) of the period of `per` that holds `t`.
pub fn period_start(per: QuotaPeriod, t: i64) -> i64 {
    match per {
        QuotaPeriod::Hour => t.div_euclid(3600) * 3600,
        QuotaPeriod::Day => t.div_euclid(86_400) * 86_400,
        QuotaPeriod::Month => {
            let (y, m, _) = civil_from_days(t.div_euclid(86_400));
            days_from_civil(y, m, 1) * 86_400
        }
    }
}

/// End (exclusive, Unix seconds) of the period of `per` that starts at `start`.
pub fn period_end(per: QuotaPeriod, start: i64) -> i64 {
    match per {
        QuotaPeriod::Hour => start + 3600,
        QuotaPeriod::Day => start + 86_400,
        QuotaPeriod::Month => {
            let (y, m, _) = civil_from_days(start.div_euclid(86_400));
            let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            days_from_civil(y, m, 1) * 86_400
        }
    }
}

/// (year, month, day) of a day number since 1970-01-01: the records' calendar, here for the
/// quota periods and weir-bench's report.
pub use crate::billing::record::civil_from_days;

/// Day number since 1970-01-01 of a (year, month, day).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauge() -> GaugeVec {
        GaugeVec::new(prometheus::Opts::new("u", "u"), &["tenant", "quota"]).unwrap()
    }

    fn rule(tenant: Option<&str>, of: QuotaOf, limit: u64, per: QuotaPeriod) -> Quota {
        Quota { name: format!("{of:?}_{per:?}").to_lowercase(), tenant: tenant.map(String::from), of, limit, per }
    }

    #[test]
    fn calendar_periods() {
        // 2026-11-29T15:52:28Z
        let t = 1_795_967_548;
        assert_eq!(period_start(QuotaPeriod::Hour, t), 1_795_964_400);
        assert_eq!(period_start(QuotaPeriod::Day, t), 1_795_910_400);
        assert_eq!(period_start(QuotaPeriod::Month, t), 1_793_491_200, "2026-11-01");
        assert_eq!(period_end(QuotaPeriod::Month, 1_793_491_200), 1_796_083_200, "2026-12-01");
        assert_eq!(period_end(QuotaPeriod::Month, 1_796_083_200), 1_798_761_600, "2027-01-01");
        assert_eq!(days_from_civil(2024, 2, 29), 19_782);
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn a_tenant_over_its_budget_is_signalled_refused_and_reset_by_the_next_period() {
        let q =
            Quotas::new(vec![rule(Some("acme"), QuotaOf::Messages, 10, QuotaPeriod::Hour)], Vec::new(), None, gauge());
        assert!(q.tenant("beta").is_none(), "no quota applies");
        let acme = q.tenant("acme").unwrap();
        acme.opened();
        let t0 = period_start(QuotaPeriod::Hour, unix_now());
        acme.add(9, 100);
        assert!(q.tick(Duration::from_secs(1), t0 + 10).is_empty() && q.refusal("acme").is_none());
        acme.add(1, 0);
        let over = q.tick(Duration::from_secs(1), t0 + 20);
        assert_eq!(over.iter().map(|t| t.to_string()).collect::<Vec<_>>(), ["acme"], "its open connection is to close");
        assert_eq!(q.refusal("acme"), Some(("messages_hour".to_string(), 3580)));
        acme.closed();
        assert!(q.tick(Duration::from_secs(1), t0 + 30).is_empty(), "nothing left to close");
        // The next hour starts from zero.
        assert!(q.tick(Duration::from_secs(1), t0 + 3600).is_empty() && q.refusal("acme").is_none());
    }

    #[test]
    fn connection_seconds_and_a_restart_keep_the_period_usage() {
        let dir = tempfile::tempdir().unwrap();
        let rules = || vec![rule(None, QuotaOf::ConnectionSeconds, 100, QuotaPeriod::Day)];
        let q = Quotas::new(rules(), Vec::new(), Some(dir.path().to_path_buf()), gauge());
        let t = q.tenant("acme").unwrap();
        t.opened();
        t.opened();
        let now = unix_now();
        q.tick(Duration::from_secs(30), now);
        q.save();
        let again = Quotas::new(rules(), Vec::new(), Some(dir.path().to_path_buf()), gauge());
        let t2 = again.tenant("acme").unwrap();
        t2.opened();
        again.tick(Duration::from_secs(40), now);
        assert_eq!(again.refusal("acme").map(|(q, _)| q), Some("connectionseconds_day".to_string()), "60 + 40 ≥ 100");
    }
    #[test]
    fn unit_quotas_count_open_connections_growth_and_the_rest_at_the_end() {
        let rule = Quota {
            name: "credits_per_day".into(),
            tenant: Some("acme".into()),
            of: QuotaOf::Unit(1),
            limit: 10,
            per: QuotaPeriod::Day,
        };
        let q = Quotas::new(vec![rule], vec!["other_unit".into(), "credits".into()], None, gauge());
        assert!(q.counts_units());
        let t = q.tenant("acme").unwrap();
        let id = uuid::Uuid::now_v7();
        let units = |c: f64| [("credits".to_string(), c), ("other_unit".to_string(), 100.0)].into_iter().collect();
        q.count_units(&t, id, &units(4.5));
        q.count_units(&t, id, &units(6.0));
        assert_eq!(t.counter(QuotaOf::Unit(1)), 6, "growth since the last count, not the total twice");
        assert!(q.tick(Duration::ZERO, unix_now()).is_empty() && q.refusal("acme").is_none());
        q.connection_ended(&t, id, &units(10.25));
        assert_eq!(t.counter(QuotaOf::Unit(1)), 10);
        assert!(lock(&q.counted).is_empty(), "an ended connection is forgotten");
        q.tick(Duration::ZERO, unix_now());
        assert_eq!(q.refusal("acme").map(|r| r.0), Some("credits_per_day".into()));
    }
}
