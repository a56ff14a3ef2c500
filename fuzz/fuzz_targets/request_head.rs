//! Fuzz target `request_head`: weir's HTTP/1 head readers in `weir::http1::head`,
//! `read_head` (a client's request head: at most `MAX_HEAD_BYTES` and `MAX_HEADERS` fields,
//! within a timeout) and `read_response_head` (a backend's answer), and on a `proxy_protocol`
//! listener's path `http1::proxy::read` (a PROXY header, v1 or v2) then `read_head_from` with
//! the bytes read past it, as the gateway does (bounded here by a tokio timeout where the gateway
//! uses its connection's deadline); fed from an in-memory stream whose reads are
//! split as the input says, and that ends with EOF, an I/O error or silence.
//!
//! Input layout (every byte string is a valid input):
//! - byte 0: bits 0-1 how the stream ends after its last byte (0 and 3: EOF, 1: an I/O error,
//!   2: it never answers again, so only the timeout ends `read_head`); bit 2: the stream starts
//!   with a PROXY header;
//! - byte 1: `n`, the number of split bytes (low 4 bits), then `n` split bytes: the sizes of
//!   successive reads, in a cycle (`b < 0xC0`: `b + 1` bytes, else `(b - 0xBF) * 256`; a read
//!   also never gives more than the buffer has room for);
//! - 3 bytes `r`, `p`, `m`, then the data: the stream is `data[..p] + data[p..p + m] * (r * 8)
//!   + data[p + m..]` (at most 64 KiB), so that short inputs can make heads past the limits.
//!
//! Checked: no panic; the result is the one the documented loop gives (read, parse with
//! httparse, stop at the first complete head; 16 KiB and 128 fields at most; EOF before any
//! byte is `Closed`; for PROXY, `proxy::parse` before every read), computed independently from
//! the reads actually made; and what a head
//! accepted says is consistent: `buf` is exactly the bytes read, `early()` is the part of them
//! after the head, `path()`/`host()`/`headers` agree with the raw head, no field value carries
//! CR or LF, `message_end` is monotonic in the bytes it is given.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, ReadBuf};
use weir::http1::head::{
    read_head, read_head_from, read_response_head, HeadError, MessageEnd, RequestHead, MAX_HEADERS, MAX_HEAD_BYTES,
};
use weir::http1::proxy::{self, ProxyError};
use weir::http1::upgrade::{allowed_rsv, check_answer, wants_websocket, Answer, RSV_ON_EVERY_FRAME};
use weir::http1::{host_without_port, Fields};

/// The request-head timeout given to `read_head` (virtual time: it passes at once when idle).
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest stream built from one input.
const MAX_STREAM: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    Eof,
    Error,
    Silence,
}

thread_local! {
    /// One runtime for every input: current-thread, time paused (the timeouts fire as soon as
    /// nothing else can run).
    static RT: tokio::runtime::Runtime =
        tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else { return };
    let ending = match flags & 3 {
        1 => Ending::Error,
        2 => Ending::Silence,
        _ => Ending::Eof,
    };
    let (splits, rest) = match rest.split_first() {
        Some((&n, rest)) => rest.split_at(usize::from(n & 0x0F).min(rest.len())),
        None => (&[][..], rest),
    };
    let lens: Vec<usize> =
        splits.iter().map(|&b| if b < 0xC0 { usize::from(b) + 1 } else { usize::from(b - 0xBF) * 256 }).collect();
    let stream = build_stream(rest);

    let mut reader = Script::new(&stream, &lens, ending);
    let (head_from, already) = if flags & 4 != 0 {
        let result = RT.with(|rt| rt.block_on(proxy::read(&mut reader, HEAD_TIMEOUT)));
        check_proxy(&reader, &result);
        match result {
            Ok((_, rest)) => (reader.pos - rest.len(), rest),
            // The gateway closes the connection.
            Err(_) => return,
        }
    } else {
        (0, Vec::new())
    };
    let reads_before = reader.boundaries.len();
    let result = if flags & 4 != 0 {
        let bounded = async { tokio::time::timeout(HEAD_TIMEOUT, read_head_from(&mut reader, &already)).await };
        RT.with(|rt| rt.block_on(bounded)).unwrap_or(Err(HeadError::TimedOut))
    } else {
        RT.with(|rt| rt.block_on(read_head(&mut reader, HEAD_TIMEOUT)))
    };
    let phase = HeadReads {
        read: &stream[head_from..reader.pos],
        already: already.len(),
        boundaries: reader.boundaries[reads_before..].iter().map(|b| b - head_from).collect(),
        ending,
    };
    check_request(&stream[head_from..], &phase, result);

    let mut reader = Script::new(&stream, &lens, ending);
    // `read_response_head` has no timeout of its own (its callers bound it): silence would park
    // it for ever, so it gets one here, in virtual time.
    let result =
        RT.with(|rt| rt.block_on(async { tokio::time::timeout(HEAD_TIMEOUT, read_response_head(&mut reader)).await }));
    match result {
        Err(_elapsed) => {
            assert_eq!(ending, Ending::Silence, "read_response_head hung on a stream that ended");
            assert!(reader.pos == stream.len(), "read_response_head stopped reading a stream with more bytes");
        }
        Ok(result) => check_response(&stream, &reader, result),
    }
});

