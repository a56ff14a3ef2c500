//! `RejectReason`: every way weir refuses a request, mapped in one place to one HTTP status,
//! one response body and one metric label.
//!
//! Warm path. The label is the `reason` on `weir_handshake_rejections_total` and in usage
//! records, so responses, metrics and records always agree.

/// Why weir refused a request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// Not a WebSocket upgrade on a `websocket` route.
    NotWebSocket,
    /// Upgrade with a method other than GET.
    MethodNotGet,
    /// Upgrade over HTTP/1.0.
    HttpVersion,
    /// `Connection` does not contain `upgrade`.
    ConnectionHeader,
    /// `Sec-WebSocket-Version` is not 13.
    UnsupportedVersion,
    /// `Sec-WebSocket-Key` missing or not base64 of 16 bytes.
    BadKey,
    /// The upgrade request carries a body.
    RequestBody,
    /// The request head is not valid HTTP/1.x.
    MalformedRequest,
    /// The request head is over the size limit.
    HeadTooLarge,
    /// No route matches the host and path.
    UnknownRoute,
    /// Every backend of the pool is failing its health check.
    NoHealthyBackend,
    /// The backend refused or reset the connection.
    BackendUnreachable,
    /// The backend did not accept the connection or answer the upgrade in time.
    BackendTimeout,
    /// The backend answered 101 with a wrong `Sec-WebSocket-Accept`, or no valid response.
    BackendBadHandshake,
    /// The TLS handshake with a `tls` backend failed (untrusted or wrong-name certificate, no
    /// TLS): never retried in plaintext.
    BackendTls,
    /// The object id is missing or breaks the namespace's id rules (the body names the rule).
    BadObjectId,
    /// The object's previous host failed and its connections have not ended yet.
    ObjectMoving,
    /// The usage spool cannot be written (and `usage.on_spool_error` is `reject`).
    SpoolUnavailable,
    /// Fewer than `server.fd_reserve` file descriptors are free.
    DescriptorsExhausted,
    /// The request has more than one `Host` header (RFC 9112 §3.2).
    DuplicateHost,
    /// The path has a dot segment, an encoded slash or backslash, a backslash or a NUL.
    BadPath,
    /// The route authenticates and the request carries no credential.
    NoCredential,
    /// The credential is unknown, badly signed or expired (the record's reason names which).
    BadCredential,
    /// The credential is valid but may not open this object.
    Forbidden,
    /// A browser `Origin` not on the route's `origins` (or none, where one is required).
    OriginNotAllowed,
    /// `admission.max_connections` or the route's cap is reached.
    AtCapacity,
    /// The client address has `admission.max_connections_per_ip` open.
    ClientAtCapacity,
    /// The tenant has `admission.max_connections_per_tenant` open.
    TenantAtCapacity,
    /// The client address opens connections faster than `admission.ip_rate`.
    ClientRateLimited,
    /// The tenant opens connections faster than `admission.tenant_rate`.
    TenantRateLimited,
    /// The route's `auth.external` endpoint refused: the client gets the endpoint's own status
    /// and body (`passed_response`; `status` and `body` here are only the nominal ones), the
    /// record says `external_auth: <status>`.
    ExternalAuthDenied,
    /// The route's `auth.external` endpoint could not be asked (timeout, connection error, bad
    /// answer) and `on_error` is `deny`.
    ExternalAuthUnavailable,
    /// The tenant is over one of its `quotas` for the current period.
    QuotaExceeded,
    /// The instance is draining (`POST /api/drain`).
    Draining,
    /// The cluster's etcd does not answer (or this instance lost its lease): object routes
    /// cannot find an object's owner.
    ClusterUnavailable,
}

impl RejectReason {
    /// Every reason, for metrics set up at startup (a new variant goes here too; the test
    /// `all_lists_every_reason_once` checks the labels are distinct).
    pub const ALL: [RejectReason; 35] = {
        use RejectReason::*;
        [
            NotWebSocket,
            MethodNotGet,
            HttpVersion,
            ConnectionHeader,
            UnsupportedVersion,
            BadKey,
            RequestBody,
            MalformedRequest,
            HeadTooLarge,
            UnknownRoute,
            NoHealthyBackend,
            BackendUnreachable,
            BackendTimeout,
            BackendBadHandshake,
            BackendTls,
            BadObjectId,
            ObjectMoving,
            SpoolUnavailable,
            DescriptorsExhausted,
            DuplicateHost,
            BadPath,
            NoCredential,
            BadCredential,
            Forbidden,
            OriginNotAllowed,
            AtCapacity,
            ClientAtCapacity,
            TenantAtCapacity,
            ClientRateLimited,
            TenantRateLimited,
            ExternalAuthDenied,
            ExternalAuthUnavailable,
            QuotaExceeded,
            Draining,
            ClusterUnavailable,
        ]
    };

