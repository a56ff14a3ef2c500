//! libpq connection strings as the PostgreSQL sink reads them: `sslmode` (`disable`,
//! `prefer`, `require`, `verify-ca`, `verify-full`) and `sslrootcert` taken out of a
//! keyword/value or URL connection string (tokio-postgres knows only the first three modes and
//! no `sslrootcert`). Pure parsing, used by the config's checks and by the sink
//! (`billing::sinks::pg_tls`).
//!
//! Cold path (config load) and background (a connect of the delivery loop).

/// The connection's TLS, from `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// No `sslmode`, or `disable`: plain TCP.
    Off,
    /// `prefer`: TLS when the server offers it, unchecked; plaintext otherwise.
    Prefer,
    /// `require`: TLS or fail; the chain is checked only when a CA is given.
    Require,
    /// `verify-ca`: TLS, the chain checked against the CA.
    VerifyCa,
    /// `verify-full`: TLS, chain and host name checked.
    VerifyFull,
}

impl TlsMode {
    /// The mode and `sslrootcert` of the connection string `url`, and the string without them.
    pub fn of(url: &str) -> Result<(TlsMode, Option<String>), String> {
        let (_, mode, root) = split(url)?;
        Ok((mode, root))
    }
}

/// `url` without `sslmode` and `sslrootcert`, the mode and the root certificate file.
pub fn split(url: &str) -> Result<(String, TlsMode, Option<String>), String> {
    let mut mode = None;
    let mut root = None;
    let mut take = |k: &str, v: String| -> Result<bool, String> {
        match k {
            "sslmode" => {
                mode = Some(match v.as_str() {
                    "disable" => TlsMode::Off,
                    "prefer" | "allow" => TlsMode::Prefer,
                    "require" => TlsMode::Require,
                    "verify-ca" => TlsMode::VerifyCa,
                    "verify-full" => TlsMode::VerifyFull,
                    other => {
                        return Err(format!(
                            "sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
                        ))
                    }
                });
                Ok(true)
            }
            "sslrootcert" => {
                root = Some(v);
                Ok(true)
            }
            _ => Ok(false),
        }
    };
    let rest = if let Some((base, query)) =
        url.split_once('?').filter(|_| url.starts_with("postgres://") || url.starts_with("postgresql://"))
    {
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if !take(k, percent_decode(v))? {
                kept.push(pair);
            }
        }
        if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        }
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        url.to_string()
    } else {
        let mut kept = Vec::new();
        for (k, v) in key_values(url)? {
            if !take(&k, v.clone())? {
                kept.push(format!("{k}='{}'", v.replace('\\', "\\\\").replace('\'', "\\'")));
            }
        }
        kept.join(" ")
    };
    Ok((rest, mode.unwrap_or(TlsMode::Off), root))
}

/// The `key=value` pairs of a libpq keyword/value string (values bare or single-quoted, with
/// backslash escapes).
fn key_values(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!("`{key}` has no `=value`; write key=value pairs separated by spaces"));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                    None => return Err(format!("the value of `{key}` has no closing quote")),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex =
            b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
