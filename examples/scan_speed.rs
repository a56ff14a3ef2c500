//! The frame scanner's speed on its own: nanoseconds per frame for a 64 KiB read's worth of
//! pipelined 64-byte binary messages (the `small` scenario's shape), masked (client to backend)
//! and unmasked (backend to client), with and without chunk counting. Prints a Markdown table;
//! the best of five passes of 3 000 000 frames each.
//!
//! `cargo run --release --example scan_speed`

use std::time::Instant;
use weir::relay::scanner::{Chunks, FrameScanner, Role, ScanLimits, ScanPolicy};

/// Frames per buffer: about what one read of the `small` scenario holds.
const FRAMES: usize = 150;
/// Buffers fed per pass.
const FEEDS: usize = 20_000;

/// `FRAMES` final binary frames of 64 payload bytes, masked or not.
fn frames(masked: bool) -> Vec<u8> {
    let mut v = Vec::new();
    for i in 0..FRAMES {
        v.push(0x82);
        if masked {
            v.extend_from_slice(&[0x80 | 64, 1, 2, 3, 4]);
        } else {
            v.push(64);
        }
        v.extend(std::iter::repeat_n(u8::try_from(i % 251).unwrap_or(0), 64));
    }
    v
}

fn main() {
    println!("| direction | chunk counting | ns per frame |");
    println!("|---|---|---:|");
    for (masked, chunks) in [(true, false), (false, false), (true, true)] {
        let policy = ScanPolicy::new(if masked { Role::Client } else { Role::Server });
        let mut limits = ScanLimits { max_frame: 16 << 20, max_message: 64 << 20, ..ScanLimits::NONE };
        if chunks {
            limits.chunks = Chunks([4096, 0, 0, 0]);
        }
        let buf = frames(masked);
        let mut best = f64::MAX;
        for _ in 0..5 {
            let mut scanner = FrameScanner::new(policy, limits);
            let started = Instant::now();
            for _ in 0..FEEDS {
                let _ = std::hint::black_box(scanner.feed(std::hint::black_box(&buf)));
            }
            let ns = started.elapsed().as_nanos() as f64 / (FEEDS * FRAMES) as f64;
            assert_eq!(scanner.counts().messages, (FEEDS * FRAMES) as u64, "every frame counted");
            best = best.min(ns);
        }
        let direction = if masked { "client → backend (masked)" } else { "backend → client" };
        println!("| {direction} | {} | {best:.2} |", if chunks { "4 KiB" } else { "off" });
    }
}