    /// The HTTP status sent to the client.
    pub fn status(self) -> u16 {
        use RejectReason::*;
        match self {
            NotWebSocket | MethodNotGet | HttpVersion | ConnectionHeader | BadKey | RequestBody | MalformedRequest
            | BadObjectId | DuplicateHost | BadPath => 400,
            UnsupportedVersion => 426,
            HeadTooLarge => 431,
            UnknownRoute => 404,
            NoHealthyBackend
            | ObjectMoving
            | SpoolUnavailable
            | DescriptorsExhausted
            | AtCapacity
            | ExternalAuthUnavailable
            | Draining
            | ClusterUnavailable => 503,
            NoCredential | BadCredential => 401,
            Forbidden | OriginNotAllowed | ExternalAuthDenied => 403,
            ClientAtCapacity | TenantAtCapacity | ClientRateLimited | TenantRateLimited | QuotaExceeded => 429,
            BackendUnreachable | BackendBadHandshake | BackendTls => 502,
            BackendTimeout => 504,
        }
    }

    /// The response body (short text).
    pub fn body(self) -> &'static str {
        use RejectReason::*;
        match self {
            NotWebSocket => "Expected websocket",
            MethodNotGet => "WebSocket upgrade requires GET",
            HttpVersion => "WebSocket upgrade requires HTTP/1.1",
            ConnectionHeader => "Connection header must contain upgrade",
            UnsupportedVersion => "Unsupported Sec-WebSocket-Version; this gateway speaks 13",
            BadKey => "Sec-WebSocket-Key must be the base64 encoding of 16 bytes",
            RequestBody => "WebSocket upgrade request must not have a body",
            MalformedRequest => "Malformed request",
            HeadTooLarge => "Request header fields too large",
            UnknownRoute => "No route",
            NoHealthyBackend => "No healthy backend",
            BackendUnreachable => "Backend unreachable",
            BackendTimeout => "Backend timed out",
            BackendBadHandshake => "Backend sent an invalid WebSocket handshake",
            BackendTls => "Backend TLS handshake failed",
            BadObjectId => "Bad object id",
            ObjectMoving => "Object is moving to another host; retry",
            SpoolUnavailable => "Usage cannot be recorded right now; retry",
            DuplicateHost => "More than one Host header",
            BadPath => "Path with a dot segment, an encoded slash or backslash, a backslash or NUL",
            DescriptorsExhausted => "Too many open connections; retry",
            NoCredential => "Credentials required",
            BadCredential => "Invalid credentials",
            Forbidden => "Not allowed",
            OriginNotAllowed => "Origin not allowed",
            AtCapacity => "Too many open connections; retry",
            ClientAtCapacity => "Too many open connections from this address",
            TenantAtCapacity => "Too many open connections for this tenant",
            ClientRateLimited => "Too many new connections from this address; retry later",
            TenantRateLimited => "Too many new connections for this tenant; retry later",
            QuotaExceeded => "Quota exceeded",
            Draining => "This instance is draining; retry",
            ClusterUnavailable => "Object owners cannot be found right now; retry",
            ExternalAuthDenied => "Not allowed",
            ExternalAuthUnavailable => "Authentication is unavailable right now; retry",
        }
    }

    /// The metric label and usage-record `reason`.
    pub fn as_str(self) -> &'static str {
        use RejectReason::*;
        match self {
            NotWebSocket => "not_websocket",
            MethodNotGet => "method_not_get",
            HttpVersion => "http_version",
            ConnectionHeader => "connection_header",
            UnsupportedVersion => "unsupported_version",
            BadKey => "bad_key",
            RequestBody => "request_body",
            MalformedRequest => "malformed_request",
            HeadTooLarge => "head_too_large",
            UnknownRoute => "unknown_route",
            NoHealthyBackend => "no_healthy_backend",
            BackendUnreachable => "backend_unreachable",
            BackendTimeout => "backend_timeout",
            BackendBadHandshake => "backend_bad_handshake",
            BackendTls => "backend_tls",
            BadObjectId => "bad_object_id",
            ObjectMoving => "object_moving",
            SpoolUnavailable => "spool_unavailable",
            DuplicateHost => "duplicate_host",
            BadPath => "bad_path",
            DescriptorsExhausted => "descriptors_exhausted",
            NoCredential => "no_credential",
            BadCredential => "bad_credential",
            Forbidden => "forbidden",
            OriginNotAllowed => "origin_not_allowed",
            AtCapacity => "at_capacity",
            ClientAtCapacity => "client_at_capacity",
            TenantAtCapacity => "tenant_at_capacity",
            ClientRateLimited => "client_rate_limited",
            TenantRateLimited => "tenant_rate_limited",
            QuotaExceeded => "quota_exceeded",
            Draining => "draining",
            ClusterUnavailable => "cluster_unavailable",
            ExternalAuthDenied => "external_auth",
            ExternalAuthUnavailable => "external_auth_unavailable",
        }
    }

    /// The usage-record `outcome`: backend failures keep their own name, client errors are
    /// `rejected`.
    pub fn outcome(self) -> &'static str {
        use RejectReason::*;
        match self {
            NoHealthyBackend
            | BackendUnreachable
            | BackendTimeout
            | BackendBadHandshake
            | BackendTls
            | ObjectMoving
            | SpoolUnavailable
            | DescriptorsExhausted
            | AtCapacity
            | ExternalAuthUnavailable
            | Draining
            | ClusterUnavailable => self.as_str(),
            _ => "rejected",
        }
    }

    /// Extra response headers.
    pub fn extra_headers(self) -> &'static str {
        match self {
            RejectReason::UnsupportedVersion => "Sec-WebSocket-Version: 13\r\n",
            RejectReason::NoCredential | RejectReason::BadCredential => "WWW-Authenticate: Bearer realm=\"weir\"\r\n",
            _ => "",
        }
    }

    /// The complete HTTP/1.1 response (the connection is closed after it).
    pub fn response(self) -> Vec<u8> {
        self.response_with(self.body(), None)
    }

    /// The response with `body` in place of the standard one (e.g. which id rule broke) and a
    /// `Retry-After` in seconds if given (caps and rates).
    pub fn response_with(self, body: &str, retry_after: Option<u64>) -> Vec<u8> {
        let status = self.status();
        let retry = retry_after.map(|s| format!("Retry-After: {s}\r\n")).unwrap_or_default();
        format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n{}{retry}Connection: close\r\n\r\n{body}",
            reason_phrase(status),
            body.len(),
            self.extra_headers()
        )
        .into_bytes()
    }
}

