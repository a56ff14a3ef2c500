//! `weir usage`: usage totals by tenant, route, object or UTC day over a time range, read from
//! the file sink (the file and its rotated siblings) or the PostgreSQL sink (the `body` column of
//! its table). Both sources give the same totals: they are reduced to the same records first.
//!
//! Cold path: a command-line tool that holds the records it needs in memory.
//!
//! # Semantics
//! - Connection records (`start`, `interim`, `stop`) are read, duplicates (the same
//!   `idempotency_key`) are dropped, and the rest grouped by `connection_id` and ordered by
//!   `seq`. Object records are not summed: their time and messages are their connections'.
//! - A connection's usage in `[from, to)` is the cumulative counters of its last record with
//!   `at < to` minus those of its last record with `at < from` (zero if it has none). Usage thus
//!   lands in the range in which a record reported it: precision is one
//!   `usage.interim_interval`, and a connection open for three days is billed on each day from
//!   its interim records.
//! - `--by day` cuts `[from, to)` at UTC midnights and applies the same rule to each day, so the
//!   days add up to the whole range (except `connections`, counted in every day it appears in).
//!   Without `--from` / `--to` the range starts at the UTC midnight before the first record and
//!   ends at the one after the last (for `--by day`), or is unbounded.
//! - `connections`: established connections (status 101) with at least one record in the range;
//!   `rejected`: failed handshakes (a lone `stop` with status ≠ 101) in the range. These carry no
//!   usage; a group with only rejections is listed with `connections` 0.
//! - Groups: the records' `tenant`, `route` or `object` (`namespace/id`), `-` when null; a group
//!   without a record in the range is not listed. Rows are sorted by group.
//! - A line of the file sink that is not a usage record (a fragment, junk, an unknown kind) is
//!   skipped and reported (`Skipped`: how many, and where the first ones are), not fatal: the
//!   totals are those of the records that could be read.
//! - Columns: `connections`, `rejected`, `connection_seconds` (`duration_ms`), `active_seconds`,
//!   `idle_seconds` (three decimals), `messages_in` / `messages_out` (client → backend, backend →
//!   client messages), `bytes_in` / `bytes_out` (payload bytes, same directions), then one
//!   `units.<name>` per unit found in the records' `units` (up to six decimals).

use super::record::ObjectRef;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One UTC day, milliseconds.
pub const DAY_MS: i64 = 86_400_000;
/// Longest time to connect to PostgreSQL.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What totals are grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    /// The records' `tenant`.
    Tenant,
    /// The records' `route`.
    Route,
    /// The records' `object`, as `namespace/id`.
    Object,
    /// UTC day (`YYYY-MM-DD`) of the part of the range.
    Day,
}

impl By {
    /// The name of the group column.
    pub fn as_str(self) -> &'static str {
        match self {
            By::Tenant => "tenant",
            By::Route => "route",
            By::Object => "object",
            By::Day => "day",
        }
    }
}

impl FromStr for By {
    type Err = String;
    fn from_str(s: &str) -> Result<By, String> {
        match s {
            "tenant" => Ok(By::Tenant),
            "route" => Ok(By::Route),
            "object" => Ok(By::Object),
            "day" => Ok(By::Day),
            _ => Err(format!("`{s}` is not a grouping; use tenant, route, object or day")),
        }
    }
}

/// How totals are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Fixed-width columns with a header row.
    Table,
    /// CSV (RFC 4180) with a header row.
    Csv,
    /// A JSON array with one object per group.
    Json,
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Format, String> {
        match s {
            "table" => Ok(Format::Table),
            "csv" => Ok(Format::Csv),
            "json" => Ok(Format::Json),
            _ => Err(format!("`{s}` is not an output format; use table, csv or json")),
        }
    }
}

/// A time range `[from, to)` in milliseconds since the Unix epoch; `None` is unbounded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Range {
    /// First millisecond in the range.
    pub from: Option<i64>,
    /// First millisecond after the range.
    pub to: Option<i64>,
}

