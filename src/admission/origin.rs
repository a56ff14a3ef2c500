//! Origin checks (`routes[].origins`): a browser's `Origin` must be on the route's allow-list,
//! so a page on another site cannot open a WebSocket with the user's cookies (cross-site
//! WebSocket hijacking). Warm path (once per upgrade), pure.

use crate::config::Origins;
use crate::http1::Fields;

/// Whether a request with `headers` may connect under `allowed`.
pub fn allowed(allowed: &Origins, headers: &Fields) -> bool {
    let Some(origin) = headers.get("origin") else { return allowed.allow_missing };
    let origin = origin.trim_end_matches('/').to_ascii_lowercase();
    if allowed.exact.contains(&origin) {
        return true;
    }
    let Some((scheme, host)) = origin.split_once("://") else { return false };
    allowed
        .wildcard
        .iter()
        .any(|(s, suffix)| s == scheme && host.len() > suffix.len() && host.ends_with(suffix.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origins(allow_missing: bool) -> Origins {
        Origins {
            exact: vec!["https://app.example.com".into()],
            wildcard: vec![("https".into(), ".example.com".into())],
            allow_missing,
        }
    }

    fn with_origin(o: &str) -> Fields {
        Fields::from_pairs([("Origin", o)])
    }

    #[test]
    fn exact_wildcard_missing_and_lookalikes() {
        let o = origins(true);
        assert!(allowed(&o, &with_origin("https://app.example.com")));
        assert!(allowed(&o, &with_origin("HTTPS://App.Example.com/")));
        assert!(allowed(&o, &with_origin("https://eu.example.com")));
        assert!(!allowed(&o, &with_origin("https://example.com")), "the wildcard needs a subdomain");
        assert!(!allowed(&o, &with_origin("https://evil-example.com")));
        assert!(!allowed(&o, &with_origin("https://example.com.evil.net")));
        assert!(!allowed(&o, &with_origin("http://eu.example.com")), "the scheme must match");
        assert!(!allowed(&o, &with_origin("null")));
        assert!(allowed(&o, &Fields::default()));
        assert!(!allowed(&origins(false), &Fields::default()));
    }
}
