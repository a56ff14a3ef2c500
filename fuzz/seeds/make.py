#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz targets (fuzz/seeds/<target>/*), a few valid starting points
in each target's input layout (see the doc comment at the top of fuzz/fuzz_targets/<target>.rs).
The fuzzer's own corpus (fuzz/corpus/, git-ignored) grows from them. Run: python3 fuzz/seeds/make.py
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
KEY = bytes([0x3A, 0x91, 0x5C, 0xE7])


def frame(b0, payload, key=None):
    n = len(payload)
    m = 0x80 if key else 0
    if n < 126:
        out = bytes([b0, m | n])
    elif n <= 0xFFFF:
        out = bytes([b0, m | 126]) + struct.pack(">H", n)
    else:
        out = bytes([b0, m | 127]) + struct.pack(">Q", n)
    if key:
        out += key
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return out + payload


def close(code, reason=b""):
    return struct.pack(">H", code) + reason


def write(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- frame_scanner: [policy, n, splits..., stream] ------------------------------------------
client = (frame(0x81, b"hello", KEY) + frame(0x89, b"p", KEY) + frame(0x82, bytes(200), KEY)
          + frame(0x01, b"frag", KEY) + frame(0x80, b"ment", KEY) + frame(0x88, close(1000, b"bye"), KEY))
server = (frame(0x81, b"hi") + frame(0x8A, b"p") + frame(0x82, bytes(300)) + frame(0x02, b"a")
          + frame(0x89, b"") + frame(0x80, b"b") + frame(0x88, close(4000)))
write("frame_scanner", "client", bytes([0x00, 3, 1, 5, 0]) + client)
write("frame_scanner", "server", bytes([0x01, 2, 2, 7]) + server)
write("frame_scanner", "client_rsv1_chunks", bytes([0x0E, 1, 3]) + frame(0xC1, b"deflated", KEY) + client)
write("frame_scanner", "server_limits", bytes([0x31, 1, 0xC1]) + server + frame(0x82, bytes(70_001))[:14])
write("frame_scanner", "server_64bit_len", bytes([0x01, 0]) + frame(0x82, bytes(65_536 + 10))[:40])
write("frame_scanner", "bad_close_code_split", bytes([0x00, 1, 7]) + frame(0x88, close(1005), KEY))

# ---- request_head: [flags, n, splits..., r, p, m, data] -------------------------------------
upgrade = (b"GET /chat?x=1 HTTP/1.1\r\nHost: Example.com:8080\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n")
write("request_head", "upgrade_early", bytes([0, 2, 10, 0xC3, 0, 0, 0]) + upgrade + frame(0x81, b"early", KEY))
post = b"POST /a HTTP/1.1\r\nHost: [::1]:80\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\n\r\n"
write("request_head", "post_pipelined", bytes([0, 1, 20, 0, 0, 0]) + post)
chunked = (b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5;x=1\r\nhello\r\n0\r\nT: 1\r\n\r\nGET /b HTTP/1.1\r\n\r\n")
write("request_head", "chunked", bytes([1, 0, 0, 0, 0]) + chunked)
line, field = b"GET / HTTP/1.1\r\n", b"X-Many: fields\r\n"
write("request_head", "too_many_fields", bytes([0, 1, 0xFF, 20, len(line), len(field)]) + line + field + b"\r\n")
big = b"X-Big: " + b"a" * 200 + b"\r\n"
write("request_head", "too_large", bytes([2, 1, 0xC7, 100, len(line), len(big)]) + line + big + b"\r\n")
answer = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
write("request_head", "response_101", bytes([0, 0, 0, 0, 0]) + answer + frame(0x81, b"hi"))
write("request_head", "silence", bytes([2, 0, 0, 0, 0]) + b"GET / HTTP/1.1\r\nHost: a")
v1 = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n"
write("request_head", "proxy_v1", bytes([4, 1, 30, 0, 0, 0]) + v1 + upgrade)
v2 = (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack(">H", 12)
      + bytes([192, 0, 2, 1, 198, 51, 100, 2]) + struct.pack(">HH", 56324, 443))
write("request_head", "proxy_v2", bytes([4, 0, 0, 0, 0]) + v2 + upgrade)
v2_tlv = b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x21]) + struct.pack(">H", 36 + 7) + bytes(36) + b"\x04\x00\x04weir"
write("request_head", "proxy_v2_ipv6_tlv", bytes([4, 1, 5, 0, 0, 0]) + v2_tlv + b"GET / HTTP/1.1\r\n\r\n")

# ---- relay: [flags, caps, grace, ce, be, early..., ops...] ----------------------------------
def cframe(b0, payload, op=0x02):
    return bytes([op, b0, len(payload)]) + payload


def bframe(b0, payload):
    return cframe(b0, payload, op=0x03)


C_READ, B_READ, C_SHUT, B_SHUT, C_GONE, B_GONE, SLEEP, SHUTDOWN, MOVED, YIELD = (
    0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D)
hello = (cframe(0x81, b"hello") + bytes([YIELD, B_READ]) + bframe(0x81, b"hey") + bytes([C_READ])
         + cframe(0x88, close(1000)) + bytes([B_READ]) + bframe(0x88, close(1000)) + bytes([B_SHUT, C_READ, C_SHUT]))
write("relay", "close_handshake", bytes([0x00, 0x36, 20, 0, 0]) + hello)
early_c, early_b = frame(0x81, b"early", KEY)[:4], frame(0x82, b"early")
write("relay", "early_bytes_tiny_pipes",
      bytes([0x00, 0x08, 0, len(early_c), len(early_b)]) + early_c + early_b
      + bytes([0x00, 7]) + frame(0x81, b"early", KEY)[4:] + bytes([0x3D, C_READ, B_READ]) + hello)
write("relay", "big_frame_backend_vanishes",
      bytes([0x00, 0x02, 0, 0, 0]) + bytes([0x02, 0x82, 0xF0, SLEEP, 5, B_READ, B_GONE, SLEEP, 150]))
write("relay", "client_violation", bytes([0x30, 0x36, 0, 0, 0]) + bytes([0x00, 2, 0x81, 0x00])
      + bframe(0x81, b"late") + bytes([SLEEP, 120, C_READ, B_READ]))
write("relay", "object_moved", bytes([0x01, 0x36, 0, 0, 0]) + cframe(0x81, b"x") + bytes([MOVED, B_READ, C_READ])
      + bframe(0x88, close(1012)) + bytes([SLEEP, 50]))
write("relay", "shutdown_grace", bytes([0x00, 0x36, 10, 0, 0]) + cframe(0x81, b"x") + bytes([SHUTDOWN, SLEEP, 100]))
write("relay", "frame_limit", bytes([0x00, 0x76, 0, 0, 0]) + bytes([0x02, 0x82, 0xE1, B_READ, C_READ]))
# A client frame the backend (1-byte pipe) cannot take while weir shuts down with no grace: the
# linger runs out with bytes still in weir's buffer (counted as relayed, never delivered).
write("relay", "linger_drops_pending", bytes([0x40, 0x02, 0, 0, 0]) + bytes([0x02, 0x82, 0xF0, SLEEP, 150, 0x0E, 0, 0, 0x96]))