impl Range {
    fn contains(&self, at: i64) -> bool {
        self.from.is_none_or(|f| at >= f) && self.to.is_none_or(|t| at < t)
    }
}

/// Where the records are read from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A file sink's path (its rotated siblings `<path>.<time>` are read too).
    File(PathBuf),
    /// A PostgreSQL sink: connection string and table.
    Postgres {
        /// libpq-style connection string or `postgresql://` URL.
        url: String,
        /// The sink's table.
        table: String,
    },
}

/// Cumulative counters of a connection record, or the difference of two.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    /// Lifetime, milliseconds.
    pub duration_ms: u64,
    /// Active time, milliseconds.
    pub active_ms: u64,
    /// Idle time, milliseconds.
    pub idle_ms: u64,
    /// Data messages client → backend.
    pub messages_in: u64,
    /// Data messages backend → client.
    pub messages_out: u64,
    /// Payload bytes client → backend.
    pub bytes_in: u64,
    /// Payload bytes backend → client.
    pub bytes_out: u64,
    /// Billable units by name (unit-defined amounts).
    pub units: BTreeMap<String, f64>,
}

impl Counters {
    /// `self - earlier`, field by field (counters never go down; a unit missing is 0).
    fn minus(&self, earlier: &Counters) -> Counters {
        let mut units = BTreeMap::new();
        for name in self.units.keys().chain(earlier.units.keys()) {
            let now = self.units.get(name).copied().unwrap_or(0.0);
            let before = earlier.units.get(name).copied().unwrap_or(0.0);
            units.insert(name.clone(), now - before);
        }
        Counters {
            duration_ms: self.duration_ms.saturating_sub(earlier.duration_ms),
            active_ms: self.active_ms.saturating_sub(earlier.active_ms),
            idle_ms: self.idle_ms.saturating_sub(earlier.idle_ms),
            messages_in: self.messages_in.saturating_sub(earlier.messages_in),
            messages_out: self.messages_out.saturating_sub(earlier.messages_out),
            bytes_in: self.bytes_in.saturating_sub(earlier.bytes_in),
            bytes_out: self.bytes_out.saturating_sub(earlier.bytes_out),
            units,
        }
    }

    fn add(&mut self, d: &Counters) {
        self.duration_ms += d.duration_ms;
        self.active_ms += d.active_ms;
        self.idle_ms += d.idle_ms;
        self.messages_in += d.messages_in;
        self.messages_out += d.messages_out;
        self.bytes_in += d.bytes_in;
        self.bytes_out += d.bytes_out;
        for (name, v) in &d.units {
            *self.units.entry(name.clone()).or_insert(0.0) += v;
        }
    }
}

/// One connection record, reduced to what reports need.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// `<connection_id>:<seq>`.
    pub key: String,
    /// The connection.
    pub connection_id: String,
    /// Position in the connection's records (0 = `start`, or the lone `stop` of a rejection).
    pub seq: u64,
    /// When the record was made, milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// The upgrade got a 101 (false for a failed handshake).
    pub established: bool,
    /// Tenant, if any.
    pub tenant: Option<String>,
    /// Route, if any.
    pub route: Option<String>,
    /// Object as `namespace/id`, if any.
    pub object: Option<String>,
    /// Cumulative counters so far.
    pub counters: Counters,
}

#[derive(Deserialize)]
struct RawRecord {
    record: String,
    idempotency_key: Option<String>,
    connection_id: Option<String>,
    #[serde(default)]
    seq: u64,
    at: Option<String>,
    status: Option<u16>,
    tenant: Option<String>,
    route: Option<String>,
    object: Option<ObjectRef>,
    #[serde(default)]
    duration_ms: u64,
    #[serde(default)]
    active_ms: u64,
    #[serde(default)]
    idle_ms: u64,
    #[serde(default)]
    client_to_backend: RawDirection,
    #[serde(default)]
    backend_to_client: RawDirection,
    #[serde(default)]
    units: BTreeMap<String, f64>,
}

