//! Transparency under protocol errors (issue 10): what a client sees through weir equals what it
//! sees talking to a conformant backend (tokio-tungstenite) directly.

use crate::support::backends::echo_backend;
use crate::support::wire::{frame, raw_client, CLOSE, FIN, MASK, TEXT};
use crate::support::{pool_and_route, Weir};

fn close_payload(code: u16) -> Vec<u8> {
    code.to_be_bytes().to_vec()
}

/// Everything the client reads until weir (or the backend) closes the connection, as frames.
async fn frames_until_eof(c: &mut crate::support::wire::RawConn) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(f) = c.read_frame().await {
        out.push((f.raw[0], f.payload.clone()));
    }
    out
}

/// 1. A close, then a text frame: the backend ignores the text and answers the close with 1000;
/// the client gets that answer, not weir's 1002.
#[tokio::test]
async fn data_after_a_close_gets_the_backends_answer() {
    let backend = echo_backend().await;
    let weir = Weir::start(&pool_and_route("p", &[backend.addr], "/ws")).await;
    let (mut c, head) = raw_client(weir.addr, "/ws", "", b"").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let bytes =
        [frame(FIN | CLOSE, Some(MASK), &close_payload(1000)), frame(FIN | TEXT, Some(MASK), b"after")].concat();
    c.write(&bytes).await;
    let got = frames_until_eof(&mut c).await;
    assert_eq!(got, vec![(FIN | CLOSE, close_payload(1000))], "the backend's own close, nothing else");
    let r = weir.records_eventually(1).await.remove(0);
    assert_eq!((r.outcome.as_ref(), r.reason.as_deref()), ("completed", None), "{r:?}");
}

/// 2. A first fragment, a close (legal between fragments), then the last fragment: the same.
#[tokio::test]
async fn a_close_between_fragments_gets_the_backends_answer() {
    let backend = echo_backend().await;
    let weir = Weir::start(&pool_and_route("p", &[backend.addr], "/ws")).await;
    let (mut c, _) = raw_client(weir.addr, "/ws", "", b"").await;
    let bytes = [
        frame(TEXT & 0x0f, Some(MASK), b"half "),
        frame(FIN | CLOSE, Some(MASK), &close_payload(1000)),
        frame(FIN, Some(MASK), b"message"),
    ]
    .concat();
    c.write(&bytes).await;
    let got = frames_until_eof(&mut c).await;
    assert_eq!(got, vec![(FIN | CLOSE, close_payload(1000))]);
}

/// 3. A valid text, a frame with RSV2 (no extension), a ping: the echo of the text reaches the
/// client before any close, as it does directly; then the backend's answer to weir's 1002.
#[tokio::test]
async fn the_echo_of_a_valid_message_comes_before_the_close_of_a_violation() {
    let backend = echo_backend().await;
    let weir = Weir::start(&pool_and_route("p", &[backend.addr], "/ws")).await;
    let (mut c, _) = raw_client(weir.addr, "/ws", "", b"").await;
    let bytes = [
        frame(FIN | TEXT, Some(MASK), b"echo me"),
        frame(FIN | TEXT | 0x20, Some(MASK), b"bad bits"),
        frame(FIN | 0x09, Some(MASK), b"ping"),
    ]
    .concat();
    c.write(&bytes).await;
    let got = frames_until_eof(&mut c).await;
    assert_eq!(got.first(), Some(&(FIN | TEXT, b"echo me".to_vec())), "the echo first: {got:?}");
    assert_eq!(got.get(1).map(|f| f.0), Some(FIN | CLOSE), "then a close: {got:?}");
    assert_eq!(got.get(1).map(|f| f.1[..2].to_vec()), Some(close_payload(1002)), "{got:?}");
    let r = weir.records_eventually(1).await.remove(0);
    assert_eq!(r.outcome, "protocol_error", "{r:?}");
}

/// What a peer answered one case: the frames (first byte, payload) it sent until EOF, and whether
/// the connection was still open after 3 s of silence (a case ends with a close, so a peer that
/// follows the protocol has ended it by then).
type Answer = (Vec<(u8, Vec<u8>)>, bool);