/// `data[..p] + data[p..p + m] * (r * 8) + data[p + m..]`, from `[r, p, m, data @ ..]`.
fn build_stream(rest: &[u8]) -> Vec<u8> {
    let [r, p, m, data @ ..] = rest else { return rest.to_vec() };
    let p = usize::from(*p).min(data.len());
    let m = usize::from(*m).min(data.len() - p);
    let (prefix, tail) = data.split_at(p);
    let (middle, suffix) = tail.split_at(m);
    let mut out = prefix.to_vec();
    for _ in 0..usize::from(*r) * 8 {
        if out.len() >= MAX_STREAM {
            break;
        }
        out.extend_from_slice(middle);
    }
    out.extend_from_slice(suffix);
    out.truncate(MAX_STREAM);
    out
}

/// An `AsyncRead` that hands out `stream` in reads of the scripted sizes, noting where each read
/// ended, then ends as told.
struct Script<'a> {
    stream: &'a [u8],
    lens: &'a [usize],
    pos: usize,
    reads: usize,
    /// `pos` after every read that returned bytes.
    boundaries: Vec<usize>,
    ending: Ending,
}

impl<'a> Script<'a> {
    fn new(stream: &'a [u8], lens: &'a [usize], ending: Ending) -> Self {
        Script { stream, lens, pos: 0, reads: 0, boundaries: Vec::new(), ending }
    }

    fn read(&self) -> &'a [u8] {
        &self.stream[..self.pos]
    }
}

impl AsyncRead for Script<'_> {
    fn poll_read(mut self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let left = self.stream.len() - self.pos;
        if left == 0 {
            return match self.ending {
                Ending::Eof => Poll::Ready(Ok(())),
                Ending::Error => Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionReset, "scripted reset"))),
                // Never woken: only a timer gets the caller out.
                Ending::Silence => Poll::Pending,
            };
        }
        let want = if self.lens.is_empty() { left } else { self.lens[self.reads % self.lens.len()] };
        self.reads += 1;
        let n = want.min(left).min(buf.remaining());
        if n == 0 {
            // A full buffer: a read of nothing (the caller never asks with a full buffer).
            return Poll::Ready(Ok(()));
        }
        let start = self.pos;
        buf.put_slice(&self.stream[start..start + n]);
        self.pos += n;
        let pos = self.pos;
        self.boundaries.push(pos);
        Poll::Ready(Ok(()))
    }
}

/// What `read_head` must answer, from the reads it made: the documented loop, step by step.
#[derive(Debug, PartialEq, Eq)]
enum Expected {
    Head(usize),
    Closed,
    TimedOut,
    TooLarge,
    Malformed,
    Io,
}

/// What a head reader was given: `read`, the bytes of the head's stream it had (the first
/// `already` of them before it started, the PROXY path's), `boundaries`, where each of its own
/// reads ended in them, and how the stream ends after them.
struct HeadReads<'a> {
    read: &'a [u8],
    already: usize,
    boundaries: Vec<usize>,
    ending: Ending,
}

