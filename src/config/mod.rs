//! Configuration: `config.yaml` → file types → validated runtime types.
//!
//! Cold path (startup and `weir check`). The pipeline is
//! `config.yaml --serde_yaml--> FileConfig (file.rs) --validate.rs--> Config (model.rs)`.
//! This module is the only place that calls `serde_yaml`, so the YAML crate can be swapped in
//! one place. Validation never stops at the first problem: every error names its key path, the
//! value and the fix (`error.rs`).

pub mod error;
pub mod file;
pub mod model;
pub mod validate;

pub use error::{ConfigError, ConfigErrors};
pub use model::*;

use std::path::Path;

/// Read, parse and validate the configuration at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        path: shown.clone(),
        errors: vec![ConfigError::new(
            "(file)",
            "",
            format!("cannot read the file: {e}; pass an existing file with --config PATH"),
        )],
    })?;
    parse(&text, &shown)
}

/// Parse and validate configuration text; `origin` names the source in error messages.
pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigErrors> {
    let file: file::FileConfig = serde_yaml::from_str(text)
        .map_err(|e| ConfigErrors { path: origin.to_string(), errors: vec![yaml_error(&e)] })?;
    validate::validate(&file).map_err(|errors| ConfigErrors { path: origin.to_string(), errors })
}

/// What a valid configuration still does that an operator should know about: one line each,
/// naming the key, the value and what to do (printed by `weir check`, logged by `weir run`).
pub fn warnings(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(admin) = config.admin {
        if !admin.ip().is_loopback() {
            out.push(format!(
                "admin.address: {admin} is reachable from other hosts, and the admin listener has no \
                 authentication (/metrics lists routes, pools and backend addresses); bind it to \
                 127.0.0.1 or keep it behind a firewall"
            ));
        }
    }
    out
}

/// Turn a serde_yaml error (syntax, unknown key, wrong type) into a `ConfigError`.
fn yaml_error(e: &serde_yaml::Error) -> ConfigError {
    let at = e
        .location()
        .map(|l| format!("line {}, column {}", l.line(), l.column()))
        .unwrap_or_else(|| "(document)".to_string());
    let msg = e.to_string();
    let fix = if msg.contains("unknown field") {
        format!("{msg}; remove or correct the key (see the README's configuration reference)")
    } else {
        format!("{msg}; fix the YAML at this position")
    };
    ConfigError::new(at, "", fix)
}

#[cfg(test)]
mod tests;
