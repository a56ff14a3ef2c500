//! Startup: turn a validated `Config` into a running Pingora `Server`.
//!
//! Cold path, once per process. Order matters: metrics first (everything registers on them),
//! then the usage file, the built-in backends (bound before pools, which name their addresses),
//! the pools with their health services, the object namespaces (room stores opened, host
//! health services), the cluster's membership and peer listener (with `cluster:`), the gateway
//! and background services (spool flusher, interim sweeper, delivery), and last the admin listener, on a thread of its own outside Pingora's services so
//! that it answers through the whole shutdown. Pingora owns the process until SIGTERM (graceful:
//! listeners stop, `/readyz` turns 503, open WebSockets get `server.grace_period`, then a 1001
//! close and their stop records) or SIGINT (immediate); then `run` makes every record durable,
//! delivers what the sinks take within `FINAL_DELIVERY`, keeps the admin listener up for
//! `admin.final_scrape` (graceful shutdown only) so a scraper sees the final counts, stops it and
//! returns.

use crate::admin::api::{close_backend, Access, DrainPlan, Ops};
use crate::admin::{Admin, AdminServer, ShutdownWatcher};
use crate::billing::delivery::Delivery;
use crate::billing::spool::Flusher;
use crate::billing::UsageLog;
use crate::client_cert::{ClientCa, HandshakeHook};
use crate::config::Config;
use crate::fds::{Descriptors, Sampler};
use crate::gateway::http::HttpRoutes;
use crate::gateway::listen::{Plain, PlainListeners};
use crate::gateway::snapshot::{Current, Parts as SnapshotParts, Snapshot};
use crate::gateway::{Gateway, Parts, Tls};
use crate::listener_tls::ListenerCert;
use crate::metering::live::{LiveSet, Sweeper};
use crate::metering::quota::{QuotaTicker, Quotas};
use crate::metering::rejections::Rejections;
use crate::metrics::Metrics;
use crate::pools::builtin::Builtins;
use crate::pools::{HealthListener, HealthRunner};
use crate::reload::{ListenerFiles, OnHangup, Reloader};
use anyhow::Context;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::listeners::{L4BufferSettings, ListenerConfig};
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{ExecutionPhase, RunArgs, Server};
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

/// How long `weir run --upgrade` waits for a spool slot to be free.
const UPGRADE_SLOT_WAIT: Duration = Duration::from_secs(30);
/// How long `weir run --upgrade` waits for the old process's sockets, in seconds.
const UPGRADE_WAIT_SECONDS: usize = 60;

/// Longest time the last delivery (after every service stopped) may take before weir exits.
const FINAL_DELIVERY: Duration = Duration::from_secs(10);

/// Extra time Pingora waits after weir's own grace period, so relays can send their 1001 and
/// write their usage records before Pingora drops what is left.
const PINGORA_GRACE_MARGIN: Duration = Duration::from_secs(2);

/// Whether the services' runtimes use tokio's work-stealing scheduler (Pingora's "steal"
/// flavour) for `server.threads` gateway threads. One thread: no. A single-threaded scheduler per
/// service ("no steal": tokio's current-thread runtime) does the same work without the
/// cross-thread machinery a work-stealing scheduler keeps when it has nothing to balance (issue
/// 14, sixteenth part: about 4 % less CPU per handshake cycle, nothing else measurably changed).
/// More threads: yes, because with "no steal" a connection stays on the thread of the accept
/// loop that took it, and one accept loop per listener would leave the other threads idle.
/// (The background services each run on one thread of their own either way.)
fn work_stealing(threads: usize) -> bool {
    threads > 1
}