/// The answer passed on to the client for an `auth.external` endpoint's refusal: the endpoint's
/// `status`, the header fields weir passes on from it (`headers`, e.g. `WWW-Authenticate`) and its
/// `body` (already bounded by the caller), then the connection is closed.
pub fn passed_response(status: u16, headers: &[(String, Vec<u8>)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason_phrase(status)).into_bytes();
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("Content-Length: {}\r\nConnection: close\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    out
}

/// The label used for a backend's non-101 answer passed through to the client.
pub const BACKEND_REFUSED: &str = "backend_refused";

/// The label of a connection on a `proxy_protocol` listener closed for a missing or bad PROXY
/// header (no answer is sent; route `none`).
pub const BAD_PROXY_HEADER: &str = "bad_proxy_header";

fn reason_phrase(status: u16) -> &'static str {
    match status {
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        407 => "Proxy Authentication Required",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn all_lists_every_reason_once() {
        let labels: std::collections::HashSet<_> = RejectReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), RejectReason::ALL.len());
        assert!(!labels.contains(BACKEND_REFUSED));
    }

    use super::{RejectReason, BACKEND_REFUSED};

    #[test]
    fn expected_websocket_body_is_exact() {
        let r = String::from_utf8(RejectReason::NotWebSocket.response()).unwrap();
        assert!(r.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(r.ends_with("\r\n\r\nExpected websocket"));
    }

    #[test]
    fn a_passed_answer_keeps_its_status_headers_and_body() {
        let headers = [("WWW-Authenticate".to_string(), b"Basic realm=\"x\"".to_vec())];
        let r = String::from_utf8(super::passed_response(401, &headers, b"who are you")).unwrap();
        assert_eq!(
            r,
            "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"x\"\r\nContent-Length: 11\r\nConnection: close\r\n\r\nwho are you"
        );
        assert!(String::from_utf8(super::passed_response(418, &[], b""))
            .unwrap()
            .starts_with("HTTP/1.1 418 Error\r\n"));
    }

    #[test]
    fn version_rejection_names_13() {
        let r = String::from_utf8(RejectReason::UnsupportedVersion.response()).unwrap();
        assert!(r.starts_with("HTTP/1.1 426 "));
        assert!(r.contains("\r\nSec-WebSocket-Version: 13\r\n"));
    }
}
