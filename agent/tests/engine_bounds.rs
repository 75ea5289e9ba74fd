//! Memory stays bounded under floods: the flow table never exceeds its cap, finished streams
//! are handed out as they finish, and nothing panics.

use etherparse::PacketBuilder;
use hais_agent::decode::LinkType;
use hais_agent::engine::{Engine, EngineConfig};

fn syn(src: [u8; 4], sport: u16, seq: u32) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1])
        .ipv4(src, [10, 0, 0, 1], 64)
        .tcp(sport, 443, seq, 64240)
        .syn()
        .options(&[
            etherparse::TcpOptionElement::MaximumSegmentSize(1460),
            etherparse::TcpOptionElement::Noop,
            etherparse::TcpOptionElement::WindowScale(7),
        ])
        .unwrap();
    let mut out = Vec::with_capacity(b.size(0));
    b.write(&mut out, &[]).unwrap();
    out
}

#[test]
fn half_open_flood_is_bounded() {
    const CAP: usize = 5_000;
    const FLOOD: u32 = 200_000;
    let cfg = EngineConfig {
        max_flows: CAP,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(cfg);
    let mut reported = 0usize;
    for i in 0..FLOOD {
        let src = [172, 16, (i >> 16) as u8, (i >> 8) as u8];
        let frame = syn(src, 1024 + (i & 0xff) as u16, i);
        engine.on_frame(u64::from(i) * 10, LinkType::Ethernet, &frame);
        assert!(engine.live_flows() <= CAP);
        if i % 10_000 == 0 {
            reported += engine.take_finished().len();
        }
    }
    reported += engine.take_finished().len();
    let rest = engine.finish();
    reported += rest.len();
    let stats = engine.stats();
    assert_eq!(stats.flows, u64::from(FLOOD));
    assert_eq!(stats.flows_evicted, u64::from(FLOOD) - CAP as u64);
    // Every half-open connection still gets its JA4T: eviction finishes flows, it does not
    // lose them.
    assert_eq!(reported, FLOOD as usize);
    assert_eq!(
        rest.first().and_then(|r| r.record.get("ja4t").cloned()),
        Some("64240_2-1-3_1460_7".into())
    );
}

#[test]
fn idle_flows_are_finished_during_the_run() {
    let cfg = EngineConfig {
        idle_timeout_us: 60_000_000,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(cfg);
    engine.on_frame(0, LinkType::Ethernet, &syn([192, 168, 1, 1], 5000, 1));
    // Two minutes later another flow starts: the first is idle past the timeout.
    engine.on_frame(
        120_000_000,
        LinkType::Ethernet,
        &syn([192, 168, 1, 2], 5001, 1),
    );
    let done = engine.take_finished();
    assert_eq!(done.len(), 1);
    assert_eq!(
        done[0].record.get("src_port").cloned(),
        Some(5000u16.into())
    );
    assert_eq!(engine.live_flows(), 1);
}
