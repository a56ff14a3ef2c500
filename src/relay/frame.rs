//! PLACEHOLDER until the scanner lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode { Continuation, Text, Binary, Close, Ping, Pong }
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation { ReservedOpcode }
impl Violation { pub fn as_str(self) -> &'static str { "reserved_opcode" } }
pub fn encode_close_frame(code: u16, _reason: &[u8], mask: Option<[u8; 4]>, out: &mut [u8; 131]) -> usize {
    out[0] = 0x88;
    match mask {
        Some(m) => { out[1] = 0x82; out[2..6].copy_from_slice(&m); let c = code.to_be_bytes(); out[6] = c[0] ^ m[0]; out[7] = c[1] ^ m[1]; 8 }
        None => { out[1] = 2; out[2..4].copy_from_slice(&code.to_be_bytes()); 4 }
    }
}