async fn answer(addr: std::net::SocketAddr, bytes: &[u8]) -> Answer {
    let (mut c, head) = raw_client(addr, "/ws", "", b"").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let _ = c.try_write(bytes).await;
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(3), c.read_frame()).await {
            Ok(Some(f)) => out.push((f.raw[0], f.payload.clone())),
            Ok(None) => return (out, false),
            Err(_) => return (out, true),
        }
    }
}

/// One line per frame: opcode byte and length, or a close's code and reason.
fn show((frames, open): &Answer) -> String {
    let frames = frames.iter().map(|(b0, p)| match (b0 & 0x0f, p.get(..2)) {
        (CLOSE, Some(c)) => {
            format!("{b0:#x} close {} {:?}", u16::from_be_bytes([c[0], c[1]]), String::from_utf8_lossy(&p[2..]))
        }
        _ => format!("{b0:#x} len {}", p.len()),
    });
    frames.chain([if *open { "[still open]" } else { "[eof]" }.to_string()]).collect::<Vec<_>>().join(", ")
}

/// The close code of `frame`, if it is a close frame with one.
fn code_of((b0, p): &(u8, Vec<u8>)) -> Option<u16> {
    (b0 & 0x0f == CLOSE && p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]]))
}

/// An Autobahn-style battery (framing, pings, reserved bits and opcodes, fragmentation, UTF-8,
/// close codes, length encodings, masking), each case followed by a normal close: the client
/// sees through weir what it sees from the tungstenite echo backend directly. Where the backend
/// fails the connection by dropping it (tungstenite sends no close frame on a protocol error),
/// weir closes it with 1002 when it found the violation itself, or 1011 when the backend went
/// away (bad UTF-8, which weir does not check); where the backend answers a bad close code with
/// 1002 and a reason, weir's 1002 may have its own reason.
#[tokio::test]
async fn an_autobahn_style_battery_looks_the_same_through_weir_as_directly() {
    use crate::support::wire::BINARY;
    let backend = echo_backend().await;
    let weir = Weir::start(&pool_and_route("p", &[backend.addr], "/ws")).await;
    let m = Some(MASK);
    // A masked frame with its length bytes given as they are (for non-minimal forms).
    let with_len = |b0: u8, len: &[u8], payload: &[u8]| {
        let masked = payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]);
        [b0].into_iter().chain(len.iter().copied()).chain(MASK).chain(masked).collect::<Vec<u8>>()
    };
    let close_with = |code: u16, reason: &[u8]| [&code.to_be_bytes()[..], reason].concat();
    // (case, bytes, what weir closes with where the backend drops the connection)
    let mut cases: Vec<(String, Vec<u8>, u16)> = Vec::new();
    let mut case = |name: String, bytes: Vec<u8>| cases.push((name, bytes, 1002));
    for len in [0usize, 1, 125, 126, 127, 128, 65535, 65536, 300_000] {
        case(format!("text {len}"), frame(FIN | TEXT, m, &vec![b'*'; len]));
        case(format!("binary {len}"), frame(FIN | BINARY, m, &vec![0xfe; len]));
    }
    case("ping 0".into(), frame(FIN | 0x9, m, b""));
    case("ping 125".into(), frame(FIN | 0x9, m, &[b'p'; 125]));
    case("ping 126".into(), frame(FIN | 0x9, m, &[b'p'; 126]));
    case("ping without FIN".into(), frame(0x9, m, b"x"));
    case("unsolicited pong".into(), frame(FIN | 0xA, m, b"x"));
    case("pong 126".into(), frame(FIN | 0xA, m, &[b'p'; 126]));
    for rsv in [0x40u8, 0x20, 0x10, 0x70] {
        case(format!("text with rsv {rsv:#x}"), frame(FIN | rsv | TEXT, m, b"hi"));
        case(format!("ping with rsv {rsv:#x}"), frame(FIN | rsv | 0x9, m, b"hi"));
    }
    for op in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
        case(format!("opcode {op:#x}"), frame(FIN | op, m, b""));
        case(format!("opcode {op:#x} after a text"), [frame(FIN | TEXT, m, b"a"), frame(FIN | op, m, b"abc")].concat());
    }
    case("two fragments".into(), [frame(TEXT, m, b"ab"), frame(FIN, m, b"cd")].concat());
    case("empty fragments".into(), [frame(TEXT, m, b""), frame(0, m, b""), frame(FIN, m, b"")].concat());
    case("continuation alone".into(), frame(FIN, m, b"cd"));
    case("unfinished continuation alone".into(), frame(0, m, b"cd"));
    case("text inside fragments".into(), [frame(TEXT, m, b"ab"), frame(FIN | TEXT, m, b"cd")].concat());
    case(
        "ping inside fragments".into(),
        [frame(TEXT, m, b"ab"), frame(FIN | 0x9, m, b"p"), frame(FIN, m, b"cd")].concat(),
    );
    case("close inside fragments".into(), frame(TEXT, m, b"ab"));
    case("utf-8 split between fragments".into(), [frame(TEXT, m, &[0xce]), frame(FIN, m, &[0xba])].concat());
    case("close without payload".into(), frame(FIN | CLOSE, m, b""));
    case("close with one byte".into(), frame(FIN | CLOSE, m, b"\x03"));
    for code in [
        0u16, 999, 1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1015, 1016,
        1100, 2000, 2999, 3000, 3999, 4000, 4999, 5000, 65535,
    ] {
        case(format!("close {code}"), frame(FIN | CLOSE, m, &close_with(code, b"")));
    }
    case("close with a reason".into(), frame(FIN | CLOSE, m, &close_with(1000, b"bye")));
    case("close with 123 bytes of reason".into(), frame(FIN | CLOSE, m, &close_with(1000, &[b'r'; 123])));
    case("close without FIN".into(), frame(CLOSE, m, &close_with(1000, b"")));
    case(
        "text after a close".into(),
        [frame(FIN | CLOSE, m, &close_with(1000, b"")), frame(FIN | TEXT, m, b"x")].concat(),
    );
    case("16-bit length for 5 bytes".into(), with_len(FIN | TEXT, &[0x80 | 126, 0, 5], b"hello"));
    case("64-bit length for 5 bytes".into(), with_len(FIN | BINARY, &[0x80 | 127, 0, 0, 0, 0, 0, 0, 0, 5], b"hello"));
    case("16-bit length for a 5-byte ping".into(), with_len(FIN | 0x9, &[0x80 | 126, 0, 5], b"hello"));
    case(
        "64-bit length with the top bit".into(),
        with_len(FIN | TEXT, &[0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 5], b"hello"),
    );
    case("unmasked text".into(), frame(FIN | TEXT, None, b"hello"));
    // Not checked by weir: the backend drops the connection, and weir tells the client 1011.
    let utf8 = [
        ("invalid utf-8", frame(FIN | TEXT, m, &[0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xff])),
        ("invalid utf-8 across fragments", [frame(TEXT, m, &[0xce]), frame(FIN, m, &[0x28])].concat()),
        ("close reason not utf-8", frame(FIN | CLOSE, m, &close_with(1000, &[0xff, 0xfe]))),
    ];
    cases.extend(utf8.map(|(name, bytes)| (name.to_string(), bytes, 1011)));

    let close = frame(FIN | CLOSE, m, &close_with(1000, b""));
    let mut wrong = Vec::new();
    for (name, bytes, weirs_code) in &cases {
        let bytes = [&bytes[..], &close].concat();
        let (direct, through) = tokio::join!(answer(backend.addr, &bytes), answer(weir.addr, &bytes));
        let same = direct == through
            || match (direct.0.split_last(), through.0.split_last()) {
                // The backend dropped the connection: weir closed it after the same frames.
                (last, Some((w, before))) if last.is_none_or(|(d, _)| code_of(d).is_none()) => {
                    direct.0 == before && code_of(w) == Some(*weirs_code) && !direct.1 && !through.1
                }
                // Both failed it with 1002; the reasons may differ.
                (Some((d, d_before)), Some((w, w_before))) => {
                    d_before == w_before && code_of(d) == Some(1002) && code_of(w) == Some(1002)
                }
                _ => false,
            };
        if !same {
            wrong.push(format!("{name}:\n  direct:      {}\n  through weir: {}", show(&direct), show(&through)));
        }
    }
    assert!(wrong.is_empty(), "{} of {} cases differ:\n{}", wrong.len(), cases.len(), wrong.join("\n"));
}

