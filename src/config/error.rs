//! Configuration errors: each names the key path, the bad value and the fix.
//!
//! Cold path. Validation collects every problem before failing, so `weir check` shows all of
//! them at once, one per line.

use std::fmt;

/// One problem in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Key path, e.g. `pools[1].backends[0]`.
    pub key: String,
    /// The offending value as written (empty when the key is missing).
    pub value: String,
    /// What is wrong and how to fix it.
    pub fix: String,
    /// Line and column (1-based) of the key in the file, where known: unknown keys, values of
    /// the wrong kind and missing keys (their section) carry one, value errors do not.
    pub position: Option<(usize, usize)>,
}

impl ConfigError {
    /// A problem at `key` with `value`; `fix` says what is wrong and what to write instead.
    pub fn new(key: impl Into<String>, value: impl fmt::Display, fix: impl Into<String>) -> Self {
        ConfigError { key: key.into(), value: value.to_string(), fix: fix.into(), position: None }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key)?;
        if let Some((line, column)) = self.position {
            write!(f, " (line {line}, column {column})")?;
        }
        if self.value.is_empty() {
            write!(f, ": {}", self.fix)
        } else {
            write!(f, ": {:?}: {}", self.value, self.fix)
        }
    }
}

/// Every problem found in one configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    /// The file the problems are in.
    pub path: String,
    /// The problems, in file order.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        writeln!(f, "{}: {n} configuration error{}", self.path, if n == 1 { "" } else { "s" })?;
        for e in &self.errors {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}
