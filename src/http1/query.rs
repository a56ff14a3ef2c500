//! Query strings and percent-escapes (warm path, pure): object ids and credentials read from a
//! request target's query.

/// Decode `%XX` escapes (and `+` as a space when `plus_is_space`, as in query strings); `None` on
/// a bad escape.
pub fn percent_decode(s: &str, plus_is_space: bool) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        match c {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Some(out)
}

/// The query part of a request target (after the first `?`; empty when there is none).
pub fn query_of(target: &str) -> &str {
    target.split_once('?').map_or("", |(_, q)| q)
}

/// The first parameter called `name` in `query`: `None` when absent, `Some(None)` when its
/// value has a bad escape, else its decoded value.
pub fn param(query: &str, name: &str) -> Option<Option<Vec<u8>>> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| percent_decode(k, true).is_some_and(|k| k == name.as_bytes()))
        .map(|(_, v)| percent_decode(v, true))
}

/// `target` without every query parameter called `name` (the `?` goes too when nothing is left).
pub fn without_param(target: &str, name: &str) -> String {
    let Some((path, query)) = target.split_once('?') else { return target.to_string() };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| {
            let k = kv.split_once('=').map_or(*kv, |(k, _)| k);
            percent_decode(k, true).is_none_or(|k| k != name.as_bytes())
        })
        .collect();
    if kept.iter().all(|kv| kv.is_empty()) {
        path.to_string()
    } else {
        format!("{path}?{}", kept.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_found_decoded_and_removed() {
        let t = "/chat?room=a%20b&key=s3cr%2Bt&x=1&key=again";
        assert_eq!(param(query_of(t), "key"), Some(Some(b"s3cr+t".to_vec())));
        assert_eq!(param(query_of(t), "room"), Some(Some(b"a b".to_vec())));
        assert_eq!(param(query_of(t), "nope"), None);
        assert_eq!(param("k=%zz", "k"), Some(None), "a bad escape");
        assert_eq!(without_param(t, "key"), "/chat?room=a%20b&x=1");
        assert_eq!(without_param("/chat?key=1", "key"), "/chat");
        assert_eq!(without_param("/chat", "key"), "/chat");
        assert_eq!(percent_decode("%4", false), None);
    }
}
