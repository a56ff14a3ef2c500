//! Configuration: `config.yaml` → file types → validated runtime types.
//!
//! Cold path (startup and `weir check`). The pipeline is
//! `config.yaml --serde_yaml--> Value --keys.rs--> FileConfig (file.rs) --validate.rs--> Config
//! (model.rs)`: `keys.rs` checks the YAML tree against the shape of the file first, so unknown
//! keys and values of the wrong kind are reported all together (serde would stop at the first)
//! along with the value errors of the rest of the file. This module is the only place that calls
//! `serde_yaml`, so the YAML crate can be swapped in one place. Nothing stops at the first
//! problem: every error names its key path, the value and the fix (`error.rs`).

pub mod admission;
pub mod error;
pub mod file;
pub mod keys;
pub mod limits;
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
///
/// Every unknown key, value of the wrong kind and missing required key is reported (`keys.rs`),
/// together with the value errors of the rest of the file, except those that only follow from
/// one already reported. Only a YAML syntax error stops everything (with its line and column).
pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigErrors> {
    let fail = |errors| ConfigErrors { path: origin.to_string(), errors };
    let mut doc: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| fail(vec![yaml_error(&e)]))?;
    let mut checked = keys::check(&mut doc);
    if checked.errors.is_empty() {
        // A clean file is deserialized from its text, exactly as written: serde_yaml keeps a
        // scalar's text for a string key there (`tenant: 0042` stays "0042"), where the `Value`
        // tree has already read it as the number 42. The check takes a key set to nothing as
        // left out; serde does so for `server:` but not for `server: ~` or `demo_page: ~` (the
        // tree cannot tell them apart), so those still fail here, alone, as they always did.
        let file: file::FileConfig = serde_yaml::from_str(text).map_err(|e| fail(vec![yaml_error(&e)]))?;
        return validate::validate(&file).map_err(fail);
    }
    checked.locate(text);
    let mut errors = std::mem::take(&mut checked.errors);
    match serde_yaml::from_value::<file::FileConfig>(doc) {
        Ok(file) => {
            if let Err(more) = validate::validate(&file) {
                errors.extend(more.into_iter().filter(|e| !checked.explains(&e.key)));
            }
        }
        // Not expected (the check leaves a tree that deserializes); report it rather than hide it.
        Err(e) => errors.push(yaml_error(&e)),
    }
    Err(fail(errors))
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