/// The status line of the answer to `request` sent to `addr`.
async fn status_line(addr: std::net::SocketAddr, request: &str) -> String {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut c = crate::support::wire::RawConn::new(stream);
    c.write(request.as_bytes()).await;
    c.read_head().await.lines().next().unwrap_or("").to_string()
}

/// Upgrade requests that a backend accepts in forms a browser does not send (lower-case names,
/// `Upgrade: WebSocket`, `Connection: keep-alive, Upgrade`, padded values, a subprotocol offer
/// over two lines, a 7 KB header, an absolute-form target) are upgraded through weir too; an
/// absolute-form target is routed by its path and reaches the backend in origin form with its
/// authority as `Host`, as RFC 9112 §3.2.2 asks of the server that receives it.
#[tokio::test]
async fn upgrade_requests_in_uncommon_but_valid_forms_are_upgraded_as_directly() {
    let backend = echo_backend().await;
    let weir = Weir::start(&pool_and_route("p", &[backend.addr], "/ws")).await;
    let std = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";
    let lower = std
        .replace("Upgrade:", "upgrade:")
        .replace("Connection:", "connection:")
        .replace("Sec-WebSocket-", "sec-websocket-");
    let variants: Vec<(&str, String, String)> = vec![
        ("lower-case names", "/ws".into(), lower),
        ("Upgrade: WebSocket", "/ws".into(), std.replace("websocket", "WebSocket")),
        (
            "Connection: keep-alive, Upgrade",
            "/ws".into(),
            std.replace("Connection: Upgrade", "Connection: keep-alive, Upgrade"),
        ),
        ("padded values", "/ws".into(), std.replace("Upgrade: websocket", "Upgrade:   websocket  ")),
        (
            "subprotocols over two lines",
            "/ws".into(),
            format!("{std}Sec-WebSocket-Protocol: a\r\nSec-WebSocket-Protocol: b\r\n"),
        ),
        ("a 7 KB header", "/ws".into(), format!("{std}X-Big: {}\r\n", "a".repeat(7000))),
        ("a query", "/ws?a=b&c=%20".into(), std.into()),
        ("absolute form", "http://{addr}/ws?via=absolute".into(), std.into()),
    ];
    for (name, target, headers) in variants {
        for addr in [backend.addr, weir.addr] {
            let target = target.replace("{addr}", &addr.to_string());
            let request = format!("GET {target} HTTP/1.1\r\nHost: elsewhere.example\r\n{headers}\r\n");
            let line = status_line(addr, &request).await;
            assert!(
                line.starts_with("HTTP/1.1 101"),
                "{name}, {}: {line}",
                if addr == weir.addr { "through weir" } else { "directly" }
            );
        }
    }
    let seen = backend.seen();
    let absolute: Vec<_> = seen.iter().filter(|s| s.query == "via=absolute").collect();
    assert_eq!(absolute.len(), 2, "both absolute-form requests reached the backend");
    for s in absolute {
        assert_eq!(s.path, "/ws");
    }
    let through = seen.iter().rfind(|s| s.query == "via=absolute").unwrap();
    assert_eq!(
        through.header("host"),
        Some(weir.addr.to_string().as_str()),
        "the target's authority, not the Host field"
    );
}