#[derive(Deserialize, Default)]
struct RawDirection {
    #[serde(default)]
    messages: u64,
    #[serde(default)]
    payload_bytes: u64,
}

/// Parse one record: `Ok(None)` for an object or rejection-summary record (no connection to
/// total), an error naming what is wrong otherwise.
pub fn parse_record(line: &[u8]) -> Result<Option<Point>, String> {
    let r: RawRecord = serde_json::from_slice(line).map_err(|e| format!("not a usage record: {e}"))?;
    match r.record.as_str() {
        "start" | "interim" | "stop" => {}
        "object" | "rejections" => return Ok(None),
        other => {
            return Err(format!(
            "record kind `{other}` is not start, interim, stop, object or rejections (was it written by an older weir?)"
        ))
        }
    }
    let key = r.idempotency_key.ok_or("the record has no `idempotency_key`")?;
    let connection_id = r.connection_id.ok_or("the record has no `connection_id`")?;
    let at = r.at.ok_or("the record has no `at`")?;
    let at_ms = parse_time(&at).map_err(|e| format!("`at`: {e}"))?;
    Ok(Some(Point {
        key,
        connection_id,
        seq: r.seq,
        at_ms,
        established: r.status.is_none_or(|s| s == 101),
        tenant: r.tenant,
        route: r.route,
        object: r.object.map(|o| format!("{}/{}", o.namespace, o.id)),
        counters: Counters {
            duration_ms: r.duration_ms,
            active_ms: r.active_ms,
            idle_ms: r.idle_ms,
            messages_in: r.client_to_backend.messages,
            messages_out: r.backend_to_client.messages,
            bytes_in: r.client_to_backend.payload_bytes,
            bytes_out: r.backend_to_client.payload_bytes,
            units: r.units,
        },
    }))
}

/// An RFC 3339 UTC time (`2026-11-22T14:05:06.123Z`, `Z` optional) or a date (`2026-11-22`,
/// midnight UTC) → milliseconds since the Unix epoch.
pub fn parse_time(s: &str) -> Result<i64, String> {
    let full = if s.len() == 10 { format!("{s}T00:00:00Z") } else { s.to_string() };
    let t = humantime::parse_rfc3339_weak(&full).map_err(|e| {
        format!("`{s}` is not an RFC 3339 UTC time ({e}); write e.g. 2026-11-22T00:00:00Z or 2026-11-22")
    })?;
    let ms = t.duration_since(UNIX_EPOCH).map_err(|_| format!("`{s}` is before 1970"))?.as_millis();
    i64::try_from(ms).map_err(|_| format!("`{s}` is too far in the future"))
}

fn system_time(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// `YYYY-MM-DD` of the UTC day holding `ms`.
pub fn day_label(ms: i64) -> String {
    let text = humantime::format_rfc3339(system_time(ms.div_euclid(DAY_MS) * DAY_MS)).to_string();
    text.get(..10).unwrap_or(&text).to_string()
}

/// How many malformed lines `Skipped` describes one by one.
pub const SKIPPED_SHOWN: usize = 10;

/// Lines of a file sink that are not usage records, left out of the totals.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Skipped {
    /// How many lines were skipped.
    pub count: u64,
    /// The first `SKIPPED_SHOWN` of them, as `file:line: reason`.
    pub first: Vec<String>,
}

impl Skipped {
    fn add(&mut self, what: String) {
        self.count += 1;
        if self.first.len() < SKIPPED_SHOWN {
            self.first.push(what);
        }
    }
}

