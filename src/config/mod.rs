//! Configuration: `config.yaml` → file types → validated runtime types.
//!
//! Cold path (startup and `weir check`). The pipeline is
//! `config.yaml --serde_yaml--> Value --keys.rs--> FileConfig (file.rs) --validate.rs--> Config
//! (model.rs)`: `keys.rs` checks the YAML tree against the shape of the file first, so unknown
//! keys and values of the wrong kind are reported all together (serde would stop at the first)
//! along with the value errors of the rest of the file. This module is the only place that calls
//! `serde_yaml`, so the YAML crate can be swapped in one place. Nothing stops at the first
//! problem: every error names its key path, the value and the fix (`error.rs`).
//!
//! Between the check and deserializing, `secrets.rs` expands `${ENV_NAME}` and `${file:PATH}`
//! in string values. Relative paths (in values and in `${file:…}`) are resolved against the
//! config file's directory (`load`), never the working directory, so `weir run --config
//! /etc/weir/config.yaml` means the same from anywhere.
//!
//! `pg_url.rs` reads libpq connection strings (`sslmode`, `sslrootcert`) for the checks here
//! and for the PostgreSQL sink, which imports it (so config does not import billing: the
//! dependency runs one way).

pub mod admission;
pub mod cluster;
pub mod error;
pub mod file;
pub mod keys;
pub mod limits;
pub mod model;
pub mod pg_url;
pub mod secrets;
pub mod validate;

pub use error::{ConfigError, ConfigErrors};
pub use model::*;

use std::path::{Path, PathBuf};

/// The directory the config file at `path` is in, as an absolute path: relative paths in the
/// file are resolved against it.
pub fn config_dir(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    absolute.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Read, parse and validate the configuration at `path`; relative paths in it are resolved
/// against its directory (`config_dir`).
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
    parse_in(&text, &shown, &config_dir(path))
}

/// Parse and validate configuration text; `origin` names the source in error messages. Relative
/// paths stay relative to the working directory (`parse_in` resolves them against a directory).
pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigErrors> {
    parse_in(text, origin, Path::new(""))
}

/// Parse and validate configuration text whose relative paths are relative to `dir`.
///
/// Every unknown key, value of the wrong kind and missing required key is reported (`keys.rs`),
/// together with the value errors of the rest of the file, except those that only follow from
/// one already reported. Only a YAML syntax error stops everything (with its line and column).
pub fn parse_in(text: &str, origin: &str, dir: &Path) -> Result<Config, ConfigErrors> {
    let fail = |errors| ConfigErrors { path: origin.to_string(), errors };
    let mut doc: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| fail(vec![yaml_error(&e)]))?;
    let mut checked = keys::check(&mut doc);
    let secrets = secrets::expand(&mut doc, dir, &secrets::process_env);
    if checked.errors.is_empty() && secrets.replaced.is_empty() && secrets.errors.is_empty() {
        // A clean file is deserialized from its text, exactly as written: serde_yaml keeps a
        // scalar's text for a string key there (`tenant: 0042` stays "0042"), where the `Value`
        // tree has already read it as the number 42. The check takes a key set to nothing as
        // left out; serde does so for `server:` but not for `server: ~` or `demo_page: ~` (the
        // tree cannot tell them apart), so those still fail here, alone, as they always did.
        let file: file::FileConfig = serde_yaml::from_str(text).map_err(|e| fail(vec![yaml_error(&e)]))?;
        return validate::validate(&file, dir).map_err(fail);
    }
    // With a reference expanded, the expanded tree is what is deserialized (a scalar read as a
    // number there keeps its number's text: `tenant: 0042` is "42" in such a file).
    checked.locate(text);
    let mut errors = std::mem::take(&mut checked.errors);
    errors.extend(secrets.errors.iter().cloned());
    match serde_yaml::from_value::<file::FileConfig>(doc) {
        Ok(file) => match validate::validate(&file, dir) {
            Ok(config) if errors.is_empty() => return Ok(config),
            Ok(_) => {}
            Err(more) => {
                errors.extend(more.into_iter().filter(|e| !checked.explains(&e.key) && !secrets.explains(&e.key)))
            }
        },
        // Not expected (the check leaves a tree that deserializes); report it rather than hide it.
        Err(e) => errors.push(yaml_error(&e)),
    }
    for e in &mut errors {
        secrets.redact(e);
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
    let unverified = |at: String, tls: &Option<crate::tls_client::ClientTls>, out: &mut Vec<String>| {
        if tls.as_ref().is_some_and(|t| !t.verify) {
            out.push(format!(
                "{at}.verify: false: weir does not check the certificate, so anyone on the path can \
                 impersonate the backend; give ca_file (and sni) and remove verify: false"
            ));
        }
    };
    let cert_routes: Vec<&str> = config
        .routes
        .iter()
        .filter(|r| r.auth.iter().flat_map(|a| &a.methods).any(|m| matches!(m, AuthMethod::ClientCert(_))))
        .map(|r| r.name.as_str())
        .collect();
    if !cert_routes.is_empty() {
        for (i, l) in config.listeners.iter().enumerate() {
            if l.tls.as_ref().is_none_or(|t| t.client_auth.is_none()) {
                out.push(format!(
                    "listeners[{i}]: {} asks for no client certificate, so routes {cert_routes:?} (auth.client_cert) \
                     admit its clients only by their other methods (else 401); add tls.client_auth to it or \
                     bind it elsewhere",
                    l.address
                ));
            }
        }
    }
    for (i, p) in config.pools.iter().enumerate() {
        unverified(format!("pools[{i}].tls"), &p.tls, &mut out);
    }
    for (i, o) in config.objects.iter().enumerate() {
        if let ObjectKind::Hosts { tls, .. } = &o.kind {
            unverified(format!("objects[{i}].tls"), tls, &mut out);
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
