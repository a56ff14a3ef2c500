//! Admission: who may open a WebSocket, checked before weir connects to a backend.
//!
//! Warm path (once per upgrade): `auth` (API keys, JWT) turns the request's credential into a
//! tenant; `origin` checks a browser's `Origin`; `caps` counts open connections and new ones per
//! client address, tenant and route. Every refusal is a `gateway::reject::RejectReason`. This
//! module imports only `config` types and `http1` (a leaf).

pub mod auth;
pub mod caps;
pub mod jwt;
pub mod origin;

use crate::config::{Admission, Route};
use std::sync::Arc;

/// Who may connect to each route, and the process's caps: built once at startup.
pub struct Gatekeeper {
    /// Per route (in the route table's order): its verifier, if it authenticates.
    auth: Vec<Option<auth::Authenticator>>,
    /// The caps and rates.
    pub caps: Arc<caps::Caps>,
}

impl Gatekeeper {
    /// Build the verifiers of `routes` (in the route table's order) and the caps of `admission`;
    /// the error names the route and the problem (a JWT key file that does not load, say).
    pub fn new<'a>(routes: impl Iterator<Item = &'a Route>, admission: &Admission) -> Result<Gatekeeper, String> {
        let auth = routes
            .map(|r| {
                r.auth
                    .as_ref()
                    .map(auth::Authenticator::new)
                    .transpose()
                    .map_err(|e| format!("route {} (path_prefix {}): auth: {e}", r.name, r.path_prefix))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let caps = caps::Caps::new(admission.clone(), auth.len());
        Ok(Gatekeeper { auth, caps })
    }

    /// The verifier of route `index`, if it authenticates.
    pub fn auth(&self, index: usize) -> Option<&auth::Authenticator> {
        self.auth.get(index).and_then(Option::as_ref)
    }
}
