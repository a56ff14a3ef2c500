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

/// Who may connect to each route of one config snapshot, and the process's caps (shared by
/// every snapshot).
pub struct Gatekeeper {
    /// Per route (in the route table's order): its verifier, if it authenticates with API keys
    /// or JWTs.
    auth: Vec<Option<auth::Authenticator>>,
    /// Per route: its forward-auth client, if it authenticates with `auth.external`.
    external: Vec<Option<external::External>>,
    /// Per route: its open-connection counter in `caps`.
    route_counters: Vec<Arc<std::sync::atomic::AtomicU64>>,
    /// The caps and rates.
    pub caps: Arc<caps::Caps>,
}

impl Gatekeeper {
    /// Build the verifiers of `routes` (in the route table's order) and the caps of `admission`
    /// (a reload passes the running caps, which keep their counts: it gives them the new
    /// settings with `Caps::reconfigure` once the whole snapshot is built);
    /// the error names the route and the problem (a JWT key file that does not load, say).
    pub fn new<'a>(
        routes: impl Iterator<Item = &'a Route>,
        admission: &Admission,
        running: Option<&Arc<caps::Caps>>,
    ) -> Result<Gatekeeper, String> {
        let mut external = Vec::new();
        let mut names = Vec::new();
        let auth = routes
            .map(|r| {
                names.push(r.name.clone());
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
        let caps = running.cloned().unwrap_or_else(|| caps::Caps::new(admission.clone()));
        let route_counters = names.iter().map(|n| caps.route_counter(n)).collect();
        Ok(Gatekeeper { auth, external, route_counters, caps })
    }

    /// The open-connection counter of route `index` (for `Caps::admit`).
    pub fn route_counter(&self, index: usize) -> Option<&Arc<std::sync::atomic::AtomicU64>> {
        self.route_counters.get(index)
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
