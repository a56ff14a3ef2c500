//! Secrets in config values: `${ENV_NAME}` (an environment variable) and `${file:PATH}` (a
//! file's content, one trailing newline removed; a relative PATH is read from the config file's
//! directory), anywhere in a string value; `$${` is a literal `${`.
//!
//! Cold path (startup, reload and `weir check`). `expand` runs over the YAML tree after the key
//! check (`keys.rs`) and before it is deserialized, so the check and the file structs never see
//! the difference. Every reference that cannot be resolved is reported at once, with its key
//! path, the value as written and the fix. The expanded text is never shown: `Expansions::redact`
//! puts the written form back into any later error that would quote it.

use super::error::ConfigError;
use serde_yaml::Value;
use std::path::Path;

/// Secrets shorter than this (bytes) are not searched for inside other error messages (a
/// one-character value would match unrelated text); errors at the secret's own key are still
/// redacted whatever its length.
const MIN_REDACTED_LEN: usize = 4;

/// One string value that held a reference and was replaced.
#[derive(Debug, Clone)]
pub struct Expansion {
    /// Key path of the value, e.g. `admin.token`.
    pub key: String,
    /// The value as written in the file, e.g. `${WEIR_ADMIN_TOKEN}`.
    pub written: String,
    /// The value after expansion (a secret: never shown).
    pub value: String,
}

/// What `expand` did to a tree.
#[derive(Debug, Default)]
pub struct Expansions {
    /// Every value replaced, in file order.
    pub replaced: Vec<Expansion>,
    /// Every reference that could not be resolved (the value is left as written).
    pub errors: Vec<ConfigError>,
}

