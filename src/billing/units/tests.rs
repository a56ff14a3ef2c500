use super::*;
use crate::relay::scanner::{Feed, FrameScanner, Role, ScanLimits, ScanPolicy};

fn term(of: Quantity, per: f64) -> UnitTerm {
    UnitTerm { of, per, chunk: None }
}

fn chunked(of: Quantity, bytes: u32, slot: usize) -> UnitTerm {
    UnitTerm { of, per: 1.0, chunk: Some(ChunkSlot { bytes, slot }) }
}

fn rule(name: &str, terms: Vec<UnitTerm>, round: Rounding) -> UnitRule {
    UnitRule { name: name.into(), terms, round }
}

/// One FIN binary frame of `len` bytes, masked when the client sends it (the scanner tests'
/// independent encoder).
fn encode(out: &mut Vec<u8>, sender: Role, len: usize) {
    let mask = (sender == Role::Client).then_some([1, 2, 3, 4]);
    out.extend(crate::relay::scanner::tests::frame(0x82, mask, &vec![0x5A; len]));
}

/// The counts a scanner with the rules' chunk layout reports for messages of these sizes.
fn scan(rules: &[UnitRule], sender: Role, sizes: &[usize]) -> DirectionCounts {
    let mut bytes = Vec::new();
    for &len in sizes {
        encode(&mut bytes, sender, len);
    }
    let mut s = FrameScanner::new(ScanPolicy::new(sender), ScanLimits { chunks: chunks(rules), ..ScanLimits::NONE });
    assert_eq!(s.feed(&bytes), Feed::Ok);
    *s.counts()
}

fn value_of(rules: &[UnitRule], name: &str, inputs: &UnitInputs) -> f64 {
    let all = compute(rules, inputs);
    let found = all.iter().find(|(n, _)| n == name);
    found.unwrap_or_else(|| panic!("no unit {name} in {all:?}")).1
}

#[test]
fn every_quantity_reads_its_own_input() {
    let mut inputs = UnitInputs { requests: 1, duration_ms: 2, active_ms: 3, ..Default::default() };
    inputs.dirs[0].messages = 4;
    inputs.dirs[1].messages = 5;
    inputs.dirs[0].payload_bytes = 6;
    inputs.dirs[1].payload_bytes = 7;
    inputs.dirs[0].wire_bytes = 8;
    inputs.dirs[1].wire_bytes = 9;
    inputs.dirs[0].chunked = [10, 11, 12, 13];
    inputs.dirs[1].chunked = [20, 21, 22, 23];
    let got: Vec<u64> = Quantity::ALL.iter().map(|&q| raw(&term(q, 1.0), &inputs)).collect();
    assert_eq!(got, vec![1, 4, 5, 6, 7, 8, 9, 2, 3]);
    assert_eq!(raw(&chunked(Quantity::MessagesIn, 7, 2), &inputs), 12);
    assert_eq!(raw(&chunked(Quantity::MessagesOut, 7, 3), &inputs), 23);
    // A slot outside the scanner's four reads 0 instead of panicking.
    assert_eq!(raw(&chunked(Quantity::MessagesOut, 7, 9), &inputs), 0);
}

#[test]
fn terms_divide_sum_and_round() {
    let mut inputs = UnitInputs { requests: 1, duration_ms: 90_500, ..Default::default() };
    inputs.dirs[0].messages = 30;
    inputs.dirs[1].messages = 1;
    let rules = [
        rule("fractions", vec![term(Quantity::Requests, 1.0), term(Quantity::MessagesIn, 20.0)], Rounding::None),
        rule("minutes", vec![term(Quantity::Duration, 60_000.0)], Rounding::Up),
        rule("none", vec![], Rounding::Up),
    ];
    assert_eq!(
        compute(&rules, &inputs),
        vec![("fractions".to_string(), 2.5), ("minutes".to_string(), 2.0), ("none".to_string(), 0.0),]
    );
}

