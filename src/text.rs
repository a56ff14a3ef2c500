//! Addresses and ids appended to byte buffers as `Display` prints them, without the formatter:
//! the connection records (`billing::json`) and the backend's upgrade request
//! (`gateway::upstream`) write a client or backend address per connection, and `Display` of an
//! IPv4 address goes through `core::fmt` once per octet (about 1 400 instructions for an
//! `a.b.c.d:port`, callgrind; this writes it in about 300).
//!
//! A connection id is written the same way (`push_uuid`): `uuid`'s own encoder picks each digit
//! with a branch and copies the text twice (about 125 instructions; this, about 85), and a
//! connection's id is written five times (its two records' keys and ids, the backend's request).
//!
//! Warm path (a few addresses per connection). Leaf: imports nothing from weir.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Append `ip` as `Display` prints it.
pub fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => push_ipv4(out, v4),
        // Rare enough on these paths to leave to `Display` (its `::` compression rules).
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// Two lower-case hex digits per byte value.
const HEX_PAIRS: [[u8; 2]; 256] = {
    let digits = b"0123456789abcdef";
    let mut pairs = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        pairs[i] = [digits[i >> 4], digits[i & 15]];
        i += 1;
    }
    pairs
};

/// Append `id` as `Uuid::hyphenated` prints it (lower case, 36 bytes: 8-4-4-4-12 digits).
pub fn push_uuid(out: &mut Vec<u8>, id: &uuid::Uuid) {
    /// Where each byte's two digits go: the hyphens (already in `text`) sit at 8, 13, 18, 23.
    const AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
    let mut text = [b'-'; 36];
    for (&at, &b) in AT.iter().zip(id.as_bytes()) {
        if let Some(pair) = text.get_mut(at..at + 2) {
            pair.copy_from_slice(&HEX_PAIRS[usize::from(b)]);
        }
    }
    out.extend_from_slice(&text);
}

/// Append `addr` as `Display` prints it: `a.b.c.d:port`, or `[v6%scope]:port`.
pub fn push_socket_addr(out: &mut Vec<u8>, addr: &SocketAddr) {
    match addr {
        SocketAddr::V4(a) => {
            // Built on the stack and appended at once: one copy, not one per piece.
            let mut text = Text::<21>::default();
            text.ipv4(*a.ip());
            text.push(b':');
            text.decimal(a.port());
            out.extend_from_slice(text.as_bytes());
        }
        SocketAddr::V6(a) => {
            // Writing to a Vec cannot fail.
            let _ = write!(out, "{a}");
        }
    }
}

fn push_ipv4(out: &mut Vec<u8>, ip: Ipv4Addr) {
    let mut text = Text::<15>::default();
    text.ipv4(ip);
    out.extend_from_slice(text.as_bytes());
}

/// A short text built on the stack (`N` bytes at most: what does not fit is dropped, which the
/// callers' sizes rule out).
struct Text<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> Default for Text<N> {
    fn default() -> Self {
        Text { bytes: [0; N], len: 0 }
    }
}

impl<const N: usize> Text<N> {
    fn push(&mut self, b: u8) {
        if let Some(slot) = self.bytes.get_mut(self.len) {
            *slot = b;
            self.len += 1;
        }
    }

    /// `n` in decimal, its digits written in place right to left (no `itoa` buffer copied in:
    /// a copy of a length known only at run time is a `memcpy` call).
    fn decimal(&mut self, n: u16) {
        let digits = match n {
            0..=9 => 1,
            10..=99 => 2,
            100..=999 => 3,
            1_000..=9_999 => 4,
            _ => 5,
        };
        if let Some(slot) = self.bytes.get_mut(self.len..self.len + digits) {
            let mut n = n;
            for digit in slot.iter_mut().rev() {
                *digit = b'0' + (n % 10) as u8;
                n /= 10;
            }
            self.len += digits;
        }
    }

    fn ipv4(&mut self, ip: Ipv4Addr) {
        let [a, b, c, d] = ip.octets();
        self.decimal(u16::from(a));
        for octet in [b, c, d] {
            self.push(b'.');
            self.decimal(u16::from(octet));
        }
    }

    fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv6Addr, SocketAddrV6};

    fn any_addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
            (any::<[u16; 8]>(), any::<u16>(), any::<u32>()).prop_map(|(ip, port, scope)| {
                SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(ip), port, 0, scope))
            }),
        ]
    }

    proptest! {
        #[test]
        fn addresses_read_as_display_prints_them(addr in any_addr()) {
            let mut out = b"x".to_vec();
            push_socket_addr(&mut out, &addr);
            prop_assert_eq!(String::from_utf8(out).unwrap(), format!("x{addr}"));
            let mut out = Vec::new();
            push_ip(&mut out, addr.ip());
            prop_assert_eq!(String::from_utf8(out).unwrap(), addr.ip().to_string());
        }
    }

    proptest! {
        #[test]
        fn ids_read_as_uuid_prints_them(bits in any::<u128>()) {
            let id = uuid::Uuid::from_u128(bits);
            let mut out = b"x".to_vec();
            push_uuid(&mut out, &id);
            prop_assert_eq!(String::from_utf8(out).unwrap(), format!("x{}", id.hyphenated()));
        }
    }

    #[test]
    fn the_edges_of_every_id_digit() {
        for id in
            [uuid::Uuid::nil(), uuid::Uuid::max(), uuid::Uuid::from_u128(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210)]
        {
            let mut out = Vec::new();
            push_uuid(&mut out, &id);
            assert_eq!(String::from_utf8(out).unwrap(), id.hyphenated().to_string());
        }
    }

    #[test]
    fn the_edges_of_every_octet_and_port() {
        for (ip, port) in
            [([0, 0, 0, 0], 0), ([255, 255, 255, 255], 65535), ([10, 9, 100, 99], 80), ([1, 20, 0, 255], 1)]
        {
            let addr = SocketAddr::from((ip, port));
            let mut out = Vec::new();
            push_socket_addr(&mut out, &addr);
            assert_eq!(String::from_utf8(out).unwrap(), addr.to_string());
        }
    }
}
