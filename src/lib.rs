//! weir: a WebSocket gateway that relays connections byte for byte and meters every one.
//!
//! # Layout
//! Each module's own doc says whether it runs on the hot path (per chunk/frame), the warm path
//! (per connection or request) or the cold path (startup).
//! - `config`: `config.yaml` → file types → validated `Config`; every error at once (cold).
//! - `server`: builds Pingora's `Server` and services from a `Config` (cold).
//! - `gateway`: Pingora HTTP app: head, routing, handshake on both sides, rejections (warm).
//! - `routing`: (host, path) → route (warm, pure).
//! - `pools`: Pingora load balancers and health probes per backend pool (warm / background).
//! - `relay`: frame scanner and the relay state machine after the 101 (hot).
//! - `metering`: per-connection `Meter` → start/interim/stop `UsageRecord`s, the live set and
//!   its interim sweeper (warm).
//! - `billing`: spool (fsync batches), delivery loops, sinks (file, postgres, http), pricing
//!   units and `weir usage` reports.
//! - `sync`: the poison-tolerant lock helper every mutex goes through.
//! - `metrics`: Prometheus families, names in `metrics::names` (hot updates, cold setup).
//! - `admin`: `/metrics`, `/healthz`, `/readyz` on the admin listener.
//! - `objects`: object namespaces: id → one owner (rendezvous), leases, eviction, accounting (warm).
//! - `builtin`: servers and objects built into weir: the echo backend, the echo and room objects.
//! - `billing`: pricing units computed from a connection's counts (warm, pure).
//!
//! The README's "Code map" and `../shared/DESIGN.md` describe the data flow.

pub mod admin;
pub mod billing;
pub mod builtin;
pub mod config;
pub mod gateway;
pub mod metering;
pub mod metrics;
pub mod objects;
pub mod pools;
pub mod relay;
pub mod routing;
pub mod server;
pub mod sync;