#[test]
fn rounding_up_ignores_float_error_but_not_real_excess() {
    let mut inputs = UnitInputs { requests: 1, ..Default::default() };
    inputs.dirs[0].messages = 5;
    inputs.dirs[1].messages = 1;
    let terms = vec![term(Quantity::Requests, 1.0), term(Quantity::MessagesIn, 3.0), term(Quantity::MessagesOut, 3.0)];
    let sum = rule("sum", terms.clone(), Rounding::None);
    // 1 + 5/3 + 1/3 is 3 exactly, 3.0000000000000004 in f64: a naive ceil would bill 4.
    assert!(value(&sum, &inputs) > 3.0);
    assert_eq!(value(&rule("up", terms, Rounding::Up), &inputs), 3.0);
    // One millisecond past a whole minute is a real excess.
    let minutes = rule("m", vec![term(Quantity::Duration, 60_000.0)], Rounding::Up);
    let at = |ms| value(&minutes, &UnitInputs { duration_ms: ms, ..Default::default() });
    assert_eq!(at(0), 0.0);
    assert_eq!(at(1), 1.0);
    assert_eq!(at(60_000), 1.0);
    assert_eq!(at(60_001), 2.0);
    // Thirty days plus one millisecond.
    assert_eq!(at(2_592_000_001), 43_201.0);
    assert_eq!(ceil_whole(1e12 + 0.5, 2), 1e12 + 1.0);
}

#[test]
fn chunks_follow_the_slots() {
    let rules = [
        rule(
            "a",
            vec![chunked(Quantity::MessagesIn, 32_768, 0), chunked(Quantity::MessagesOut, 32_768, 0)],
            Rounding::None,
        ),
        rule("b", vec![term(Quantity::MessagesOut, 1.0), chunked(Quantity::MessagesOut, 2_048, 1)], Rounding::None),
    ];
    assert_eq!(chunks(&rules), Chunks([32_768, 2_048, 0, 0]));
    assert!(chunks(&[]).is_unused());
    // Counted by real scanners: 3 KiB and 33 KiB messages in, 100 KiB out.
    let inputs = UnitInputs {
        dirs: [scan(&rules, Role::Client, &[3 * 1024, 33 * 1024]), scan(&rules, Role::Server, &[100 * 1024])],
        ..Default::default()
    };
    assert_eq!(value_of(&rules, "a", &inputs), 1.0 + 2.0 + 4.0);
    assert_eq!(value_of(&rules, "b", &inputs), 1.0 + 50.0);
}

// ---- the shipped vendor examples ----------------------------------------------------
//
// `config/billing-examples.yaml`, loaded through the real config parser, checked against
// the worked examples the vendors publish. Vendors bill totals over many connections;
// weir computes units per connection, so each test models the example's connections,
// sums the per-connection units, and compares with the vendor's totals.

const EXAMPLES: &str = include_str!("../../../config/billing-examples.yaml");

