//! PLACEHOLDER until the scanner lands.
use super::frame::Violation;
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role { Client, Server }
#[derive(Debug, Clone, Copy)]
pub struct ScanPolicy { pub sender: Role, pub allowed_rsv: u8 }
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirectionCounts { pub frames: u64, pub messages: u64, pub text_messages: u64, pub binary_messages: u64, pub data_frames: u64, pub pings: u64, pub pongs: u64, pub closes: u64, pub payload_bytes: u64, pub wire_bytes: u64, pub largest_message_bytes: u64 }
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseInfo { pub code: Option<u16>, pub reason_len: u16 }
pub enum Feed { Ok, Violation { valid_up_to: usize, violation: Violation } }
pub struct FrameScanner { c: DirectionCounts }
impl FrameScanner {
    pub fn new(_p: ScanPolicy) -> Self { FrameScanner { c: DirectionCounts::default() } }
    pub fn feed(&mut self, chunk: &[u8]) -> Feed { self.c.wire_bytes += chunk.len() as u64; Feed::Ok }
    pub fn at_frame_boundary(&self) -> bool { true }
    pub fn counts(&self) -> &DirectionCounts { &self.c }
    pub fn close(&self) -> Option<CloseInfo> { None }
}
