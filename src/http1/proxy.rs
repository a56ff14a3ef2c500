//! The PROXY protocol (HAProxy, versions 1 and 2): the header a load balancer sends before the
//! client's bytes to say who the client is; and `X-Forwarded-For` from trusted proxies.
//!
//! Warm path (once per connection on a `proxy_protocol` listener): `parse` (sans-io) is fed the
//! bytes read so far and says whether it needs more, where the header ends and the client address
//! it names; `read` reads a header off a stream with it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The version 2 signature.
const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Longest version 1 header (the spec's bound), bytes.
const V1_MAX: usize = 107;
/// Longest version 2 header weir accepts (16 bytes plus addresses and TLVs), bytes.
pub const V2_MAX: usize = 16 + 1024;

/// What was wrong with a PROXY header (the connection is closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// The bytes are not a PROXY header.
    NotProxy,
    /// A version 1 header that does not parse.
    BadV1,
    /// A version 2 header that does not parse, or is longer than weir accepts.
    BadV2,
    /// The peer closed before sending a byte (a TCP health check, `/readyz`): not a bad header.
    Closed,
}

/// A parsed header: the client address it names (`None` for `UNKNOWN` / `LOCAL`: keep the
/// socket's) and its length in bytes.
pub type Parsed = (Option<SocketAddr>, usize);

/// Parse a PROXY header at the start of `buf`: `Ok(None)` when more bytes are needed.
pub fn parse(buf: &[u8]) -> Result<Option<Parsed>, ProxyError> {
    let n = buf.len().min(V2_SIG.len());
    if buf.get(..n) == V2_SIG.get(..n) {
        return if buf.len() < 16 { Ok(None) } else { parse_v2(buf) };
    }
    let n = buf.len().min(6);
    if buf.get(..n) != b"PROXY ".get(..n) {
        return Err(ProxyError::NotProxy);
    }
    match buf.windows(2).position(|w| w == b"\r\n") {
        None if buf.len() >= V1_MAX => Err(ProxyError::BadV1),
        None => Ok(None),
        Some(end) => {
            let line = std::str::from_utf8(buf.get(..end).unwrap_or_default()).map_err(|_| ProxyError::BadV1)?;
            Ok(Some((parse_v1(line)?, end + 2)))
        }
    }
}

fn parse_v1(line: &str) -> Result<Option<SocketAddr>, ProxyError> {
    let mut parts = line.split(' ');
    let (Some("PROXY"), Some(family)) = (parts.next(), parts.next()) else { return Err(ProxyError::BadV1) };
    if family == "UNKNOWN" {
        return Ok(None);
    }
    let (Some(src), Some(_dst), Some(sport), Some(_dport), None) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ProxyError::BadV1);
    };
    let ip: IpAddr = match family {
        "TCP4" => src.parse::<Ipv4Addr>().map(IpAddr::V4).map_err(|_| ProxyError::BadV1)?,
        "TCP6" => src.parse::<Ipv6Addr>().map(IpAddr::V6).map_err(|_| ProxyError::BadV1)?,
        _ => return Err(ProxyError::BadV1),
    };
    let port: u16 = sport.parse().map_err(|_| ProxyError::BadV1)?;
    Ok(Some(SocketAddr::new(ip, port)))
}

fn parse_v2(buf: &[u8]) -> Result<Option<Parsed>, ProxyError> {
    let byte = |i: usize| buf.get(i).copied().ok_or(ProxyError::BadV2);
    let (ver_cmd, fam) = (byte(12)?, byte(13)?);
    let len = usize::from(u16::from_be_bytes([byte(14)?, byte(15)?]));
    let total = 16 + len;
    if ver_cmd >> 4 != 2 || total > V2_MAX {
        return Err(ProxyError::BadV2);
    }
    if buf.len() < total {
        return Ok(None);
    }
    let body = buf.get(16..total).ok_or(ProxyError::BadV2)?;
    let addr = match (ver_cmd & 0x0F, fam) {
        // LOCAL: a health check from the proxy itself; keep the socket's address.
        (0, _) => None,
        (1, 0x11) | (1, 0x12) => {
            let b: &[u8; 12] = body.get(..12).and_then(|b| b.try_into().ok()).ok_or(ProxyError::BadV2)?;
            let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be_bytes([b[8], b[9]])))
        }
        (1, 0x21) | (1, 0x22) => {
            let b: &[u8; 36] = body.get(..36).and_then(|b| b.try_into().ok()).ok_or(ProxyError::BadV2)?;
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&b[..16]);
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), u16::from_be_bytes([b[32], b[33]])))
        }
        // UNSPEC or a socket family weir does not route (UNIX): keep the socket's address.
        (1, _) => None,
        _ => return Err(ProxyError::BadV2),
    };
    Ok(Some((addr, total)))
}

/// Read a PROXY header from `stream` within `timeout`: the client address it names and the
/// bytes read after it (the start of the request). Anything else is an error (the listener
/// expects PROXY: the connection is closed); `Closed` when the peer sent nothing at all.
pub async fn read<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> Result<(Option<SocketAddr>, Vec<u8>), ProxyError> {
    let io = async {
        let mut buf = Vec::with_capacity(256);
        loop {
            if let Some((addr, len)) = parse(&buf)? {
                return Ok((addr, buf.split_off(len)));
            }
            let mut chunk = [0u8; 512];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) if buf.is_empty() => return Err(ProxyError::Closed),
                Ok(0) | Err(_) => return Err(ProxyError::NotProxy),
                Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            }
        }
    };
    tokio::time::timeout(timeout, io).await.unwrap_or(Err(ProxyError::NotProxy))
}