fn expected_request(reads: &HeadReads<'_>) -> Expected {
    let read = reads.read;
    let parse = |bytes: &[u8]| {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match httparse::Request::new(&mut headers).parse(bytes) {
            Ok(httparse::Status::Complete(len)) => Some(Expected::Head(len)),
            Ok(httparse::Status::Partial) => None,
            Err(httparse::Error::TooManyHeaders) => Some(Expected::TooLarge),
            Err(_) => Some(Expected::Malformed),
        }
    };
    // The bytes read before (after a PROXY header) are parsed first, without the size check.
    let mut before = reads.already;
    if before > 0 {
        if let Some(answer) = parse(&read[..before]) {
            return answer;
        }
    }
    for &b in &reads.boundaries {
        // The size check comes before every read.
        if before >= MAX_HEAD_BYTES {
            return Expected::TooLarge;
        }
        if let Some(answer) = parse(&read[..b]) {
            return answer;
        }
        before = b;
    }
    if before >= MAX_HEAD_BYTES {
        return Expected::TooLarge;
    }
    match reads.ending {
        Ending::Eof if read.is_empty() => Expected::Closed,
        Ending::Eof => Expected::Malformed,
        Ending::Error => Expected::Io,
        Ending::Silence => Expected::TimedOut,
    }
}

/// `proxy::read` answered as its loop says: `proxy::parse` of the bytes read so far, first of
/// none, then after every read, until it answers; `NotProxy` when the stream ends (or falls
/// silent) first, `Closed` when it ends before a single byte. What it hands on is exactly the
/// bytes read past the header.
fn check_proxy(reader: &Script<'_>, result: &Result<(Option<std::net::SocketAddr>, Vec<u8>), ProxyError>) {
    let read = reader.read();
    let ended = match reader.ending {
        Ending::Eof | Ending::Error if read.is_empty() => ProxyError::Closed,
        _ => ProxyError::NotProxy,
    };
    let mut expected = Err(ended);
    for &b in std::iter::once(&0).chain(&reader.boundaries) {
        match proxy::parse(&read[..b]) {
            Ok(None) => continue,
            Ok(Some((addr, len))) => {
                assert!(len <= b && len <= proxy::V2_MAX, "a {len}-byte PROXY header in {b} bytes");
                expected = Ok((addr, read[len..b].to_vec()));
            }
            Err(e) => expected = Err(e),
        }
        assert_eq!(b, read.len(), "proxy::read read on after its answer");
        break;
    }
    assert_eq!(result, &expected, "proxy::read");
}

