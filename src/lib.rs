//! weir: a WebSocket gateway that relays connections byte for byte and meters every one.
//!
//! # Code map
//! Dependencies flow one way, top to bottom; a lower module never imports a higher one (where
//! it needs something from above it defines a trait, like the relay's `Observer`). An arrow
//! points from a module to the ones it uses; `config` heads the chain because the gateway is
//! built from its `Config`, but it imports nothing from weir (every module may use its types):
//!
//! ```text
//! server ─▶ admin, gateway, reload, billing::delivery  (cold: startup, services)
//! reload ─▶ gateway::snapshot, admin::api              (cold: SIGHUP, POST /api/reload)
//! config ─▶ gateway ─▶ relay                           (relay imports nothing from weir)
//!             ├─▶ metering ─▶ billing ─▶ sinks
//!             ├─▶ objects ─▶ pools ─▶ http1            (http1 is a leaf)
//!             └─▶ routing
//! ```
//!
//! Each module once, with its path (hot: per chunk or frame; warm: per connection or request;
//! cold: startup; background: services of their own):
//! - `config`: `config.yaml` → file types → validated `Config`; every error at once (cold).
//! - `server`: builds Pingora's `Server` and every service from a `Config` (cold).
//! - `reload`: SIGHUP and `POST /api/reload`: re-read, validate, build and swap the config
//!   snapshot; open connections keep theirs (cold).
//! - `gateway`: Pingora HTTP app: the config snapshot in force, head, routing, handshake on both sides, rejections, the
//!   after-101 task and its observer (warm).
//! - `routing`: (host, path) → route (warm, pure).
//! - `http1`: HTTP/1 heads and WebSocket handshake helpers, shared by all who speak HTTP/1 (warm,
//!   leaf).
//! - `relay`: frame scanner, the relay state machine after the 101, the tap around built-in
//!   objects, reports and the closes weir sends (hot).
//! - `ws`: WebSockets weir terminates itself: the echo loop, closing, draining (warm).
//! - `pools`: Pingora load balancers, health probes, the built-in echo backend (warm /
//!   background).
//! - `objects`: object namespaces: id → one owner, leases, eviction, accounting, and the objects
//!   weir serves itself (echo, rooms with numbered history, in files or shared in
//!   PostgreSQL) (warm).
//! - `cluster`: with `cluster:`, object ownership across instances through etcd: membership
//!   (a lease kept alive), object claims with fencing tokens, the peer hop's first line (warm /
//!   background).
//! - `metering`: per-connection `Meter`, active clock, the live set and its interim sweeper; it
//!   writes every connection record (warm / background).
//! - `billing`: the record contract and log, spool, delivery, sinks, pricing units, `weir usage`
//!   reports (warm / background / cold).
//! - `metrics`: Prometheus families, names in `metrics::names` (hot updates, cold setup).
//! - `accept`: what weir's own accept loops do when `accept(2)` fails (backoff, counted, logged
//!   once a second; leaf).
//! - `access`: the per-connection access log, written by a thread of its own (warm hand-off).
//! - `admission`: who may connect (API keys, JWT, forward auth), origins, caps and rates
//!   (warm, before the 101).
//! - `admin`: `/metrics`, `/healthz`, `/readyz` on the admin listener, served on its own thread
//!   so it answers through the whole shutdown (warm).
//! - `fds`: the descriptor limit, the open count and the reserve kept for weir itself
//!   (background sampler; warm check).
//! - `heap`: what the server may ask of the binary's allocator (release freed pages, its
//!   figures) and the `weir_heap_*_bytes` gauges (background; leaf).
//! - `sync`: the poison-tolerant lock helper every mutex goes through.
//! - `text`: addresses appended to byte buffers without the formatter (warm; leaf).
//! - `client_cert`: mutual TLS on listeners: the client CA a reload re-reads and the verified
//!   subject `auth.client_cert` bills (cold; one parse per handshake).
//! - `listener_tls`: TLS listener certificates a reload re-reads (a swapped resolver; cold).
//! - `tls_client`: rustls client configs for TLS to backends, object hosts, their probes and the
//!   sinks (cold build, warm handshake).
//! - `manual`: the man page and shell completions, generated from the command line's clap
//!   definition (cold; `weir man`, `weir completions`).
//!
//! The README's "Code map" and `../shared/DESIGN.md` describe the data flow.

pub mod accept;
pub mod access;
pub mod admin;
pub mod admission;
pub mod billing;
pub mod client_cert;
pub mod cluster;
pub mod config;
pub mod fds;
pub mod gateway;
pub mod heap;
pub mod http1;
pub mod listener_tls;
pub mod manual;
pub mod metering;
pub mod metrics;
pub mod objects;
pub mod pools;
pub mod relay;
pub mod reload;
pub mod routing;
pub mod server;
pub mod sync;
pub mod text;
pub mod tls_client;
pub mod ws;
