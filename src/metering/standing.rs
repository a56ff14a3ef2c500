//! `weir usage --quotas`: each tenant's standing against its quotas (limit, used in the current
//! period, share, when the period started and resets, over or not), from the usage file a
//! running (or stopped) weir saved in `data_dir` and the quota rules of the config.
//!
//! Cold path: a command-line report; no process needs to run. The file is what the process last
//! saved (every 5 s and at shutdown), and it is one instance's usage: instances do not share
//! usage, so each one's file is read on its own host. A saved period that is no longer the
//! current one counts as 0 (it reset). Tenants listed: those in the file, those named by a rule,
//! and the one asked for with `--tenant` (a `"*"` rule applies to any tenant).

use super::quota::{self, period_end, period_start, SavedUse};
use crate::billing::report::{csv_field, json_string, table, Format};
use crate::config::{Quota, QuotaOf};
use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

/// One tenant's standing against one quota.
#[derive(Debug, Clone, PartialEq)]
pub struct Standing {
    /// The tenant (`other` for the shared budget of tenants beyond the tracked ones).
    pub tenant: String,
    /// The quota's name (`messages_per_day`, ...).
    pub quota: String,
    /// What it counts.
    pub of: QuotaOf,
    /// The budget per period, in the quota's unit.
    pub limit: u64,
    /// Used in the current period, in the quota's unit.
    pub used: u64,
    /// Start of the current period, Unix seconds (UTC).
    pub start: i64,
    /// When the period ends and the budget resets, Unix seconds (UTC).
    pub resets: i64,
}

impl Standing {
    /// `used / limit` (1 = the whole budget).
    pub fn share(&self) -> f64 {
        self.used as f64 / self.limit.max(1) as f64
    }

    /// Whether new upgrades of the tenant are refused (`used >= limit`).
    pub fn over(&self) -> bool {
        self.used >= self.limit
    }
}

/// The standing at `now` (Unix seconds) of every tenant (or only `tenant`) under `rules`, from
/// the usage file in `data_dir`; the second value is false when there is no file yet (every use
/// 0). Sorted by tenant, then in the rules' order.
pub fn standings(
    rules: &[Quota],
    data_dir: &Path,
    tenant: Option<&str>,
    now: i64,
) -> Result<(Vec<Standing>, bool), String> {
    let saved = quota::read_saved(data_dir)?;
    let found = saved.is_some();
    let saved = saved.unwrap_or_default();
    let mut tenants: BTreeSet<&str> = saved.keys().map(String::as_str).collect();
    tenants.extend(rules.iter().filter_map(|r| r.tenant.as_deref()));
    tenants.extend(tenant);
    let none = HashMap::new();
    let mut out = Vec::new();
    for t in tenants.into_iter().filter(|t| tenant.is_none_or(|only| only == *t)) {
        let uses = saved.get(t).unwrap_or(&none);
        for r in rules.iter().filter(|r| r.tenant.as_deref().is_none_or(|rt| rt == t)) {
            let start = period_start(r.per, now);
            let used = match uses.get(&r.name) {
                Some(SavedUse { start: s, used }) if *s == start => *used,
                _ => 0,
            };
            let (quota, of, limit, resets) = (r.name.clone(), r.of, r.limit, period_end(r.per, start));
            out.push(Standing { tenant: t.to_string(), quota, of, limit, used, start, resets });
        }
    }
    Ok((out, found))
}

/// The unit of what `of` counts, as printed.
fn unit(of: QuotaOf) -> &'static str {
    match of {
        QuotaOf::Messages => "messages",
        QuotaOf::Bytes => "bytes",
        QuotaOf::ConnectionSeconds => "seconds",
        // The quota's name says which unit (`<unit>_per_<period>`).
        QuotaOf::Unit(_) => "units",
    }
}

/// RFC 3339 UTC of Unix seconds `t`.
fn utc(t: i64) -> String {
    humantime::format_rfc3339(UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0))).to_string()
}

const COLUMNS: [&str; 9] = ["tenant", "quota", "unit", "limit", "used", "share", "period_start", "resets_at", "over"];