/// A backend that negotiates an extension weir does not know (`x-custom`) may set RSV bits on
/// any frame: its continuation and control frames with RSV bits reach the client byte for byte,
/// and the client's do too, as on a direct connection.
#[tokio::test]
async fn an_unknown_extension_s_rsv_bits_pass_on_every_frame_both_ways() {
    use crate::support::backends::raw_backend;
    use crate::support::wire::{accept_for, RawConn, KEY};
    let from_backend = [
        frame(0x61, None, b"first"),
        frame(0xD9, None, b"ping"),
        frame(0x30, None, b"middle"),
        frame(0xC0, None, b"last"),
    ]
    .concat();
    let from_client =
        [frame(0x51, Some(MASK), b"one"), frame(0x60, Some(MASK), b"two"), frame(0xA0, Some(MASK), b"three")].concat();
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let sent = from_backend.clone();
    let backend = raw_backend(move |s| {
        let (sent, seen_tx) = (sent.clone(), seen_tx.clone());
        async move {
            let mut s = RawConn::new(s);
            s.read_head().await;
            let head = format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\nSec-WebSocket-Extensions: x-custom\r\n\r\n", accept_for(KEY));
            s.write(&[head.as_bytes(), &sent].concat()).await;
            let mut got = Vec::new();
            for _ in 0..3 {
                match s.read_frame().await {
                    Some(f) => got.extend(f.raw),
                    None => break,
                }
            }
            let _ = seen_tx.send(got);
        }
    })
    .await;
    let weir = Weir::start(&pool_and_route("p", &[backend.addr], "/ws")).await;
    let (mut c, head) = raw_client(weir.addr, "/ws", "Sec-WebSocket-Extensions: x-custom\r\n", b"").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(crate::support::wire::head_header(&head, "sec-websocket-extensions"), Some("x-custom"));
    let mut got = Vec::new();
    for _ in 0..4 {
        got.extend(c.read_frame().await.expect("a frame").raw);
    }
    assert_eq!(got, from_backend, "the backend's frames, byte for byte");
    c.write(&from_client).await;
    let seen = tokio::time::timeout(crate::support::DEADLINE, seen_rx.recv()).await.unwrap().unwrap();
    assert_eq!(seen, from_client, "the client's frames, byte for byte");
}