fn check_request(stream: &[u8], reads: &HeadReads<'_>, result: Result<RequestHead, HeadError>) {
    let expected = expected_request(reads);
    let head = match result {
        Ok(head) => head,
        Err(e) => {
            let got = match e {
                HeadError::Closed => Expected::Closed,
                HeadError::TimedOut => Expected::TimedOut,
                HeadError::TooLarge => Expected::TooLarge,
                HeadError::Malformed(_) => Expected::Malformed,
                HeadError::Io(_) => Expected::Io,
            };
            assert_eq!(got, expected, "read_head answered {e:?}");
            return;
        }
    };
    assert_eq!(Expected::Head(head.head_len), expected, "read_head accepted a head");
    let read = reads.read;
    assert_eq!(&head.buf[..], read, "buf is not exactly the bytes read");
    assert!(head.head_len > 0 && head.head_len <= head.buf.len());
    assert!(head.head_len <= MAX_HEAD_BYTES, "a head of {} bytes was accepted", head.head_len);
    assert_eq!(head.early(), &read[head.head_len..], "early() is not the bytes after the head");

    // The parse, again, of the head alone.
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    assert_eq!(req.parse(&read[..head.head_len]), Ok(httparse::Status::Complete(head.head_len)));
    assert_eq!(Some(head.method.as_ref()), req.method);
    assert_eq!(Some(head.target.as_str()), req.path);
    assert_eq!(Some(head.minor_version), req.version);
    assert_eq!(head.headers, Fields::from_parsed(req.headers));
    assert!(head.minor_version <= 1);
    assert!(!head.method.is_empty() && !head.target.is_empty());
    check_fields(&head.headers);

    // path(): the target up to its first '?'.
    let path = head.path();
    assert!(!path.contains('?'));
    let after = head.target.strip_prefix(path).expect("path() is not a prefix of the target");
    assert!(after.is_empty() || after.starts_with('?'), "path() {path:?} of target {:?}", head.target);
    // host(): the first Host field, port removed, lower-cased.
    let host = head.host();
    let expected = head.headers.get("host").map(|h| host_without_port(&h).into_owned());
    assert_eq!(host.as_deref(), expected.as_deref());
    if let Some(h) = &host {
        assert!(!h.bytes().any(|b| b.is_ascii_uppercase()), "host() is not lower-cased: {h:?}");
    }
    assert_eq!(wants_websocket(&head.headers), head.headers.has_token("upgrade", "websocket"));
    let rsv = allowed_rsv(head.headers.get("sec-websocket-extensions").as_deref());
    // None, permessage-deflate's RSV1, or (any extension weir does not know) all three on every frame.
    assert!(matches!(rsv, 0 | 0b100) || rsv == 0b111 | RSV_ON_EVERY_FRAME, "allowed_rsv {rsv:#b}");

    // message_end: in the bytes read, then in the whole stream (more bytes of the same client).
    let in_read = head.message_end(read);
    let in_stream = head.message_end(stream);
    for (end, bytes) in [(in_read, read), (in_stream, stream)] {
        match end {
            MessageEnd::At(n) => assert!(head.head_len <= n && n <= bytes.len(), "{end:?} of {} bytes", bytes.len()),
            MessageEnd::After(more) => assert!(more > 0),
            MessageEnd::Unknown => {}
        }
    }
    let extra = (stream.len() - read.len()) as u64;
    match in_read {
        MessageEnd::At(n) => assert_eq!(in_stream, MessageEnd::At(n), "more bytes moved the end"),
        MessageEnd::After(more) if more <= extra => {
            assert_eq!(in_stream, MessageEnd::At(read.len() + more as usize), "the body's end")
        }
        MessageEnd::After(more) => assert_eq!(in_stream, MessageEnd::After(more - extra), "the body's rest"),
        MessageEnd::Unknown => {}
    }
}

fn check_response(
    stream: &[u8],
    reader: &Script<'_>,
    result: Result<weir::http1::head::ResponseHead, weir::http1::head::ResponseError>,
) {
    let read = reader.read();
    assert_eq!(read, &stream[..read.len()]);
    let Ok(r) = result else { return };
    assert_eq!(&r.buf[..], read, "buf is not exactly the bytes read");
    assert!(r.head_len > 0 && r.head_len <= r.buf.len());
    assert!(r.head_len <= MAX_HEAD_BYTES, "a response head of {} bytes was accepted", r.head_len);
    assert_eq!([r.head(), r.early()].concat(), read, "head() + early() is not buf");
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    assert_eq!(resp.parse(r.head()), Ok(httparse::Status::Complete(r.head_len)));
    assert_eq!(resp.code, Some(r.status));
    assert_eq!(r.headers, Fields::from_parsed(resp.headers));
    check_fields(&r.headers);
    match check_answer(&r, "dGhlIHNhbXBsZSBub25jZQ==") {
        Answer::Refused(status) => assert!(status == r.status && status != 101),
        Answer::Accepted | Answer::BadHandshake => assert_eq!(r.status, 101),
    }
}

/// What weir forwards to a backend must not smuggle a line break or a bad name.
fn check_fields(fields: &Fields) {
    assert!(fields.iter().count() <= MAX_HEADERS);
    for (name, value) in fields.iter() {
        assert!(!name.is_empty(), "an empty field name");
        assert!(name.bytes().all(|b| b.is_ascii_graphic() && b != b':'), "field name {name:?} is not a token");
        assert!(!value.contains(&b'\r') && !value.contains(&b'\n'), "field {name:?} value has CR or LF");
        let first = fields.all(name).next().map(|v| String::from_utf8_lossy(v).trim().to_string());
        assert_eq!(fields.get(name), first);
    }
}