/// Read every connection record of the file sink at `path` (rotated siblings first); lines that
/// are not usage records are skipped and described in `Skipped`.
pub fn load_file(path: &Path) -> Result<(Vec<Point>, Skipped), String> {
    let mut points = Vec::new();
    let mut skipped = Skipped::default();
    let mut found = false;
    for file in super::sinks::file::files(path) {
        let f = match std::fs::File::open(&file) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("{}: cannot open: {e}", file.display())),
        };
        found = true;
        for (n, line) in BufReader::new(f).split(b'\n').enumerate() {
            let line = line.map_err(|e| format!("{}: cannot read: {e}", file.display()))?;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match parse_record(&line) {
                Ok(parsed) => points.extend(parsed),
                Err(e) => skipped.add(format!("{}:{}: {e}", file.display(), n + 1)),
            }
        }
    }
    if !found {
        return Err(format!(
            "{}: no such file (nor rotated {0}.*); pass the file sink's `path` (usage.sinks[].path or usage.file)",
            path.display()
        ));
    }
    Ok((points, skipped))
}

/// Read the connection records `range` needs from the PostgreSQL sink's `table` at `url`: those
/// with `at < to` of connections with a record in `range`.
pub async fn load_postgres(url: &str, table: &str, range: Range) -> Result<Vec<Point>, String> {
    if table.is_empty()
        || !table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        || table.starts_with(|c: char| c.is_ascii_digit())
    {
        return Err(format!(
            "--table `{table}` must be a plain SQL identifier (letters, digits and `_`), like the sink's `table`"
        ));
    }
    let (client, connection) =
        tokio::time::timeout(CONNECT_TIMEOUT, tokio_postgres::connect(url, tokio_postgres::NoTls))
            .await
            .map_err(|_| format!("cannot connect to PostgreSQL within {CONNECT_TIMEOUT:?}; check --postgres"))?
            .map_err(|e| format!("cannot connect to PostgreSQL: {}; check --postgres", pg_error(&e)))?;
    let conn = tokio::spawn(connection);
    let kinds = "record IN ('start', 'interim', 'stop')";
    let mut params: Vec<SystemTime> = Vec::new();
    let mut outer = vec![kinds.to_string()];
    let mut inner = vec![kinds.to_string()];
    if let Some(to) = range.to {
        params.push(system_time(to));
        outer.push(format!("at < ${}", params.len()));
        inner.push(format!("at < ${}", params.len()));
    }
    if let Some(from) = range.from {
        params.push(system_time(from));
        inner.push(format!("at >= ${}", params.len()));
        outer.push(format!("connection_id IN (SELECT connection_id FROM {table} WHERE {})", inner.join(" AND ")));
    }
    let sql = format!("SELECT body::text FROM {table} WHERE {}", outer.join(" AND "));
    let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params.iter().map(|p| p as _).collect();
    let rows = client.query(&sql, &refs).await.map_err(|e| {
        if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) {
            format!("table `{table}` does not exist in this database; pass the postgres sink's table with --table")
        } else {
            format!("cannot read table `{table}`: {}", pg_error(&e))
        }
    })?;
    let mut points = Vec::with_capacity(rows.len());
    for row in rows {
        let body: String =
            row.try_get(0).map_err(|e| format!("table `{table}`: `body` is not readable as text: {e}"))?;
        points.extend(parse_record(body.as_bytes()).map_err(|e| format!("table `{table}`: {e}: {body}"))?);
    }
    drop(client);
    conn.abort();
    Ok(points)
}

/// A PostgreSQL error with its causes (the server's message, or the I/O error under "error
/// connecting to server").
fn pg_error(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return db.message().to_string();
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

/// Totals of one group.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row {
    /// The group: tenant, route, `namespace/id`, day, or `-`.
    pub group: String,
    /// Established connections with a record in the range.
    pub connections: u64,
    /// Failed handshakes in the range.
    pub rejected: u64,
    /// Usage in the range, summed over the group's connections.
    pub usage: Counters,
}

/// The parts of `[from, to)` totals are computed over: the whole, or one per UTC day.
fn intervals(from: i64, to: i64, by: By) -> Vec<(i64, i64)> {
    if by != By::Day {
        return vec![(from, to)];
    }
    let mut out = Vec::new();
    let mut a = from;
    while a < to {
        let b = (a.div_euclid(DAY_MS) + 1).saturating_mul(DAY_MS).min(to);
        out.push((a, b));
        a = b;
    }
    out
}