/// A backend that answers every close with 1000 and ends (as Autobahn's server does), a client
/// that breaks a rule after a valid text: the client gets the echo and then 1002, what a server
/// sends it directly, not the backend's 1000 (which answered weir's close, not the client's
/// frame). Autobahn's fuzzingclient found this (cases 2.5, 3.x, 4.x, 5.x, 7.x: "wrong code").
#[tokio::test]
async fn a_rule_breaker_gets_1002_even_from_a_backend_that_answers_every_close_with_1000() {
    use crate::support::backends::raw_backend;
    use crate::support::wire::{accept_for, RawConn, KEY};
    let backend = raw_backend(|s| async move {
        let mut s = RawConn::new(s);
        s.read_head().await;
        let head = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            accept_for(KEY)
        );
        s.write(head.as_bytes()).await;
        while let Some(f) = s.read_frame().await {
            if f.raw[0] & 0x0f == CLOSE {
                s.write(&frame(FIN | CLOSE, None, &close_payload(1000))).await;
                break;
            }
            s.write(&frame(f.raw[0], None, &f.payload)).await;
        }
    })
    .await;
    let weir = Weir::start(&pool_and_route("p", &[backend.addr], "/ws")).await;
    let (mut c, head) = raw_client(weir.addr, "/ws", "", b"").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let bytes = [frame(FIN | TEXT, Some(MASK), b"echo me"), frame(FIN | 0x03, Some(MASK), b"reserved opcode")].concat();
    c.write(&bytes).await;
    let got = frames_until_eof(&mut c).await;
    assert_eq!(got, vec![(FIN | TEXT, b"echo me".to_vec()), (FIN | CLOSE, close_payload(1002))]);
    let r = weir.records_eventually(1).await.remove(0);
    assert_eq!(r.outcome, "protocol_error", "{r:?}");
}
