//! Raw WebSocket wire helpers for tests that must send or see exact bytes: an RFC 6455 frame
//! encoder and parser written independently of weir, a buffered raw TCP connection that reads
//! request/response heads and whole frames, and a raw client handshake. Every read is bounded
//! by `DEADLINE`.

use super::DEADLINE;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The `Sec-WebSocket-Key` the raw helpers send (the RFC 6455 example key).
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Opcodes (low nibble of the first header byte).
pub const TEXT: u8 = 0x1;
/// Binary opcode.
pub const BINARY: u8 = 0x2;
/// Close opcode.
pub const CLOSE: u8 = 0x8;
/// FIN bit.
pub const FIN: u8 = 0x80;
/// RSV1 bit (permessage-deflate's "compressed" flag).
pub const RSV1: u8 = 0x40;
/// A fixed masking key for frames the tests build by hand.
pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// Length of a frame header for a payload of `len` bytes: 2, 4 or 10 bytes, plus 4 mask bytes
/// when masked (RFC 6455 §5.2, minimal length encoding).
pub fn header_len(len: u64, masked: bool) -> u64 {
    let base = if len < 126 {
        2
    } else if len <= 0xFFFF {
        4
    } else {
        10
    };
    base + if masked { 4 } else { 0 }
}

/// Encode one frame: `b0` is the first header byte (FIN, RSV bits, opcode); the length takes its
/// minimal form; the payload is masked with `mask` when given.
pub fn frame(b0: u8, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![b0];
    let m = if mask.is_some() { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(m | len as u8);
    } else if len <= 0xFFFF {
        out.push(m | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(m | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A close frame payload: the code, big-endian, then the reason.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

/// One frame as read off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    /// First header byte (FIN, RSV bits, opcode).
    pub b0: u8,
    /// Whether the frame was masked.
    pub masked: bool,
    /// Payload, unmasked.
    pub payload: Vec<u8>,
    /// The frame's exact bytes on the wire.
    pub raw: Vec<u8>,
}

impl RawFrame {
    /// The opcode.
    pub fn opcode(&self) -> u8 {
        self.b0 & 0x0F
    }

    /// The close code, for a close frame with a payload.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode() == CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// Parse one complete frame at the start of `buf`: `Some((frame, length))`, or `None` when `buf`
/// does not hold a whole frame yet.
pub fn parse_frame(buf: &[u8]) -> Option<(RawFrame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let masked = buf[1] & 0x80 != 0;
    let (len, mut pos) = match buf[1] & 0x7F {
        126 => (u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as u64, 4),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?), 10),
        n => (n as u64, 2),
    };
    let key = if masked {
        let k: [u8; 4] = buf.get(pos..pos + 4)?.try_into().ok()?;
        pos += 4;
        Some(k)
    } else {
        None
    };
    let end = pos + usize::try_from(len).ok()?;
    let body = buf.get(pos..end)?;
    let payload = match key {
        Some(k) => body.iter().enumerate().map(|(i, b)| b ^ k[i % 4]).collect(),
        None => body.to_vec(),
    };
    Some((RawFrame { b0: buf[0], masked, payload, raw: buf[..end].to_vec() }, end))
}

/// A raw TCP connection with a read buffer: read heads and whole frames, write bytes.
pub struct RawConn {
    /// The socket.
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    /// Wrap a connected socket.
    pub fn new(stream: TcpStream) -> RawConn {
        RawConn { stream, buf: Vec::new() }
    }

    /// Read more bytes into the buffer; false on EOF or error.
    async fn fill(&mut self) -> bool {
        let mut chunk = vec![0u8; 64 * 1024];
        match tokio::time::timeout(DEADLINE, self.stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(_) => panic!("raw read timed out after {DEADLINE:?}"),
        }
    }

    /// Read an HTTP head (through the blank line); bytes after it stay buffered.
    pub async fn read_head(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..i + 4).collect();
                return String::from_utf8_lossy(&head).into_owned();
            }
            assert!(self.buf.len() < 64 * 1024, "head larger than 64 KiB");
            assert!(self.fill().await, "EOF before the end of the head; got {:?}", String::from_utf8_lossy(&self.buf));
        }
    }

    /// Read one whole frame; `None` on EOF (or a reset) before one is complete.
    pub async fn read_frame(&mut self) -> Option<RawFrame> {
        loop {
            if let Some((f, used)) = parse_frame(&self.buf) {
                self.buf.drain(..used);
                return Some(f);
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Everything until EOF (or a reset), buffered bytes first.
    pub async fn read_to_end(&mut self) -> Vec<u8> {
        while self.fill().await {}
        std::mem::take(&mut self.buf)
    }

    /// Write and flush `bytes`; false if the peer is gone.
    pub async fn try_write(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).await.is_ok() && self.stream.flush().await.is_ok()
    }

    /// Write and flush `bytes`.
    pub async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("raw write");
        self.stream.flush().await.expect("raw flush");
    }
}

/// Connect to `addr` and send an upgrade for `path` with `extra` header lines (each ending in
/// `\r\n`) followed by `early` in the same write; read the response head. Returns the connection
/// (with any bytes after the head buffered) and the head.
pub async fn raw_client(addr: SocketAddr, path: &str, extra: &str, early: &[u8]) -> (RawConn, String) {
    let stream = TcpStream::connect(addr).await.expect("connect to weir");
    let mut conn = RawConn::new(stream);
    let mut bytes = super::upgrade_request(addr, path, extra).into_bytes();
    bytes.extend_from_slice(early);
    conn.write(&bytes).await;
    let head = conn.read_head().await;
    (conn, head)
}

/// `Sec-WebSocket-Accept` for `KEY`.
pub fn accept_for(key: &str) -> String {
    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes())
}

/// The value of header `name` (case-insensitive) in an HTTP head.
pub fn head_header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Write `byte` to `stream` every 100 ms (a trickle that never finishes a line) until the peer
/// closes or 10 s pass (a failure): how many bytes were written. Panics if the peer answers.
pub async fn trickle_until_closed(stream: &mut TcpStream, byte: u8) -> usize {
    use std::time::{Duration, Instant};
    let start = Instant::now();
    let mut buf = [0u8; 256];
    let mut trickled = 0;
    loop {
        assert!(start.elapsed() < Duration::from_secs(10), "still open after 10 s");
        tokio::select! {
            r = stream.read(&mut buf) => match r {
                Ok(0) | Err(_) => return trickled,
                Ok(n) => panic!("answered a head it never got: {:?}", String::from_utf8_lossy(&buf[..n])),
            },
            // Paces the trickle: not a synchronisation.
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                if stream.write_all(&[byte]).await.is_ok() {
                    trickled += 1;
                }
            }
        }
    }
}
