//! Admission by a route's `auth.external` endpoint (`admission::external`): its verdict applied
//! to the upgrade (the tenant, the copied headers), or its refusal passed on to the client.
//!
//! Warm path (once per upgrade on such a route), called from `Gateway::admit` after the origin
//! check and before the caps (which count the tenant the endpoint named). The endpoint's answer
//! goes to the client only; the record and the metric get its status and a label.

use super::reject::{self, RejectReason};
use super::{Gateway, Refused, Request};
use crate::admission::external::{External, Verdict};
use crate::metering::Rejection;
use tokio::io::AsyncWriteExt;

impl Gateway {
    /// Ask `ext` about `req`: admitted, its tenant (if the endpoint named one) goes into the
    /// record and `X-Weir-Tenant`, and the client's fields named in `copy_headers` are replaced
    /// by the endpoint's. A refusal is answered here with the endpoint's status, passed headers
    /// and body, counted and recorded (`external_auth: <status>`), and returned as
    /// `ExternalAuthDenied` so that `serve` does not answer again.
    pub(super) async fn admit_external(&self, req: &mut Request, ext: &External) -> Result<(), Refused> {
        let client = req.meter.client().map(|a| a.ip());
        match ext.check(&req.head, client, req.tls).await {
            Verdict::Admit { tenant, copy } => {
                ext.apply(&mut req.head, copy);
                if tenant.is_some() {
                    req.meter.identity_mut().tenant = tenant.map(Into::into);
                }
                Ok(())
            }
            Verdict::FailOpen => {
                ext.apply(&mut req.head, Vec::new());
                Ok(())
            }
            Verdict::Unavailable => Err((RejectReason::ExternalAuthUnavailable, None, None)),
            Verdict::Deny(d) => {
                // Counted and recorded before the answer, like every refusal.
                let reason = RejectReason::ExternalAuthDenied;
                self.metrics.handshake_rejections.with_label_values(&[&*req.route, reason.as_str()]).inc();
                tracing::debug!(route = %req.route, status = d.status, "external auth refused the upgrade");
                let detail = format!("{}: {}", reason.as_str(), d.status);
                let rejection = Rejection { status: d.status, outcome: reason.outcome(), reason: &detail };
                self.live.reject(&req.meter, rejection);
                let _ = req.stream.write_all(&reject::passed_response(d.status, &d.headers, &d.body)).await;
                let _ = req.stream.flush().await;
                Err((reason, Some(detail), None))
            }
        }
    }
}
