//! Admission: who may open a WebSocket, checked before weir connects to a backend.
//!
//! Warm path (once per upgrade): `auth` (API keys, JWT) turns the request's credential into a
//! tenant; `external` asks an HTTP endpoint instead (forward auth, the one async step: a connect
//! and an exchange bounded by its timeout, or a cache hit); `origin` checks a browser's `Origin`; `caps` counts open connections and new ones per
//! client address, tenant and route. Every refusal is a `gateway::reject::RejectReason`. This
//! module imports only `config` types and `http1` (a leaf).

pub mod auth;
pub mod caps;
pub mod external;
pub mod jwt;
pub mod origin;

use crate::config::{Admission, AuthMethod, Route};
use std::sync::Arc;

/// Who may connect to each route, and the process's caps: built once at startup.
pub struct Gatekeeper {
    /// Per route (in the route table's order): its verifier, if it authenticates with API keys
    /// or JWTs.
    auth: Vec<Option<auth::Authenticator>>,
    /// Per route: its forward-auth client, if it authenticates with `auth.external`.
    external: Vec<Option<external::External>>,
    /// The caps and rates.
    pub caps: Arc<caps::Caps>,
}

impl Gatekeeper {
    /// Build the verifiers of `routes` (in the route table's order) and the caps of `admission`;
    /// the error names the route and the problem (a JWT key file that does not load, say).
    pub fn new<'a>(routes: impl Iterator<Item = &'a Route>, admission: &Admission) -> Result<Gatekeeper, String> {
        let mut external = Vec::new();
        let auth = routes
            .map(|r| {
                let ext = r.auth.iter().flat_map(|a| &a.methods).find_map(|m| match m {
                    AuthMethod::External(e) => Some(external::External::new(e, &r.name)),
                    _ => None,
                });
                let verifier = match &ext {
                    Some(_) => Ok(None),
                    None => r.auth.as_ref().map(auth::Authenticator::new).transpose(),
                };
                external.push(ext);
                verifier.map_err(|e| format!("route {} (path_prefix {}): auth: {e}", r.name, r.path_prefix))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let caps = caps::Caps::new(admission.clone(), auth.len());
        Ok(Gatekeeper { auth, external, caps })
    }

    /// The verifier of route `index`, if it authenticates.
    pub fn auth(&self, index: usize) -> Option<&auth::Authenticator> {
        self.auth.get(index).and_then(Option::as_ref)
    }

    /// The forward-auth client of route `index`, if it uses `auth.external`.
    pub fn external(&self, index: usize) -> Option<&external::External> {
        self.external.get(index).and_then(Option::as_ref)
    }
}
