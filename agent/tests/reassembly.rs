//! A ClientHello that arrives split over several TCP segments, out of order, with a
//! retransmission and an overlap, or split over several TLS records, gives the same JA4 as
//! the ClientHello in one piece (the corpus has no such capture; modern post-quantum hellos
//! need it).

use etherparse::PacketBuilder;
use hais_agent::capture::file::CaptureFile;
use hais_agent::decode::{LinkType, Transport, decode};
use hais_agent::engine::{Engine, EngineConfig};

const CLIENT: [u8; 4] = [10, 1, 1, 1];
const SERVER: [u8; 4] = [10, 2, 2, 2];

/// The TLS bytes of the one ClientHello in the corpus file tls12.pcap (Firefox).
fn firefox_client_hello() -> Vec<u8> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../testdata/conformance/pcap/tls12.pcap"
    );
    let mut cap = CaptureFile::open(path).unwrap();
    let link = cap.link_type();
    while let Some(p) = cap.next_packet().unwrap() {
        if let Ok(pkt) = decode(link, p.data)
            && let Transport::Tcp(seg) = pkt.transport
            && seg.payload.first() == Some(&0x16)
        {
            return seg.payload.to_vec();
        }
    }
    panic!("no ClientHello in tls12.pcap");
}

fn tcp(from_client: bool, seq: u32, ack: u32, flags: &str, payload: &[u8]) -> Vec<u8> {
    let (src, dst, sp, dp) = if from_client {
        (CLIENT, SERVER, 40000, 443)
    } else {
        (SERVER, CLIENT, 443, 40000)
    };
    let mut b = PacketBuilder::ethernet2([2; 6], [4; 6])
        .ipv4(src, dst, 64)
        .tcp(sp, dp, seq, 65535);
    if flags.contains('S') {
        b = b.syn();
    }
    if flags.contains('A') {
        b = b.ack(ack);
    }
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    out
}

/// Runs a handshake, then the given client segments (offset into the TLS bytes, length).
fn ja4_of(tls: &[u8], segments: &[(usize, usize)]) -> String {
    let mut e = Engine::new(EngineConfig::default());
    let isn = 1000u32;
    let mut t = 0;
    let mut feed = |frame: Vec<u8>| {
        t += 100;
        e.on_frame(t, LinkType::Ethernet, &frame);
    };
    feed(tcp(true, isn, 0, "S", &[]));
    feed(tcp(false, 5000, isn + 1, "SA", &[]));
    feed(tcp(true, isn + 1, 5001, "A", &[]));
    for &(off, len) in segments {
        feed(tcp(
            true,
            isn + 1 + off as u32,
            5001,
            "A",
            &tls[off..off + len],
        ));
    }
    let reports = e.finish();
    assert_eq!(reports.len(), 1);
    match reports[0].record.get("ja4") {
        Some(hais_agent::output::Value::Str(s)) => s.clone(),
        other => panic!("no ja4: {other:?} in {:?}", reports[0].record),
    }
}

#[test]
fn split_reordered_retransmitted_overlapping_segments() {
    let tls = firefox_client_hello();
    let n = tls.len();
    let whole = ja4_of(&tls, &[(0, n)]);
    assert_eq!(whole, "t13d1715h2_5b57614c22b0_3d5424432f57");
    let a = n / 3;
    let b = 2 * n / 3;
    // Out of order, a retransmission of the first piece, and an overlapping last piece.
    let messy = ja4_of(
        &tls,
        &[(b, n - b), (0, a), (0, a), (a - 10, b - a + 20), (b, n - b)],
    );
    assert_eq!(messy, whole);
    // Eight bytes at a time, backwards: the reassembler holds every out-of-order piece
    // (within its budget of 256 segments per direction) until the first one arrives.
    let pieces: Vec<(usize, usize)> = (0..n).step_by(8).rev().map(|i| (i, 8.min(n - i))).collect();
    assert!(pieces.len() < 256);
    assert_eq!(ja4_of(&tls, &pieces), whole);
}

#[test]
fn client_hello_split_over_tls_records() {
    let tls = firefox_client_hello();
    // Re-frame the handshake message into records of 100 bytes each.
    let hs = &tls[5..];
    let mut framed = Vec::new();
    for chunk in hs.chunks(100) {
        framed.extend_from_slice(&[0x16, 0x03, 0x01]);
        framed.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        framed.extend_from_slice(chunk);
    }
    let n = framed.len();
    assert_eq!(
        ja4_of(&framed, &[(0, n)]),
        "t13d1715h2_5b57614c22b0_3d5424432f57"
    );
}