/// The cumulative counters of the last record (by `seq`) made before `t`; zero if none.
fn before(records: &[Point], t: i64) -> Option<&Counters> {
    records.iter().filter(|p| p.at_ms < t).max_by_key(|p| p.seq).map(|p| &p.counters)
}

/// Usage totals of `points` in `range`, by `by` (see the module doc for the rules).
pub fn totals(points: Vec<Point>, range: Range, by: By) -> Result<Vec<Row>, String> {
    if let (Some(f), Some(t)) = (range.from, range.to) {
        if f >= t {
            return Err("--from must be earlier than --to".into());
        }
    }
    let mut keys = BTreeSet::new();
    let mut connections: BTreeMap<String, Vec<Point>> = BTreeMap::new();
    for p in points {
        if keys.insert(p.key.clone()) {
            connections.entry(p.connection_id.clone()).or_default().push(p);
        }
    }
    let in_range = || connections.values().flatten().map(|p| p.at_ms).filter(|at| range.contains(*at));
    let (Some(first), Some(last)) = (in_range().min(), in_range().max()) else {
        return Ok(Vec::new());
    };
    let (from, to) = match by {
        By::Day => (
            range.from.unwrap_or(first.div_euclid(DAY_MS) * DAY_MS),
            range.to.unwrap_or((last.div_euclid(DAY_MS) + 1) * DAY_MS),
        ),
        _ => (range.from.unwrap_or(i64::MIN), range.to.unwrap_or(i64::MAX)),
    };
    let parts = intervals(from, to, by);
    let zero = Counters::default();
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    for records in connections.values_mut() {
        records.sort_by_key(|p| p.seq);
        let Some(latest) = records.last() else { continue };
        let label = match by {
            By::Tenant => latest.tenant.clone(),
            By::Route => latest.route.clone(),
            By::Object => latest.object.clone(),
            By::Day => None,
        };
        let established = latest.established;
        // The parts holding at least one of this connection's records, in order.
        let touched: BTreeSet<usize> = records
            .iter()
            .filter(|p| p.at_ms >= from && p.at_ms < to)
            .map(|p| parts.partition_point(|(a, _)| *a <= p.at_ms).saturating_sub(1))
            .collect();
        for i in touched {
            let Some(&(a, b)) = parts.get(i) else { continue };
            let group = match by {
                By::Day => day_label(a),
                _ => label.clone().unwrap_or_else(|| "-".into()),
            };
            let row = rows.entry(group.clone()).or_insert_with(|| Row { group, ..Row::default() });
            if established {
                row.connections += 1;
            } else {
                row.rejected += 1;
            }
            let end = before(records, b).unwrap_or(&zero);
            let start = before(records, a).unwrap_or(&zero);
            row.usage.add(&end.minus(start));
        }
    }
    Ok(rows.into_values().collect())
}

/// Read `source` and compute the totals of `range` by `by`, with the lines skipped because they
/// are not usage records (a file sink's; none for PostgreSQL, whose bodies are `jsonb`).
pub fn report(source: &Source, range: Range, by: By) -> Result<(Vec<Row>, Skipped), String> {
    let (points, skipped) = match source {
        Source::File(path) => load_file(path)?,
        Source::Postgres { url, table } => (
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start a runtime for the PostgreSQL client: {e}"))?
                .block_on(load_postgres(url, table, range))?,
            Skipped::default(),
        ),
    };
    Ok((totals(points, range, by)?, skipped))
}