impl Expansions {
    /// Whether a later error at `key` only follows from an unresolved reference at or above it.
    pub fn explains(&self, key: &str) -> bool {
        self.errors.iter().any(|e| {
            key.strip_prefix(e.key.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[', ' ']))
        })
    }

    /// Remove every expanded value from `e`: an error at an expanded key shows the written form,
    /// and an expanded value quoted anywhere in the value or the fix is replaced by it.
    pub fn redact(&self, e: &mut ConfigError) {
        for x in &self.replaced {
            if e.key == x.key && !e.value.is_empty() {
                e.value = x.written.clone();
            }
            if x.value.len() >= MIN_REDACTED_LEN {
                if e.value.contains(&x.value) {
                    e.value = e.value.replace(&x.value, &x.written);
                }
                if e.fix.contains(&x.value) {
                    e.fix = e.fix.replace(&x.value, &x.written);
                }
            }
        }
    }
}

/// Replace every reference in the string values of `doc` (map keys are left alone); `base` is
/// the directory relative `${file:…}` paths are read from, `env` looks a variable up.
pub fn expand(doc: &mut Value, base: &Path, env: &dyn Fn(&str) -> Option<String>) -> Expansions {
    let mut out = Expansions::default();
    walk(doc, String::new(), base, env, &mut out);
    out
}

fn walk(v: &mut Value, at: String, base: &Path, env: &dyn Fn(&str) -> Option<String>, out: &mut Expansions) {
    match v {
        Value::String(s) => match expand_str(s, base, env) {
            Ok(None) => {}
            Ok(Some(value)) => {
                let written = std::mem::replace(s, value.clone());
                out.replaced.push(Expansion { key: at, written, value });
            }
            Err(fix) => out.errors.push(ConfigError::new(at, s.as_str(), fix)),
        },
        Value::Sequence(items) => {
            for (i, it) in items.iter_mut().enumerate() {
                walk(it, format!("{at}[{i}]"), base, env, out);
            }
        }
        Value::Mapping(m) => {
            for (k, it) in m.iter_mut() {
                let name = match k {
                    Value::String(s) => s.clone(),
                    other => serde_yaml::to_string(other).unwrap_or_default().trim().to_string(),
                };
                let path = if at.is_empty() { name } else { format!("{at}.{name}") };
                walk(it, path, base, env, out);
            }
        }
        Value::Tagged(t) => walk(&mut t.value, at, base, env, out),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// `s` with its references replaced: `Ok(None)` when it holds none (nor `$${`), `Err(fix)` at
/// the first one that cannot be resolved.
pub fn expand_str(s: &str, base: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Option<String>, String> {
    if !s.contains("${") {
        return Ok(None);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let at = &rest[i..];
        if let Some(after) = at.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = at.strip_prefix("${") {
            let Some(end) = after.find('}') else {
                return Err(
                    "has `${` without a closing `}`; write ${ENV_NAME} or ${file:/path}, or $${ for a literal ${"
                        .into(),
                );
            };
            out.push_str(&resolve(&after[..end], base, env)?);
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &at[1..];
        }
    }
    out.push_str(rest);
    Ok(Some(out))
}

/// The text of one reference (between `${` and `}`).
fn resolve(reference: &str, base: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    if let Some(file) = reference.strip_prefix("file:") {
        if file.is_empty() {
            return Err("`${file:}` names no file; write ${file:/etc/weir/secret} (relative paths are read from \
                        the config file's directory)"
                .into());
        }
        let path = base.join(file);
        return match std::fs::read_to_string(&path) {
            Ok(mut text) => {
                if text.ends_with('\n') {
                    text.pop();
                    if text.ends_with('\r') {
                        text.pop();
                    }
                }
                Ok(text)
            }
            Err(e) => {
                let cause = e.to_string();
                let cause = cause.split(" (os error").next().unwrap_or(&cause).to_string();
                Err(format!(
                    "cannot read {} ({cause}); create the file, make it readable by weir, or fix the path",
                    path.display()
                ))
            }
        };
    }
    let valid = reference.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && reference.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!(
            "`${{{reference}}}` is not a reference; write ${{ENV_NAME}} (letters, digits and _) or \
             ${{file:/path}}, or $${{ for a literal ${{"
        ));
    }
    env(reference).ok_or_else(|| {
        format!(
            "the environment variable {reference} is not set; set it in weir's environment (systemd: \
             Environment= or EnvironmentFile= in a drop-in), or write the value"
        )
    })
}

/// Look a variable up in the process environment (a value that is not UTF-8 counts as unset).
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TOKEN" => Some("s3cr3t-token-value".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn one(s: &str) -> Result<Option<String>, String> {
        expand_str(s, Path::new("/nonexistent-weir-dir"), &env)
    }

    #[test]
    fn plain_text_and_lone_dollars_are_left_alone() {
        assert_eq!(one("hello"), Ok(None));
        assert_eq!(one("costs $5 or $ {x}"), Ok(None));
    }

    #[test]
    fn env_references_expand_inside_text() {
        assert_eq!(one("${TOKEN}"), Ok(Some("s3cr3t-token-value".into())));
        assert_eq!(one("password=${TOKEN} user=${EMPTY}x"), Ok(Some("password=s3cr3t-token-value user=x".into())));
    }

    #[test]
    fn double_dollar_escapes_a_literal_reference() {
        assert_eq!(one("$${TOKEN}"), Ok(Some("${TOKEN}".into())));
        assert_eq!(one("a$$${TOKEN}"), Ok(Some("a$${TOKEN}".into())), "`$$` then `${{`: `$` and `${{`");
    }

    #[test]
    fn bad_references_are_explained() {
        assert!(one("${MISSING}").unwrap_err().contains("MISSING is not set"));
        assert!(one("${TOKEN").unwrap_err().contains("without a closing"));
        assert!(one("${no-dash}").unwrap_err().contains("is not a reference"));
        assert!(one("${}").unwrap_err().contains("is not a reference"));
        assert!(one("${file:}").unwrap_err().contains("names no file"));
    }

    #[test]
    fn file_references_read_relative_to_the_base_and_drop_one_newline() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("one"), "abc\n\n").unwrap();
        std::fs::write(dir.path().join("crlf"), "abc\r\n").unwrap();
        let abs = dir.path().join("crlf");
        let base = dir.path();
        assert_eq!(expand_str("${file:one}", base, &env), Ok(Some("abc\n".into())));
        assert_eq!(expand_str(&format!("${{file:{}}}", abs.display()), Path::new("/"), &env), Ok(Some("abc".into())));
        let e = expand_str("${file:missing}", base, &env).unwrap_err();
        assert!(e.contains(&dir.path().join("missing").display().to_string()) && e.contains("cannot read"), "{e}");
    }

    #[test]
    fn the_tree_walk_records_key_paths_and_redacts_errors() {
        let mut doc: Value =
            serde_yaml::from_str("admin: {token: \"${TOKEN}\"}\nlist: [a, \"${NOPE}\"]\nn: 3\n\"${TOKEN}\": k\n")
                .unwrap();
        let x = expand(&mut doc, Path::new("/"), &env);
        assert_eq!(doc["admin"]["token"], Value::String("s3cr3t-token-value".into()));
        assert_eq!(doc["${TOKEN}"], Value::String("k".into()), "map keys are not expanded");
        assert_eq!(x.replaced.len(), 1);
        assert_eq!((x.replaced[0].key.as_str(), x.replaced[0].written.as_str()), ("admin.token", "${TOKEN}"));
        assert_eq!(x.errors.len(), 1);
        assert_eq!((x.errors[0].key.as_str(), x.errors[0].value.as_str()), ("list[1]", "${NOPE}"));
        assert!(x.explains("list[1]") && !x.explains("list[10]") && !x.explains("admin.token"));

        let mut e = ConfigError::new("admin.token", "s3cr3t-token-value", "bad; s3cr3t-token-value is wrong");
        x.redact(&mut e);
        assert_eq!((e.value.as_str(), e.fix.as_str()), ("${TOKEN}", "bad; ${TOKEN} is wrong"));
    }
}