/// `rows` printed as `format` (JSON: numbers and a boolean `over`; table and CSV: `share` with
/// four decimals, `over` as yes/no).
pub fn render(rows: &[Standing], format: Format) -> String {
    let cells = |s: &Standing| {
        let over = if s.over() { "yes" } else { "no" };
        [&s.tenant, &s.quota, unit(s.of), &s.limit.to_string(), &s.used.to_string()]
            .map(str::to_string)
            .into_iter()
            .chain([format!("{:.4}", s.share()), utc(s.start), utc(s.resets), over.to_string()])
            .collect::<Vec<String>>()
    };
    match format {
        Format::Table => {
            let header: Vec<String> = COLUMNS.iter().map(|c| c.to_string()).collect();
            table(&header, &rows.iter().map(cells).collect::<Vec<_>>(), 3)
        }
        Format::Csv => {
            let mut out = COLUMNS.join(",") + "\n";
            for r in rows {
                out.push_str(&cells(r).iter().map(|c| csv_field(c)).collect::<Vec<_>>().join(","));
                out.push('\n');
            }
            out
        }
        Format::Json => {
            let mut out = String::from("[");
            for (i, s) in rows.iter().enumerate() {
                out.push_str(if i == 0 { "\n  " } else { ",\n  " });
                let _ = write!(
                    out,
                    "{{\"tenant\":{},\"quota\":{},\"unit\":\"{}\",\"limit\":{},\"used\":{},\"share\":{},\"period_start\":\"{}\",\"resets_at\":\"{}\",\"over\":{}}}",
                    json_string(&s.tenant),
                    json_string(&s.quota),
                    unit(s.of),
                    s.limit,
                    s.used,
                    s.share(),
                    utc(s.start),
                    utc(s.resets),
                    s.over()
                );
            }
            out.push_str(if rows.is_empty() { "]\n" } else { "\n]\n" });
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::QuotaPeriod;

    fn rule(tenant: Option<&str>, of: QuotaOf, limit: u64, per: QuotaPeriod, name: &str) -> Quota {
        Quota { name: name.into(), tenant: tenant.map(String::from), of, limit, per }
    }

    #[test]
    fn standings_from_the_saved_file() {
        let dir = tempfile::tempdir().unwrap();
        // 2026-11-29T15:52:28Z
        let now = 1_795_967_548;
        let day = period_start(QuotaPeriod::Day, now);
        let file = format!(
            r#"{{"acme": {{"messages_per_day": {{"start": {day}, "carried": 12}}, "bytes_per_hour": {{"start": 1, "carried": 99}}}},
               "beta": {{"messages_per_day": {{"start": {day}, "carried": 3}}}}}}"#
        );
        let rules = vec![
            rule(None, QuotaOf::Messages, 10, QuotaPeriod::Day, "messages_per_day"),
            rule(Some("acme"), QuotaOf::Bytes, 1000, QuotaPeriod::Hour, "bytes_per_hour"),
            rule(Some("gamma"), QuotaOf::ConnectionSeconds, 60, QuotaPeriod::Month, "connection_seconds_per_month"),
        ];
        let (rows, found) = standings(&rules, dir.path(), None, now).unwrap();
        assert!(!found, "no file yet");
        assert!(rows.iter().all(|r| r.used == 0));
        std::fs::write(dir.path().join(quota::FILE), file).unwrap();
        let (rows, found) = standings(&rules, dir.path(), None, now).unwrap();
        assert!(found);
        let got: Vec<(&str, &str, u64, bool)> =
            rows.iter().map(|r| (r.tenant.as_str(), r.quota.as_str(), r.used, r.over())).collect();
        assert_eq!(
            got,
            [
                ("acme", "messages_per_day", 12, true),
                ("acme", "bytes_per_hour", 0, false), // an earlier hour: reset
                ("beta", "messages_per_day", 3, false),
                ("gamma", "messages_per_day", 0, false),
                ("gamma", "connection_seconds_per_month", 0, false),
            ]
        );
        let (only, _) = standings(&rules, dir.path(), Some("beta"), now).unwrap();
        assert_eq!(only.len(), 1);
        let table = render(&only, Format::Table);
        assert_eq!(
            table,
            "tenant  quota             unit      limit  used   share          period_start             resets_at  over\n\
             beta    messages_per_day  messages     10     3  0.3000  2026-11-29T00:00:00Z  2026-11-30T00:00:00Z    no\n"
        );
        let json: serde_json::Value = serde_json::from_str(&render(&only, Format::Json)).unwrap();
        assert_eq!(json[0]["used"], 3);
        assert_eq!(json[0]["over"], false);
        assert_eq!(json[0]["resets_at"], "2026-11-30T00:00:00Z");
        assert_eq!(
            render(&only, Format::Csv).lines().nth(1),
            Some("beta,messages_per_day,messages,10,3,0.3000,2026-11-29T00:00:00Z,2026-11-30T00:00:00Z,no")
        );
        std::fs::write(dir.path().join(quota::FILE), "not json").unwrap();
        assert!(standings(&rules, dir.path(), None, now).is_err());
    }
}