/// The client behind trusted proxies: walking `X-Forwarded-For` values (all of them, in order)
/// from the right, the first address that is not `trusted`; the leftmost when every one is;
/// `None` when there is no address or one does not parse.
pub fn forwarded_client<'a>(
    values: impl Iterator<Item = &'a [u8]>,
    trusted: impl Fn(IpAddr) -> bool,
) -> Option<IpAddr> {
    let text: Vec<String> = values.map(|v| String::from_utf8_lossy(v).into_owned()).collect();
    let addrs: Vec<IpAddr> =
        text.iter().flat_map(|v| v.split(',')).map(|a| a.trim().parse().ok()).collect::<Option<_>>()?;
    addrs.iter().rev().find(|ip| !trusted(**ip)).or(addrs.first()).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIG.to_vec();
        h.push(0x20 | cmd);
        h.push(fam);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    /// Fed at every split point: `None` until the whole header is there, then the same answer.
    fn at_every_split(buf: &[u8]) -> Result<Option<Parsed>, ProxyError> {
        let full = parse(buf);
        for cut in 0..buf.len() {
            let part = parse(&buf[..cut]);
            if let Ok(Some((_, len))) = full {
                if cut < len {
                    assert_eq!(part, Ok(None), "cut at {cut}");
                }
            }
        }
        full
    }

    #[test]
    fn version_1() {
        let h = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(at_every_split(h), Ok(Some((Some("203.0.113.7:51234".parse().unwrap()), 43))));
        let h = b"PROXY TCP6 2001:db8::7 ::1 4000 443\r\n";
        assert_eq!(at_every_split(h), Ok(Some((Some("[2001:db8::7]:4000".parse().unwrap()), h.len()))));
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Ok(Some((None, 15))));
        assert_eq!(parse(b"PROXY TCP4 1.2.3 4.5.6.7 1 2\r\n"), Err(ProxyError::BadV1));
        assert_eq!(parse(&[b"PROXY ".as_slice(), &[b'x'; 120]].concat()), Err(ProxyError::BadV1));
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ProxyError::NotProxy));
    }

    #[test]
    fn version_2() {
        let mut body = vec![198, 51, 100, 9, 10, 0, 0, 1];
        body.extend_from_slice(&4242u16.to_be_bytes());
        body.extend_from_slice(&443u16.to_be_bytes());
        body.extend_from_slice(&[0x04, 0x00, 0x01, 0xff]); // a TLV, skipped
        let h = [v2(1, 0x11, &body), b"GET".to_vec()].concat();
        assert_eq!(at_every_split(&h), Ok(Some((Some("198.51.100.9:4242".parse().unwrap()), 16 + body.len()))));
        let mut six = vec![0u8; 36];
        six[0] = 0x20;
        six[1] = 0x01;
        six[15] = 7;
        six[32..34].copy_from_slice(&9000u16.to_be_bytes());
        assert_eq!(parse(&v2(1, 0x21, &six)), Ok(Some((Some("[2001::7]:9000".parse().unwrap()), 52))));
        assert_eq!(parse(&v2(0, 0x00, &[])), Ok(Some((None, 16))), "LOCAL");
        assert_eq!(parse(&v2(1, 0x11, &[1, 2])), Err(ProxyError::BadV2), "short addresses");
        let mut bad = v2(1, 0x11, &body);
        bad[12] = 0x31;
        assert_eq!(parse(&bad), Err(ProxyError::BadV2), "version 3");
        assert_eq!(parse(&v2(1, 0x11, &vec![0; 2000])), Err(ProxyError::BadV2), "too long");
    }

    #[tokio::test]
    async fn read_gives_back_what_follows_and_tells_an_empty_connection_apart() {
        let t = Duration::from_secs(1);
        let mut bytes: &[u8] = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\r\n\x16\x03\x01";
        let (addr, rest) = read(&mut bytes, t).await.unwrap();
        assert_eq!((addr, rest.as_slice()), (Some("203.0.113.7:51234".parse().unwrap()), &b"\x16\x03\x01"[..]));
        assert_eq!(read(&mut &b""[..], t).await, Err(ProxyError::Closed), "a TCP probe");
        assert_eq!(read(&mut &b"PROXY TCP4"[..], t).await, Err(ProxyError::NotProxy), "cut short");
        assert_eq!(read(&mut &b"\x16\x03\x01\x02"[..], t).await, Err(ProxyError::NotProxy), "a ClientHello");
    }

    #[test]
    fn forwarded_for() {
        let trusted = |ip: IpAddr| matches!(ip, IpAddr::V4(v4) if v4.octets()[0] == 10);
        let xff = |v: &[&str]| forwarded_client(v.iter().map(|s| s.as_bytes()), trusted);
        assert_eq!(xff(&["203.0.113.5, 10.0.0.2"]), Some("203.0.113.5".parse().unwrap()));
        assert_eq!(
            xff(&["6.6.6.6, 203.0.113.5", "10.0.0.2"]),
            Some("203.0.113.5".parse().unwrap()),
            "a forged left part is ignored"
        );
        assert_eq!(xff(&["10.0.0.3, 10.0.0.2"]), Some("10.0.0.3".parse().unwrap()));
        assert_eq!(xff(&["junk"]), None);
        assert_eq!(xff(&[]), None);
    }
}
