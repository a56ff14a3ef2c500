//! weir's integration tests: one binary; every test starts the real `weir` process on free
//! loopback ports, with real backends and real WebSocket clients.

// Harness: the weir process, backends, raw HTTP, metrics and usage-record readers.
mod support;

// The handshake: client checks, rejections, backend answers (400/426/404/502/503/504/403).
mod handshake;