/// Build every service from `config` (read from `path`, which SIGHUP and `POST /api/reload`
/// re-read) and run until shutdown; returns after the last flush and delivery.
/// With `upgrade`, the listening sockets are taken over from a running weir (`weir run
/// --upgrade`, then SIGQUIT to the old process): see the README, "Binary upgrade".
/// `allocator` is the binary's allocator: all its freed pages are given back once after start,
/// its decayed ones every half second, and its figures exported (`fds::Sampler`).
pub fn run(config: Config, path: &Path, upgrade: bool, allocator: crate::heap::Allocator) -> anyhow::Result<()> {
    // First: everything after this opens descriptors.
    crate::fds::raise_limit();
    let registry = prometheus::default_registry().clone();
    let metrics = Metrics::register(&registry).context("registering metrics")?;
    metrics.prepare(&crate::gateway::known_labels(&config));
    let u = &config.usage;
    // In an upgrade the old process keeps writing its slot while it drains: take the other one,
    // waiting a little if the process before it is still delivering from there.
    let wait = if upgrade { UPGRADE_SLOT_WAIT } else { Duration::ZERO };
    let (spool, other_slot) = crate::billing::spool::open_slot(&u.spool_dir, wait)
        .with_context(|| format!("usage.spool_dir: cannot open the spool in {}", u.spool_dir.display()))?;
    tracing::info!(slot = %spool.dir().display(), "spool slot");
    let usage = Arc::new(UsageLog::new(
        spool.clone(),
        metrics.clone(),
        crate::billing::Units::new(config.billing_units.clone()),
    ));
    let rejections = Rejections::new(u.rejections_per_client, u.rejection_window);
    let live = Arc::new(
        LiveSet::new(u.interim_interval, u.idle_threshold, usage.clone())
            .with_rejections(rejections, metrics.rejections_summarised.clone()),
    );
    let fds = Descriptors::new(config.fd_reserve);
    let builtins = Builtins::bind(&config).context("binding the built-in backends on 127.0.0.1")?;
    let plan = DrainPlan { window: config.drain_window, code: if config.drain_restart { 1012 } else { 1001 } };
    // A pool backend that fails its health check gets its relays closed with 1012 over the drain
    // window (clients reconnect to the others), as object hosts' connections already are.
    let on_health: HealthListener = {
        let live = live.clone();
        Arc::new(move |addr, healthy| {
            if !healthy {
                close_backend(&live, addr, plan, "backend unhealthy");
            }
        })
    };
    for pool in &config.pools {
        let addrs: Vec<String> = pool.backends.iter().map(|b| builtins.resolve(b).to_string()).collect();
        tracing::info!(pool = %pool.name, backends = ?addrs, "pool");
    }
    // Health checks of pools and object hosts run on one runtime (`HealthRunner`), so that a
    // reload can start and stop them.
    let runner = HealthRunner::new();
    let snapshot_parts = SnapshotParts {
        usage: usage.clone(),
        metrics: metrics.clone(),
        runner: runner.clone(),
        builtins: builtins.addresses(),
        on_health: Some(on_health),
    };
    let config_hash = crate::reload::hash_of(&std::fs::read(path).unwrap_or_default());
    let built = Snapshot::build(config.clone(), &snapshot_parts, None)?;
    let current: Current = Arc::new(arc_swap::ArcSwap::from_pointee(built.snapshot));

    let upgrade_sock = config.upgrade_sock.clone().unwrap_or_else(|| config.data_dir.join("upgrade.sock"));
    if let Some(dir) = upgrade_sock.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("server.upgrade_sock: cannot create {}", dir.display()))?;
    }
    let conf = ServerConf {
        threads: config.threads,
        work_stealing: work_stealing(config.threads),
        upgrade_sock: upgrade_sock.to_string_lossy().into_owned(),
        // How long `weir run --upgrade` waits for the old process to hand its sockets over
        // (seconds: the operator sends SIGQUIT within this).
        upgrade_sock_connect_accept_max_retries: Some(UPGRADE_WAIT_SECONDS),
        grace_period_seconds: Some((config.grace_period + PINGORA_GRACE_MARGIN).as_secs().max(1)),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let opt = pingora_core::server::configuration::Opt { upgrade, ..Default::default() };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    server.bootstrap();

    // `cluster:`: membership in etcd and the peer listener (bound now, so a taken port fails the
    // start); without it nothing here touches etcd.
    let cluster = config.cluster.clone().map(|c| crate::cluster::Cluster::new(c, metrics.clone()));
    let peer_listener = match &cluster {
        Some(c) => Some(
            crate::gateway::peer::PeerListener::bind(
                c.clone(),
                current.clone(),
                config.grace_period,
                metrics.accept_errors.clone(),
            )
            .with_context(|| format!("cluster.peer.address: cannot listen on {}", c.config().peer_address))?,
        ),
        None => None,
    };
    let http = Arc::new(pingora_proxy::http_proxy(&server.configuration, HttpRoutes::new(current.clone())));
    let quotas = Quotas::new(
        config.quotas.clone(),
        config.billing_units.iter().map(|u| u.name.clone()).collect(),
        Some(config.data_dir.clone()),
        metrics.quota_utilisation.clone(),
    );
    let gateway = Arc::new(Gateway::new(
        &config,
        Parts {
            access: match &config.access_log {
                None => None,
                Some(target) => Some(Arc::new(
                    crate::access::AccessLog::start(target.clone(), metrics.access_log_dropped.clone())
                        .with_context(|| format!("access_log: cannot open {target:?}"))?,
                )),
            },
            quotas: quotas.clone(),
            current: current.clone(),
            metrics: metrics.clone(),
            live: live.clone(),
            fds: fds.clone(),
            http,
            cluster: cluster.clone(),
        },
    ));
    // Plain-TCP listeners: weir's own accept loop (`gateway::listen`); TLS listeners: Pingora's,
    // which runs the TLS handshake. Each service has its own runtime of `threads` threads.
    let plain: Vec<Plain> = config
        .listeners
        .iter()
        .filter(|l| l.tls.is_none())
        .map(|l| Plain { address: l.address, proxy_protocol: l.proxy_protocol })
        .collect();
    let before_tls = gateway.before_tls(&config);
    let mut gateway_service = Service::new("weir gateway tls".to_string(), Tls(gateway.clone()));
    if let Some(callback) = before_tls {
        // `proxy_protocol` on a TLS listener: the PROXY header comes before the handshake.
        gateway_service.endpoints().set_pre_tls_callback(callback);
    }
    let mut listener_files = ListenerFiles::default();
    for l in config.listeners.iter().filter(|l| l.tls.is_some()) {
        // Unbuffered: weir reads the head itself and relays from its own per-thread buffer, so a
        // Pingora read buffer per connection would only cost memory.
        let mut listener = ListenerConfig::tcp(l.address.to_string()).l4_buffer(L4BufferSettings::unbuffered());
        if let Some(tls) = &l.tls {
            let cert = tls.cert.to_string_lossy();
            let key = tls.key.to_string_lossy();
            let mut settings = match &tls.client_auth {
                None => TlsSettings::intermediate(&cert, &key).map_err(|e| {
                    anyhow::anyhow!("listeners: TLS for {}: cannot load {cert} / {key}: {e}", l.address)
                })?,
                Some(ca) => {
                    // Mutual TLS: a verifier a reload swaps, and a post-handshake hook that hands
                    // the verified subject to the gateway (src/client_cert.rs).
                    let label = l.address.to_string();
                    let count = |result: &str| metrics.tls_client_auth.with_label_values(&[&label, result]);
                    let verifier = ClientCa::load(&ca.ca_file, ca.mode, count("rejected"))
                        .map_err(|e| anyhow::anyhow!("listeners: tls.client_auth for {}: {e}", l.address))?;
                    let hook =
                        HandshakeHook { listener: label.clone(), verified: count("verified"), none: count("none") };
                    let mut s = TlsSettings::with_callbacks(Box::new(hook))
                        .map_err(|e| anyhow::anyhow!("listeners: TLS for {}: {e}", l.address))?;
                    s.set_client_cert_verifier(verifier.clone());
                    listener_files.client_cas.push(verifier);
                    s
                }
            };
            // Served through a resolver a reload swaps (renewed certificates, no restart).
            let resolver = ListenerCert::load(&tls.cert, &tls.key)
                .map_err(|e| anyhow::anyhow!("listeners: TLS for {}: {e}", l.address))?;
            settings.set_cert_resolver(resolver.clone());
            listener_files.certs.push(resolver);
            listener = listener.tls(settings);
        }
        gateway_service.add_listener(listener);
    }
    for l in &config.listeners {
        let client_auth = l.tls.as_ref().and_then(|t| t.client_auth.as_ref()).map(|c| format!("{:?}", c.mode));
        tracing::info!(address = %l.address, tls = l.tls.is_some(), ?client_auth, proxy_protocol = l.proxy_protocol, "listening");
    }
    if config.listeners.iter().any(|l| l.tls.is_some()) {
        server.add_service(gateway_service);
    }
    if !plain.is_empty() {
        server.add_service(PlainListeners::new(gateway, plain, metrics.accept_errors.clone()));
    }

    let reloader =
        Reloader::new(path, current.clone(), snapshot_parts, live.clone(), plan, config_hash, listener_files);
    server.add_service(background_service("config reload on SIGHUP", OnHangup(reloader.clone())));
    server.add_service(background_service("health checks", runner.service()));
    if let (Some(c), Some(peers)) = (&cluster, peer_listener) {
        server.add_service(background_service("cluster membership", c.membership()));
        server.add_service(background_service("cluster peer listener", peers));
    }
    // The admin listener itself is not a Pingora service (see below); this one only tells it
    // when Pingora's shutdown begins.
    let admin = config.admin.map(|address| {
        let listeners = config.listeners.iter().map(|l| l.address).collect();
        let open = live.clone();
        let access = Access { token: config.admin_token.clone(), metrics_public: config.admin_metrics_public };
        let pools = current.clone();
        let reload: Arc<dyn crate::admin::api::Reload> = reloader.clone();
        let ops = Ops {
            live: live.clone(),
            pools: Arc::new(move || pools.load().pools.clone()),
            objects: {
                let current = current.clone();
                Arc::new(move || current.load().objects.clone())
            },
            plan,
            reload: Some(reload),
            metrics: metrics.clone(),
        };
        let admin = Admin::new(registry, listeners, fds.clone(), move || open.len()).with_api(ops, access);
        (address, Arc::new(admin))
    });
    if let Some((_, a)) = &admin {
        server.add_service(background_service("admin shutdown watch", ShutdownWatcher(a.clone())));
    }
    for s in builtins.services(&metrics) {
        server.add_boxed_service(s);
    }
    server.add_service(background_service("spool flusher", Flusher::new(spool.clone(), u.fsync_interval)));
    server.add_service(background_service("interim sweeper", Sweeper::new(live.clone())));
    if !quotas.is_empty() {
        server.add_service(background_service("quota ticker", QuotaTicker(quotas.clone(), live.clone())));
    }
    let sampler = Sampler::new(fds, metrics.open_fds.clone(), metrics.max_fds.clone(), metrics.resident_memory.clone())
        .with_allocator(allocator, metrics.heap.clone());
    server.add_service(background_service("descriptor sampler", sampler));
    let accept_errors = metrics.accept_errors.clone();
    let delivery_service =
        background_service("usage delivery", Delivery::new(spool.clone(), config.usage.sinks.clone(), metrics.clone()));
    let delivery = delivery_service.task();
    server.add_service(delivery_service);
    server.add_service(background_service(
        "spool adoption",
        crate::billing::adopt::Adopter { dir: other_slot, sinks: config.usage.sinks.clone(), metrics },
    ));
    let sinks: Vec<&str> = config.usage.sinks.iter().map(|s| s.name.as_str()).collect();
    // The admin listener is not a Pingora service: Pingora stops those at the first signal, and
    // scrapers must see the drain and its final counts. It starts last, right before `run`, so
    // nothing after it can fail and leave it running.
    let mut phases = server.watch_execution_phase();
    let admin = match admin {
        Some((address, admin)) => {
            // In an upgrade the old process answers on the address until it exits: its drain,
            // its final delivery and its final scrape window, then some slack.
            let wait = if upgrade {
                config.grace_period + config.admin_final_scrape + FINAL_DELIVERY + Duration::from_secs(60)
            } else {
                Duration::ZERO
            };
            let served = AdminServer::start(admin, address, &accept_errors, server.watch_execution_phase(), wait)
                .with_context(|| format!("admin.address: cannot listen on {address}"))?;
            tracing::info!(%address, "admin listening (/metrics, /healthz, /readyz, /api)");
            Some(served)
        }
        None => None,
    };
    let scheduler = if work_stealing(config.threads) { "work-stealing" } else { "single-threaded" };
    tracing::info!(spool = %config.usage.spool_dir.display(), ?sinks, threads = config.threads, scheduler, "weir started");
    // Returns once Pingora has stopped every service (SIGTERM: after the grace period).
    server.run(RunArgs::default());
    if let Some(a) = &admin {
        a.admin().begin_shutdown();
    }
    live.summarise_rejections(std::time::Instant::now(), true);
    // No connection task is left to write a record: make every record durable and hand it to
    // the sinks that take it now; the rest is delivered at the next start.
    spool.flush();
    let delivered = delivery.deliver_remaining(FINAL_DELIVERY);
    tracing::info!(delivered, waiting = spool.backlog_len(), "weir stopped; usage records are in the spool");
    if let Some(a) = admin {
        // Every count is final now: give a scraper `admin.final_scrape` to read them (not after
        // SIGINT, which asks to stop at once).
        let window = if graceful(&mut phases) { config.admin_final_scrape } else { Duration::ZERO };
        if !window.is_zero() {
            tracing::info!(window = ?window, "final scrape: the admin listener answers until exit");
            // Not synchronisation: the window the operator configured for a last scrape.
            std::thread::sleep(window);
        }
        a.stop();
        tracing::info!("admin listener stopped; exiting");
    }
    Ok(())
}

/// True when Pingora's shutdown was graceful (SIGTERM, or SIGQUIT's upgrade), from the phases it
/// broadcast; false for SIGINT.
fn graceful(phases: &mut broadcast::Receiver<ExecutionPhase>) -> bool {
    let mut graceful = false;
    // Bounded: Pingora keeps at most 100 phases for a receiver.
    for _ in 0..1000 {
        match phases.try_recv() {
            Ok(phase) => {
                graceful |= matches!(
                    phase,
                    ExecutionPhase::GracefulTerminate
                        | ExecutionPhase::GracefulUpgradeTransferringFds
                        | ExecutionPhase::GracefulUpgradeCloseTimeout
                )
            }
            Err(broadcast::error::TryRecvError::Lagged(_)) => {}
            Err(_) => break,
        }
    }
    graceful
}