/// Milliseconds as seconds with three decimals.
fn seconds(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// A unit amount with up to six decimals, trailing zeros cut (`1.5`, `2`, `0`).
fn amount(v: f64) -> String {
    if !v.is_finite() {
        return "0".into();
    }
    let s = format!("{v:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" || s.is_empty() {
        "0".into()
    } else {
        s.to_string()
    }
}

/// The unit names across `rows`, sorted.
fn unit_names(rows: &[Row]) -> Vec<String> {
    rows.iter().flat_map(|r| r.usage.units.keys().cloned()).collect::<BTreeSet<_>>().into_iter().collect()
}

/// Column headers after the group column.
const COLUMNS: [&str; 9] = [
    "connections",
    "rejected",
    "connection_seconds",
    "active_seconds",
    "idle_seconds",
    "messages_in",
    "messages_out",
    "bytes_in",
    "bytes_out",
];

/// The cells of `row` after the group column: `COLUMNS`, then one per unit in `units`.
fn cells(row: &Row, units: &[String]) -> Vec<String> {
    let u = &row.usage;
    let mut out = vec![
        row.connections.to_string(),
        row.rejected.to_string(),
        seconds(u.duration_ms),
        seconds(u.active_ms),
        seconds(u.idle_ms),
        u.messages_in.to_string(),
        u.messages_out.to_string(),
        u.bytes_in.to_string(),
        u.bytes_out.to_string(),
    ];
    out.extend(units.iter().map(|n| amount(u.units.get(n).copied().unwrap_or(0.0))));
    out
}

/// `rows` printed as `format`, with `by` naming the group column.
pub fn render(rows: &[Row], by: By, format: Format) -> String {
    let units = unit_names(rows);
    let mut header: Vec<String> = vec![by.as_str().to_string()];
    header.extend(COLUMNS.iter().map(|c| c.to_string()));
    header.extend(units.iter().map(|n| format!("units.{n}")));
    let mut out = String::new();
    match format {
        Format::Table => {
            let body: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    let mut line = vec![r.group.clone()];
                    line.extend(cells(r, &units));
                    line
                })
                .collect();
            out = table(&header, &body, 1);
        }
        Format::Csv => {
            out.push_str(&header.iter().map(|h| csv_field(h)).collect::<Vec<_>>().join(","));
            out.push('\n');
            for r in rows {
                out.push_str(&csv_field(&r.group));
                for c in cells(r, &units) {
                    out.push(',');
                    out.push_str(&c);
                }
                out.push('\n');
            }
        }
        Format::Json => {
            if rows.is_empty() {
                return "[]\n".into();
            }
            out.push_str("[\n");
            for (i, r) in rows.iter().enumerate() {
                let c = cells(r, &units);
                let _ = write!(out, "  {{{}:{}", json_string(by.as_str()), json_string(&r.group));
                for (name, value) in COLUMNS.iter().zip(&c) {
                    let _ = write!(out, ",{}:{value}", json_string(name));
                }
                out.push_str(",\"units\":{");
                let amounts: Vec<String> = units
                    .iter()
                    .zip(c.iter().skip(COLUMNS.len()))
                    .map(|(n, v)| format!("{}:{v}", json_string(n)))
                    .collect();
                out.push_str(&amounts.join(","));
                out.push_str(if i + 1 < rows.len() { "}},\n" } else { "}}\n" });
            }
            out.push_str("]\n");
        }
    }
    out
}

/// Fixed-width columns: `header`, then `body`; the first `left` columns left-aligned, the others
/// right, two spaces apart (also `weir usage --quotas`).
pub fn table(header: &[String], body: &[Vec<String>], left: usize) -> String {
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            std::iter::once(header)
                .chain(body.iter().map(Vec::as_slice))
                .map(|l| l.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for line in std::iter::once(header).chain(body.iter().map(Vec::as_slice)) {
        let mut text = String::new();
        for (i, (cell, w)) in line.iter().zip(&widths).enumerate() {
            if i == 0 {
                let _ = write!(text, "{cell:<w$}");
            } else if i < left {
                let _ = write!(text, "  {cell:<w$}");
            } else {
                let _ = write!(text, "  {cell:>w$}");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

/// `s` as one CSV (RFC 4180) field, quoted when it needs to be.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// `s` as a JSON string literal.
pub fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

#[cfg(test)]
mod tests;