fn example_rules() -> Vec<UnitRule> {
    let text = format!(
        "listeners: [{{address: \"127.0.0.1:8080\"}}]\n\
         pools: [{{name: p, backends: [\"127.0.0.1:9000\"]}}]\n\
         routes: [{{path_prefix: /, pool: p}}]\n\
         {EXAMPLES}"
    );
    match crate::config::parse(&text, "billing-examples.yaml") {
        Ok(config) => config.billing_units,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn examples_file_has_the_expected_units() {
    let rules = example_rules();
    let names: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["do_requests", "apigw_messages", "apigw_connection_minutes", "azure_outbound_units"]);
    // 32 KiB for API Gateway, 2 KiB for Web PubSub, in order of first use.
    assert_eq!(chunks(&rules), Chunks([32_768, 2_048, 0, 0]));
}

/// One connection: the upgrade request, a lifetime, and data messages each way.
fn connection(rules: &[UnitRule], duration_ms: u64, sizes_in: &[usize], sizes_out: &[usize]) -> UnitInputs {
    UnitInputs {
        requests: 1,
        duration_ms,
        active_ms: 0,
        dirs: [scan(rules, Role::Client, sizes_in), scan(rules, Role::Server, sizes_out)],
    }
}

/// Counts without scanning, for examples with millions of messages.
fn counted(messages_in: u64, messages_out: u64) -> UnitInputs {
    let mut inputs = UnitInputs { requests: 1, ..Default::default() };
    inputs.dirs[0].messages = messages_in;
    inputs.dirs[1].messages = messages_out;
    inputs
}

#[test]
fn cloudflare_durable_objects_requests() {
    let rules = example_rules();
    let units = |inputs: &UnitInputs| value_of(&rules, "do_requests", inputs);

    // https://developers.cloudflare.com/durable-objects/platform/changelog/ (2024-04-01):
    // 1,000,000 WebSocket messages received → billed as 50,000 requests (20:1).
    // As 1,000 connections of 1,000 messages each: 1,000 upgrade requests + 50,000.
    let per_connection = units(&counted(1_000, 0));
    assert_eq!(per_connection, 51.0);
    assert_eq!(per_connection * 1_000.0, 1_000.0 + 50_000.0);
    // Outgoing messages are free; so are pings (not messages, see the scanner tests).
    assert_eq!(units(&counted(1_000, 1_000_000)), 51.0);

    // https://developers.cloudflare.com/durable-objects/platform/pricing/, "Example 2":
    // 150,000 WebSocket connection requests and 72,000,000 messages → "150,000 + (72 million
    // requests / 20 ...) = 3.75 million". 5,000 connections a day for 30 days; each client
    // sends one message a minute for 8 hours: 480 messages per connection.
    let connections = 5_000.0 * 30.0;
    assert_eq!(connections * 480.0, 72_000_000.0);
    assert_eq!(connections * units(&counted(480, 0)), 3_750_000.0);

    // Same page, "Example 3": 100 connections open all month, one message a second:
    // "100 + (259.2 million requests / 20 ...) = 12,960,100 requests".
    let month = 60 * 60 * 24 * 30;
    assert_eq!(100 * month, 259_200_000);
    assert_eq!(100.0 * units(&counted(month, 0)), 12_960_100.0);

    // Same page, "Example 4": 10,000 hibernatable connections, one message a minute for 30
    // days (432,000,000 messages): "10,000 + (432 million requests / 20 ...)" = 21,610,000.
    let minutes = 60 * 24 * 30;
    assert_eq!(10_000 * minutes, 432_000_000);
    assert_eq!(10_000.0 * units(&counted(minutes, 0)), 21_610_000.0);
}

#[test]
fn aws_api_gateway_websocket_messages_and_minutes() {
    let rules = example_rules();

    // https://aws.amazon.com/api-gateway/pricing/, "WebSocket APIs" pricing example: 1,000
    // users connected 12 hours a day, each sends 100 and receives 500 messages a day of 3 KB.
    // Messages: (100 + 500) * 1,000 * 30 = 18M; connection minutes: 1,000 * 12 * 60 * 30 =
    // 21,600,000. One connection per user per day: 30,000 connections.
    let day = connection(&rules, 12 * 3_600_000, &[3 * 1024; 100], &[3 * 1024; 500]);
    assert_eq!(value_of(&rules, "apigw_messages", &day), 600.0);
    assert_eq!(value_of(&rules, "apigw_connection_minutes", &day), 720.0);
    assert_eq!(30_000.0 * value_of(&rules, "apigw_messages", &day), 18_000_000.0);
    assert_eq!(30_000.0 * value_of(&rules, "apigw_connection_minutes", &day), 21_600_000.0);

    // Same page: "Messages are metered in 32 KB increments. So, a 33 KB message is metered
    // as two messages" (KB = 1024 bytes, see config/billing-examples.yaml), both directions.
    let big = connection(&rules, 1, &[33 * 1024], &[33 * 1024, 32 * 1024, 0]);
    assert_eq!(value_of(&rules, "apigw_messages", &big), 2.0 + 2.0 + 1.0 + 1.0);
    // A started minute counts as a minute (our assumption; see the examples file).
    assert_eq!(value_of(&rules, "apigw_connection_minutes", &big), 1.0);
}

#[test]
fn azure_web_pubsub_outbound_units() {
    let rules = example_rules();
    let units = |inputs: &UnitInputs| value_of(&rules, "azure_outbound_units", inputs);

    // https://learn.microsoft.com/azure/azure-web-pubsub/concept-billing-model: one user
    // broadcasts 4 KB to 10 connections; "Outbound traffic for billing = 4 KB (upstream
    // traffic to Azure Functions) + 4 KB * 10 ... = 44 KB", "message count = 44 KB / 2 KB =
    // 22". weir relays the 10 client deliveries: 10 * (4 KB / 2 KB) = 20 of the 22; the
    // other 2 are the service's webhook call, which has no WebSocket counterpart here.
    let receiver = connection(&rules, 1, &[], &[4 * 1024]);
    assert_eq!(10.0 * units(&receiver), 20.0);
    // The sender's own 4 KB message is inbound traffic: free.
    let sender = connection(&rules, 1, &[4 * 1024], &[]);
    assert_eq!(units(&sender), 0.0);

    // Same page: "100 KB of traffic is counted as 50 messages".
    assert_eq!(units(&connection(&rules, 1, &[], &[100 * 1024])), 50.0);
    // Per message: a message over 2 KB is several 2 KB messages, every message at least 1.
    let mixed = connection(&rules, 1, &[], &[2 * 1024, 2 * 1024 + 1, 10, 0]);
    assert_eq!(units(&mixed), 1.0 + 2.0 + 1.0 + 1.0);
}
