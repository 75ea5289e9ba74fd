//! TCP connections are reported as soon as they close, and their flows freed, while stream
//! numbers stay those of the reference (Wireshark's `tcp.stream`): stragglers of a closed
//! connection keep its number, a new connection on the same addresses gets a new one.

use etherparse::PacketBuilder;
use hais_agent::decode::LinkType;
use hais_agent::engine::{Engine, EngineConfig, StreamReport};
use hais_agent::output::Value;

const CLIENT: [u8; 4] = [10, 1, 1, 1];
const SERVER: [u8; 4] = [10, 2, 2, 2];

/// One segment between CLIENT:`port` and SERVER:80; `flags` letters: S, A, F, R.
fn seg(from_client: bool, port: u16, seq: u32, ack: u32, flags: &str, data: &[u8]) -> Vec<u8> {
    let (src, dst, sp, dp) = if from_client {
        (CLIENT, SERVER, port, 80)
    } else {
        (SERVER, CLIENT, 80, port)
    };
    let mut b = PacketBuilder::ethernet2([2; 6], [4; 6])
        .ipv4(src, dst, 64)
        .tcp(sp, dp, seq, 64240);
    for (c, set) in [('S', 0), ('A', 1), ('F', 2), ('R', 3)] {
        if flags.contains(c) {
            b = match set {
                0 => b.syn(),
                1 => b.ack(ack),
                2 => b.fin(),
                _ => b.rst(),
            };
        }
    }
    let mut out = Vec::new();
    b.write(&mut out, data).unwrap();
    out
}

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.1 204 No Content\r\n\r\n";

/// An HTTP request and its answer on a fresh connection (client ISN `isn`, server ISN
/// 5000), up to the point where either side may close.
fn exchange(port: u16, isn: u32) -> Vec<Vec<u8>> {
    exchange_of(port, isn, REQUEST)
}

/// [`exchange`] with other client bytes (of the same length, so [`fin_close`] fits).
fn exchange_of(port: u16, isn: u32, request: &[u8]) -> Vec<Vec<u8>> {
    let c = isn + 1;
    let s = 5001;
    let c2 = c + request.len() as u32;
    vec![
        seg(true, port, isn, 0, "S", &[]),
        seg(false, port, 5000, c, "SA", &[]),
        seg(true, port, c, s, "A", &[]),
        seg(true, port, c, s, "A", request),
        seg(false, port, s, c2, "A", RESPONSE),
    ]
}

/// The orderly close after [`exchange`]: client FIN, server FIN/ACK, last ACK.
fn fin_close(port: u16, isn: u32) -> Vec<Vec<u8>> {
    let c = isn + 1 + REQUEST.len() as u32;
    let s = 5001 + RESPONSE.len() as u32;
    vec![
        seg(true, port, c, s, "FA", &[]),
        seg(false, port, s, c + 1, "FA", &[]),
        seg(true, port, c + 1, s + 1, "A", &[]),
    ]
}

struct Run {
    engine: Engine,
    t: u64,
}

impl Run {
    fn new() -> Self {
        Run {
            engine: Engine::new(EngineConfig::default()),
            t: 0,
        }
    }

    fn feed(&mut self, frames: Vec<Vec<u8>>) {
        for f in frames {
            self.t += 1000;
            self.engine.on_frame(self.t, LinkType::Ethernet, &f);
        }
    }
}

fn field(r: &StreamReport, key: &str) -> Option<Value> {
    r.record.get(key).cloned()
}

