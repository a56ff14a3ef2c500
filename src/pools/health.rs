//! Health probes for pool backends, run by Pingora's load balancer every `interval`.
//!
//! Cold/background path: one probe per backend per interval, never on a client's path.
//! Kinds: `tcp` (connect succeeds), `http` (`GET path` answers 2xx) and `handshake` (a WebSocket
//! upgrade on `path` answers 101 with the right `Sec-WebSocket-Accept`). A change of health is
//! logged and exported as `weir_backend_healthy{pool,namespace,backend}`. For a `tls` pool every
//! kind runs over TLS (a `tcp` probe is a connect and a TLS handshake), with the pool's settings.

use crate::config::{HealthCheck, Pool};
use crate::http1::head::read_response_head;
use crate::http1::upgrade::{check_answer, Answer};
use crate::metrics::{Metrics, Place};
use crate::relay::close::Close;
use crate::relay::frame::{encode_close_frame, MAX_CLOSE_FRAME_LEN};
use async_trait::async_trait;
use pingora_error::{Error, ErrorType, Result};
use pingora_load_balancing::Backend;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest time one probe may take (connect plus answer).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Key sent by handshake probes (any valid key works; the answer is checked against it).
const PROBE_KEY: &str = "d2Vpci1oZWFsdGgtcHJvYg=="; // base64 of the 16 bytes "weir-health-prob"

/// The probe of one pool.
pub struct Probe {
    pool: String,
    /// The `pool` / `namespace` labels (object hosts are probed as a namespace's).
    place: Place,
    /// Each backend's address and its `backend` label (as configured).
    labels: Vec<(std::net::SocketAddr, String)>,
    /// Each backend's readiness as weir reads it per connection (index-aligned with `labels`):
    /// set here on every change Pingora reports, so a selection reads one atomic instead of
    /// Pingora's two snapshot loads and two hashes.
    ready: super::Ready,
    check: HealthCheck,
    tls: Option<crate::tls_client::ClientTls>,
    metrics: Metrics,
    listener: Option<super::HealthListener>,
}

impl Probe {
    /// The probe configured for `pool`; `listener` hears every change of health.
    /// `labels` name each backend address as configured; `ready` holds their readiness (by the
    /// same index), which the probe keeps up to date.
    pub fn new(
        pool: &Pool,
        place: Place,
        labels: Vec<(std::net::SocketAddr, String)>,
        ready: super::Ready,
        metrics: Metrics,
        listener: Option<super::HealthListener>,
    ) -> Probe {
        Probe {
            pool: pool.name.clone(),
            place,
            labels,
            ready,
            check: pool.health.clone(),
            tls: pool.tls.clone(),
            metrics,
            listener,
        }
    }

    /// Time between probes, or `None` when probing is off.
    pub fn interval(&self) -> Option<Duration> {
        self.check.interval()
    }

    async fn probe(&self, addr: std::net::SocketAddr) -> std::result::Result<(), String> {
        let tcp = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        match &self.tls {
            None => self.exchange(addr, tcp).await,
            Some(tls) => {
                let s = tls
                    .connector()
                    .connect(tls.server_name(addr), tcp)
                    .await
                    .map_err(|e| crate::tls_client::explain(&e.to_string()))?;
                self.exchange(addr, s).await
            }
        }
    }

    /// The probe's request and answer over `s` (connected, TLS done).
    async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        addr: std::net::SocketAddr,
        mut s: S,
    ) -> std::result::Result<(), String> {
        let (path, request) = match &self.check {
            HealthCheck::None | HealthCheck::Tcp { .. } => return Ok(()),
            HealthCheck::Http { path, .. } => {
                (path, format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: weir-health\r\nConnection: close\r\n\r\n"))
            }
            HealthCheck::Handshake { path, .. } => (
                path,
                format!(
                    "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: weir-health\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {PROBE_KEY}\r\n\r\n"
                ),
            ),
        };
        s.write_all(request.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
        s.flush().await.map_err(|e| format!("write: {e}"))?;
        let answer = read_response_head(&mut s).await.map_err(|e| e.to_string())?;
        let code = answer.status;
        match &self.check {
            HealthCheck::Handshake { .. } => {
                if check_answer(&answer, PROBE_KEY) == Answer::Accepted {
                    let mut close = [0u8; MAX_CLOSE_FRAME_LEN];
                    let len = encode_close_frame(
                        Close::Probe.code(),
                        Close::Probe.reason().as_bytes(),
                        Some([0; 4]),
                        &mut close,
                    );
                    let _ = s.write_all(close.get(..len).unwrap_or_default()).await;
                    let _ = s.flush().await;
                    Ok(())
                } else {
                    Err(format!("upgrade on {path} answered {code}, expected 101 with a valid accept key"))
                }
            }
            _ if (200..300).contains(&code) => Ok(()),
            _ => Err(format!("GET {path} answered {code}, expected 2xx")),
        }
    }
}

#[async_trait]
impl pingora_load_balancing::health_check::HealthCheck for Probe {
    async fn check(&self, target: &Backend) -> Result<()> {
        let Some(addr) = target.addr.as_inet().copied() else {
            return Error::e_explain(ErrorType::InternalError, "weir probes only inet backends");
        };
        match tokio::time::timeout(PROBE_TIMEOUT, self.probe(addr)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => {
                tracing::debug!(pool = %self.pool, backend = %addr, %why, "health probe failed");
                Error::e_explain(ErrorType::ConnectError, why)
            }
            Err(_) => Error::e_explain(ErrorType::ConnectTimedout, "health probe timed out"),
        }
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        let inet = target.addr.as_inet().copied();
        for ((a, _), ready) in self.labels.iter().zip(self.ready.iter()) {
            if Some(*a) == inet {
                ready.store(healthy, std::sync::atomic::Ordering::Release);
            }
        }
        let addr = self
            .labels
            .iter()
            .find(|(a, _)| Some(*a) == inet)
            .map_or_else(|| target.addr.to_string(), |(_, label)| label.clone());
        if healthy {
            tracing::info!(pool = %self.pool, backend = %addr, "backend is healthy again");
        } else {
            tracing::warn!(pool = %self.pool, backend = %addr, "backend failed its health check; no new connections go to it");
        }
        let [pool, ns] = self.place.labels();
        self.metrics.backend_healthy.with_label_values(&[pool, ns, &addr]).set(i64::from(healthy));
        if let (Some(listener), Some(inet)) = (&self.listener, target.addr.as_inet()) {
            listener(*inet, healthy);
        }
    }

    fn health_threshold(&self, _success: bool) -> usize {
        1
    }
}