#[test]
fn fin_close_reports_at_once_and_stragglers_keep_the_stream() {
    let mut run = Run::new();
    run.feed(exchange(40000, 100));
    assert!(run.engine.take_finished().is_empty());
    run.feed(fin_close(40000, 100));
    let done = run.engine.take_finished();
    assert_eq!(done.len(), 1, "reported at the last ACK");
    assert_eq!(run.engine.live_flows(), 0, "state freed");
    assert_eq!(done[0].stream, 0);
    assert!(field(&done[0], "http").is_some() && field(&done[0], "ja4t").is_some());
    assert!(field(&done[0], "ja4l_c").is_some() && field(&done[0], "ja4ts").is_some());

    // A retransmitted FIN and a last ACK: the same connection, nothing new to report.
    let c = 101 + REQUEST.len() as u32;
    let s = 5001 + RESPONSE.len() as u32;
    run.feed(vec![
        seg(false, 40000, s, c + 1, "FA", &[]),
        seg(true, 40000, c + 1, s + 1, "A", &[]),
    ]);
    // Another connection, then the first port reused with a new ISN.
    run.feed(exchange(40001, 7000));
    run.feed(exchange(40000, 9000));
    let rest = run.engine.finish();
    let streams: Vec<(u64, Option<Value>)> = rest
        .iter()
        .map(|r| (r.stream, field(r, "src_port")))
        .collect();
    assert_eq!(
        streams,
        [(1, Some(40001u16.into())), (2, Some(40000u16.into()))],
        "the stragglers took no stream number; the reused port got a new one"
    );
    assert_eq!(run.engine.stats().streams_reported, 3);
}

/// The report made at the close is the one the end of input would have made.
#[test]
fn early_report_equals_report_at_end_of_input() {
    let mut closed = Run::new();
    closed.feed(exchange(40000, 100));
    closed.feed(fin_close(40000, 100));
    let early = closed.engine.take_finished();

    let mut open = Run::new();
    open.feed(exchange(40000, 100));
    // Half the close only: the server's FIN is never acknowledged.
    open.feed(fin_close(40000, 100)[..2].to_vec());
    assert!(open.engine.take_finished().is_empty(), "not over yet");
    let late = open.engine.finish();
    assert_eq!(early.len(), 1);
    assert_eq!(late.len(), 1);
    // Identical except for what the last ACK itself adds (nothing, for HTTP).
    assert_eq!(early[0].record, late[0].record);
}

#[test]
fn rst_closes_only_when_nothing_more_can_be_learned() {
    // Bytes of no known protocol: nothing more to reassemble, and the server has spoken
    // (JA4TS is settled), so a RST ends the connection.
    let mut run = Run::new();
    let unknown = vec![0x7fu8; REQUEST.len()];
    run.feed(exchange_of(40000, 100, &unknown));
    let c = 101 + REQUEST.len() as u32;
    run.feed(vec![seg(true, 40000, c, 0, "R", &[])]);
    assert_eq!(run.engine.take_finished().len(), 1);
    assert_eq!(run.engine.live_flows(), 0);

    // HTTP/1 keeps reading the client for further requests: a RST is not the end (the
    // other side's packets in flight may still carry some).
    let mut run = Run::new();
    run.feed(exchange(40000, 100));
    run.feed(vec![seg(true, 40000, c, 0, "R", &[])]);
    assert!(run.engine.take_finished().is_empty());
    assert_eq!(run.engine.live_flows(), 1);

    // Before any payload the protocol is unknown and the server may still answer the
    // handshake: a RST does not end the flow.
    let mut run = Run::new();
    run.feed(exchange(40000, 100)[..3].to_vec());
    run.feed(vec![seg(true, 40000, 101, 0, "R", &[])]);
    assert!(run.engine.take_finished().is_empty());
    assert_eq!(run.engine.live_flows(), 1);
    assert_eq!(run.engine.finish().len(), 1);
}

/// A connection whose SYN was not captured is never closed early: without the client's ISN
/// a new connection on the same addresses could not be told from a straggler.
#[test]
fn no_early_close_without_the_syn() {
    let mut run = Run::new();
    let mut frames = exchange(40000, 100);
    frames.remove(0);
    run.feed(frames);
    run.feed(fin_close(40000, 100));
    assert!(run.engine.take_finished().is_empty());
    assert_eq!(run.engine.finish().len(), 1);
}
