//! End-to-end tests: RFC 9001 / RFC 9369 sample packets, the corpus capture, multi-packet
//! hellos, coalescing, Retry, and robustness against hostile input.

use super::keys::retry_integrity_tag;
use super::*;
use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes128Gcm, KeyInit};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

fn h(s: &str) -> Vec<u8> {
    hex::decode(s.replace([' ', '\n'], "")).expect("test hex")
}

const RFC_DCID: &str = "8394c8f03e515708";

/// RFC 9001 §A.2, the complete protected client Initial (1200 bytes).
const RFC9001_CLIENT_INITIAL: &str = "
c000000001088394c8f03e5157080000 449e7b9aec34d1b1c98dd7689fb8ec11
d242b123dc9bd8bab936b47d92ec356c 0bab7df5976d27cd449f63300099f399
1c260ec4c60d17b31f8429157bb35a12 82a643a8d2262cad67500cadb8e7378c
8eb7539ec4d4905fed1bee1fc8aafba1 7c750e2c7ace01e6005f80fcb7df6212
30c83711b39343fa028cea7f7fb5ff89 eac2308249a02252155e2347b63d58c5
457afd84d05dfffdb20392844ae81215 4682e9cf012f9021a6f0be17ddd0c208
4dce25ff9b06cde535d0f920a2db1bf3 62c23e596d11a4f5a6cf3948838a3aec
4e15daf8500a6ef69ec4e3feb6b1d98e 610ac8b7ec3faf6ad760b7bad1db4ba3
485e8a94dc250ae3fdb41ed15fb6a8e5 eba0fc3dd60bc8e30c5c4287e53805db
059ae0648db2f64264ed5e39be2e20d8 2df566da8dd5998ccabdae053060ae6c
7b4378e846d29f37ed7b4ea9ec5d82e7 961b7f25a9323851f681d582363aa5f8
9937f5a67258bf63ad6f1a0b1d96dbd4 faddfcefc5266ba6611722395c906556
be52afe3f565636ad1b17d508b73d874 3eeb524be22b3dcbc2c7468d54119c74
68449a13d8e3b95811a198f3491de3e7 fe942b330407abf82a4ed7c1b311663a
c69890f4157015853d91e923037c227a 33cdd5ec281ca3f79c44546b9d90ca00
f064c99e3dd97911d39fe9c5d0b23a22 9a234cb36186c4819e8b9c5927726632
291d6a418211cc2962e20fe47feb3edf 330f2c603a9d48c0fcb5699dbfe58964
25c5bac4aee82e57a85aaf4e2513e4f0 5796b07ba2ee47d80506f8d2c25e50fd
14de71e6c418559302f939b0e1abd576 f279c4b2e0feb85c1f28ff18f58891ff
ef132eef2fa09346aee33c28eb130ff2 8f5b766953334113211996d20011a198
e3fc433f9f2541010ae17c1bf202580f 6047472fb36857fe843b19f5984009dd
c324044e847a4f4a0ab34f719595de37 252d6235365e9b84392b061085349d73
203a4a13e96f5432ec0fd4a1ee65accd d5e3904df54c1da510b0ff20dcc0c77f
cb2c0e0eb605cb0504db87632cf3d8b4 dae6e705769d1de354270123cb11450e
fc60ac47683d7b8d0f811365565fd98c 4c8eb936bcab8d069fc33bd801b03ade
a2e1fbc5aa463d08ca19896d2bf59a07 1b851e6c239052172f296bfb5e724047
90a2181014f3b94a4e97d117b4381303 68cc39dbb2d198065ae3986547926cd2
162f40a29f0c3c8745c0f50fba3852e5 66d44575c29d39a03f0cda721984b6f4
40591f355e12d439ff150aab7613499d bd49adabc8676eef023b15b65bfc5ca0
6948109f23f350db82123535eb8a7433 bdabcb909271a6ecbcb58b936a88cd4e
8f2e6ff5800175f113253d8fa9ca8885 c2f552e657dc603f252e1a8e308f76f0
be79e2fb8f5d5fbbe2e30ecadd220723 c8c0aea8078cdfcb3868263ff8f09400
54da48781893a7e49ad5aff4af300cd8 04a6b6279ab3ff3afb64491c85194aab
760d58a606654f9f4400e8b38591356f bf6425aca26dc85244259ff2b19c41b9
f96f3ca9ec1dde434da7d2d392b905dd f3d1f9af93d1af5950bd493f5aa731b4
056df31bd267b6b90a079831aaf579be 0a39013137aac6d404f518cfd4684064
7e78bfe706ca4cf5e9c5453e9f7cfd2b 8b4c8d169a44e55c88d4a9a7f9474241
e221af44860018ab0856972e194cd934";

/// RFC 9001 §A.3, the protected server Initial.
const RFC9001_SERVER_INITIAL: &str = "
cf000000010008f067a5502a4262b500 4075c0d95a482cd0991cd25b0aac406a
5816b6394100f37a1c69797554780bb3 8cc5a99f5ede4cf73c3ec2493a1839b3
dbcba3f6ea46c5b7684df3548e7ddeb9 c3bf9c73cc3f3bded74b562bfb19fb84
022f8ef4cdd93795d77d06edbb7aaf2f 58891850abbdca3d20398c276456cbc4
2158407dd074ee";

/// RFC 9369 §A.2, the protected QUIC v2 client Initial.
const RFC9369_CLIENT_INITIAL: &str = "
d76b3343cf088394c8f03e5157080000 449ea0c95e82ffe67b6abcdb4298b485
dd04de806071bf03dceebfa162e75d6c 96058bdbfb127cdfcbf903388e99ad04
9f9a3dd4425ae4d0992cfff18ecf0fdb 5a842d09747052f17ac2053d21f57c5d
250f2c4f0e0202b70785b7946e992e58 a59ac52dea6774d4f03b55545243cf1a
12834e3f249a78d395e0d18f4d766004 f1a2674802a747eaa901c3f10cda5500
cb9122faa9f1df66c392079a1b40f0de 1c6054196a11cbea40afb6ef5253cd68
18f6625efce3b6def6ba7e4b37a40f77 32e093daa7d52190935b8da58976ff33
12ae50b187c1433c0f028edcc4c2838b 6a9bfc226ca4b4530e7a4ccee1bfa2a3
d396ae5a3fb512384b2fdd851f784a65 e03f2c4fbe11a53c7777c023462239dd
6f7521a3f6c7d5dd3ec9b3f233773d4b 46d23cc375eb198c63301c21801f6520
bcfb7966fc49b393f0061d974a2706df 8c4a9449f11d7f3d2dcbb90c6b877045
636e7c0c0fe4eb0f697545460c806910 d2c355f1d253bc9d2452aaa549e27a1f
ac7cf4ed77f322e8fa894b6a83810a34 b361901751a6f5eb65a0326e07de7c12
16ccce2d0193f958bb3850a833f7ae43 2b65bc5a53975c155aa4bcb4f7b2c4e5
4df16efaf6ddea94e2c50b4cd1dfe060 17e0e9d02900cffe1935e0491d77ffb4
fdf85290fdd893d577b1131a610ef6a5 c32b2ee0293617a37cbb08b847741c3b
8017c25ca9052ca1079d8b78aebd4787 6d330a30f6a8c6d61dd1ab5589329de7
14d19d61370f8149748c72f132f0fc99 f34d766c6938597040d8f9e2bb522ff9
9c63a344d6a2ae8aa8e51b7b90a4a806 105fcbca31506c446151adfeceb51b91
abfe43960977c87471cf9ad4074d30e1 0d6a7f03c63bd5d4317f68ff325ba3bd
80bf4dc8b52a0ba031758022eb025cdd 770b44d6d6cf0670f4e990b22347a7db
848265e3e5eb72dfe8299ad7481a4083 22cac55786e52f633b2fb6b614eaed18
d703dd84045a274ae8bfa73379661388 d6991fe39b0d93debb41700b41f90a15
c4d526250235ddcd6776fc77bc97e7a4 17ebcb31600d01e57f32162a8560cacc
7e27a096d37a1a86952ec71bd89a3e9a 30a2a26162984d7740f81193e8238e61
f6b5b984d4d3dfa033c1bb7e4f0037fe bf406d91c0dccf32acf423cfa1e70710
10d3f270121b493ce85054ef58bada42 310138fe081adb04e2bd901f2f13458b
3d6758158197107c14ebb193230cd115 7380aa79cae1374a7c1e5bbcb80ee23e
06ebfde206bfb0fcbc0edc4ebec30966 1bdd908d532eb0c6adc38b7ca7331dce
8dfce39ab71e7c32d318d136b6100671 a1ae6a6600e3899f31f0eed19e3417d1
34b90c9058f8632c798d4490da498730 7cba922d61c39805d072b589bd52fdf1
e86215c2d54e6670e07383a27bbffb5a ddf47d66aa85a0c6f9f32e59d85a44dd
5d3b22dc2be80919b490437ae4f36a0a e55edf1d0b5cb4e9a3ecabee93dfc6e3
8d209d0fa6536d27a5d6fbb17641cde2 7525d61093f1b28072d111b2b4ae5f89
d5974ee12e5cf7d5da4d6a31123041f3 3e61407e76cffcdcfd7e19ba58cf4b53
6f4c4938ae79324dc402894b44faf8af bab35282ab659d13c93f70412e85cb19
9a37ddec600545473cfb5a05e08d0b20 9973b2172b4d21fb69745a262ccde96b
a18b2faa745b6fe189cf772a9f84cbfc";

/// RFC 9369 §A.3, the protected QUIC v2 server Initial.
const RFC9369_SERVER_INITIAL: &str = "
dc6b3343cf0008f067a5502a4262b500 4075d92faaf16f05d8a4398c47089698
baeea26b91eb761d9b89237bbf872630 17915358230035f7fd3945d88965cf17
f9af6e16886c61bfc703106fbaf3cb4c fa52382dd16a393e42757507698075b2
c984c707f0a0812d8cd5a6881eaf21ce da98f4bd23f6fe1a3e2c43edd9ce7ca8
4bed8521e2e140";

/// The CRYPTO frame of the RFC sample client Initial (the same in RFC 9001 and 9369).
const RFC_CLIENT_CRYPTO_FRAME: &str = "
060040f1010000ed0303ebf8fa56f129 39b9584a3896472ec40bb863cfd3e868
04fe3a47f06a2b69484c000004130113 02010000c000000010000e00000b6578
616d706c652e636f6dff01000100000a 00080006001d00170018001000070005
04616c706e0005000501000000000033 00260024001d00209370b2c9caa47fba
baf4559fedba753de171fa71f50f1ce1 5d43e994ec74d748002b000302030400
0d0010000e0403050306030203080408 050806002d00020101001c0002400100
3900320408ffffffffffffffff050480 00ffff07048000ffff08011001048000
75300901100f088394c8f03e51570806 048000ffff";

/// The decrypted payload of the RFC sample server Initial (ACK + CRYPTO).
const RFC_SERVER_PAYLOAD: &str = "
02000000000600405a020000560303ee fce7f7b37ba1d1632e96677825ddf739
88cfc79825df566dc5430b9a045a1200 130100002e00330024001d00209d3c94
0d89690b84d08a60993c144eca684d10 81287c834d5311bcf32bb9da1a002b00
020304";

/// Client Initial UDP payloads from the corpus captures (extracted once with python3
/// from `/work/shared/conformance/pcap/*.pcapng`).
const CORPUS_CHAOS: &[u8] =
    include_bytes!("../../tests/data/quic-tls-handshake.client-initial.bin");
const CORPUS_SEVERAL: &[u8] =
    include_bytes!("../../tests/data/quic-with-several-tls-frames.client-initial.bin");

fn rfc_client_hello() -> Vec<u8> {
    // Frame type 06, offset 00, length 40f1, then the 241-byte handshake message.
    h(RFC_CLIENT_CRYPTO_FRAME)[4..].to_vec()
}

fn rfc_server_hello() -> Vec<u8> {
    // ACK (5 bytes), then 06 00 405a and the 90-byte ServerHello.
    h(RFC_SERVER_PAYLOAD)[9..].to_vec()
}

fn packet_event(from_initiator: bool, version: u32, kind: PacketKind) -> QuicEvent {
    QuicEvent::Packet {
        from_initiator,
        version,
        kind,
    }
}

// ---------------------------------------------------------------------------------------
// Test-only packet construction (the inverse of what the module does).

fn varint(v: u64) -> Vec<u8> {
    match v {
        0..=0x3f => vec![v as u8],
        0x40..=0x3fff => ((v as u16) | 0x4000).to_be_bytes().to_vec(),
        0x4000..=0x3fff_ffff => ((v as u32) | 0x8000_0000).to_be_bytes().to_vec(),
        _ => (v | 0xc000_0000_0000_0000).to_be_bytes().to_vec(),
    }
}

fn crypto_frame(offset: u64, data: &[u8]) -> Vec<u8> {
    let mut f = vec![0x06];
    f.extend(varint(offset));
    f.extend(varint(data.len() as u64));
    f.extend_from_slice(data);
    f
}

/// Builds a protected Initial packet (4-byte packet number).
fn seal_initial(
    version: u32,
    keys: &InitialKeys,
    dcid: &[u8],
    scid: &[u8],
    pn: u64,
    payload: &[u8],
) -> Vec<u8> {
    let type_bits: u8 = if version == VERSION_2 { 1 } else { 0 };
    let mut p = vec![0xc3 | (type_bits << 4)];
    p.extend_from_slice(&version.to_be_bytes());
    p.push(dcid.len() as u8);
    p.extend_from_slice(dcid);
    p.push(scid.len() as u8);
    p.extend_from_slice(scid);
    p.push(0); // no token
    let mut plain = payload.to_vec();
    while plain.len() < 4 {
        plain.push(0);
    }
    let length = 4 + plain.len() + 16;
    p.extend_from_slice(&((length as u16) | 0x4000).to_be_bytes());
    let pn_offset = p.len();
    p.extend_from_slice(&(pn as u32).to_be_bytes());
    let mut nonce = *keys.iv();
    for (n, b) in nonce.iter_mut().skip(4).zip(pn.to_be_bytes()) {
        *n ^= b;
    }
    let aead = Aes128Gcm::new(&(*keys.key()).into());
    let tag = aead
        .encrypt_inout_detached(&nonce.into(), &p, plain.as_mut_slice().into())
        .expect("seal");
    p.extend_from_slice(&plain);
    p.extend_from_slice(tag.as_slice());
    let sample: [u8; 16] = p[pn_offset + 4..pn_offset + 20].try_into().expect("sample");
    let mask = keys.header_protection_mask(&sample);
    p[0] ^= mask[0] & 0x0f;
    for i in 0..4 {
        p[pn_offset + i] ^= mask[1 + i];
    }
    p
}

/// A fake handshake message of the given type and body length.
fn handshake_msg(msg_type: u8, body_len: usize) -> Vec<u8> {
    let mut m = vec![msg_type];
    m.extend_from_slice(&(body_len as u32).to_be_bytes()[1..]);
    m.extend((0..body_len).map(|i| (i * 7 + 3) as u8));
    m
}

fn keys_pair(version: u32, dcid: &[u8]) -> (InitialKeys, InitialKeys) {
    (
        initial_keys(version, dcid, false).expect("client keys"),
        initial_keys(version, dcid, true).expect("server keys"),
    )
}

/// A v1 Retry from the server with a valid integrity tag.
fn build_retry(version: u32, odcid: &[u8], dcid: &[u8], scid: &[u8], token: &[u8]) -> Vec<u8> {
    let type_bits: u8 = if version == VERSION_2 { 0 } else { 3 };
    let mut p = vec![0xc0 | (type_bits << 4)];
    p.extend_from_slice(&version.to_be_bytes());
    p.push(dcid.len() as u8);
    p.extend_from_slice(dcid);
    p.push(scid.len() as u8);
    p.extend_from_slice(scid);
    p.extend_from_slice(token);
    let tag = retry_integrity_tag(version, odcid, &p).expect("tag");
    p.extend_from_slice(&tag);
    p
}

// ---------------------------------------------------------------------------------------
// RFC sample packets.

#[test]
fn rfc9001_client_initial_decrypts() {
    let pkt = h(RFC9001_CLIENT_INITIAL);
    assert_eq!(pkt.len(), 1200);
    assert!(looks_like_quic_initial(&pkt));
    let hdr = parse_long_header(&pkt).expect("header");
    assert_eq!(hdr.dcid, &h(RFC_DCID)[..]);
    assert_eq!(hdr.pn_offset, 18);
    assert_eq!(hdr.packet_len, 1200);
    let keys = initial_keys(VERSION_1, hdr.dcid, false).expect("keys");
    let mut out = Vec::new();
    let pn = decrypt_initial(&keys, &pkt, hdr.pn_offset, None, &mut out).expect("decrypt");
    assert_eq!(pn, 2);
    assert_eq!(out.len(), 1162);
    let frame = h(RFC_CLIENT_CRYPTO_FRAME);
    assert_eq!(&out[..frame.len()], &frame[..]);
    assert!(
        out[frame.len()..].iter().all(|&b| b == 0),
        "rest is PADDING"
    );
    assert!(rfc_client_hello().starts_with(&h("010000ed0303ebf8fa56f129")));
}

#[test]
fn rfc9001_connection_emits_both_hellos() {
    let mut conn = QuicConnection::new();
    let ev = conn.on_datagram(true, &h(RFC9001_CLIENT_INITIAL));
    assert_eq!(
        ev,
        vec![
            packet_event(true, VERSION_1, PacketKind::Initial),
            QuicEvent::ClientHello(rfc_client_hello()),
        ]
    );
    assert_eq!(conn.initial_dcid(), Some(&h(RFC_DCID)[..]));
    let ev = conn.on_datagram(false, &h(RFC9001_SERVER_INITIAL));
    assert_eq!(
        ev,
        vec![
            packet_event(false, VERSION_1, PacketKind::Initial),
            QuicEvent::ServerHello(rfc_server_hello()),
        ]
    );
    assert!(conn.hellos_done());
    // Retransmissions produce packet events only.
    let ev = conn.on_datagram(true, &h(RFC9001_CLIENT_INITIAL));
    assert_eq!(ev, vec![packet_event(true, VERSION_1, PacketKind::Initial)]);
    let s = conn.stats();
    assert_eq!(s.initials_decrypted, 3);
    assert_eq!(s.initials_undecryptable, 0);
    assert_eq!(s.malformed_frames, 0);
}

#[test]
fn rfc9369_v2_connection_emits_both_hellos() {
    let client = h(RFC9369_CLIENT_INITIAL);
    assert!(looks_like_quic_initial(&client));
    let hdr = parse_long_header(&client).expect("header");
    assert_eq!(hdr.version, VERSION_2);
    assert_eq!(hdr.kind, PacketKind::Initial);
    let keys = initial_keys(VERSION_2, hdr.dcid, false).expect("keys");
    let mut out = Vec::new();
    assert_eq!(
        decrypt_initial(&keys, &client, hdr.pn_offset, None, &mut out),
        Ok(2)
    );
    assert!(out.starts_with(&h(RFC_CLIENT_CRYPTO_FRAME)));

    let mut conn = QuicConnection::new();
    assert_eq!(
        conn.on_datagram(true, &client),
        vec![
            packet_event(true, VERSION_2, PacketKind::Initial),
            QuicEvent::ClientHello(rfc_client_hello()),
        ]
    );
    assert_eq!(
        conn.on_datagram(false, &h(RFC9369_SERVER_INITIAL)),
        vec![
            packet_event(false, VERSION_2, PacketKind::Initial),
            QuicEvent::ServerHello(rfc_server_hello()),
        ]
    );
    assert_eq!(conn.version(), Some(VERSION_2));
}

#[test]
fn server_first_is_undecryptable_and_counted() {
    let mut conn = QuicConnection::new();
    let ev = conn.on_datagram(false, &h(RFC9001_SERVER_INITIAL));
    assert_eq!(
        ev,
        vec![packet_event(false, VERSION_1, PacketKind::Initial)]
    );
    assert_eq!(conn.stats().initials_undecryptable, 1);
    // A client Initial with a corrupted tag is counted too, and does not fix the keys.
    let mut bad = h(RFC9001_CLIENT_INITIAL);
    let last = bad.len() - 1;
    bad[last] ^= 0x80;
    conn.on_datagram(true, &bad);
    assert_eq!(conn.stats().initials_undecryptable, 2);
    assert_eq!(conn.initial_dcid(), None);
}

// ---------------------------------------------------------------------------------------
// Corpus.

/// Minimal ClientHello walk for the test: (cipher suites, extension types, sig algs).
fn hello_fields(msg: &[u8]) -> (Vec<u16>, Vec<u16>, Vec<u16>) {
    use crate::bytes::Reader;
    let mut r = Reader::new(msg);
    assert_eq!(r.u8(), Some(1));
    let body = r.vec24().expect("body");
    assert!(r.is_empty(), "declared length covers exactly the message");
    let mut r = Reader::new(body);
    r.u16().expect("legacy_version");
    r.skip(32).expect("random");
    r.vec8().expect("session id");
    let ciphers: Vec<u16> = r
        .vec16()
        .expect("ciphers")
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    r.vec8().expect("compression");
    let mut exts = Reader::new(r.vec16().expect("extensions"));
    let (mut types, mut sigs) = (Vec::new(), Vec::new());
    while !exts.is_empty() {
        let t = exts.u16().expect("ext type");
        let data = exts.vec16().expect("ext data");
        types.push(t);
        if t == 0x000d {
            let list = Reader::new(data).vec16().expect("sig algs").to_vec();
            sigs = list
                .chunks(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
        }
    }
    (ciphers, types, sigs)
}

fn hash12(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))[..12].to_string()
}

fn is_grease(v: u16) -> bool {
    v & 0x0f0f == 0x0a0a && (v >> 8) == (v & 0xff)
}

fn join(v: &[u16]) -> String {
    v.iter()
        .map(|x| format!("{x:04x}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn corpus_out_of_order_crypto_frames() {
    for (name, datagram) in [("chaos", CORPUS_CHAOS), ("several", CORPUS_SEVERAL)] {
        assert!(looks_like_quic_initial(datagram), "{name}");
        let mut conn = QuicConnection::new();
        let ev = conn.on_datagram(true, datagram);
        assert_eq!(ev.len(), 2, "{name}: {ev:?}");
        assert_eq!(ev[0], packet_event(true, VERSION_1, PacketKind::Initial));
        let QuicEvent::ClientHello(msg) = &ev[1] else {
            panic!("{name}: no ClientHello in {ev:?}");
        };
        assert_eq!(msg[0], 1);
        let declared =
            (usize::from(msg[1]) << 16) | (usize::from(msg[2]) << 8) | usize::from(msg[3]);
        assert_eq!(msg.len(), 4 + declared, "{name}");

        let (ciphers, types, sigs) = hello_fields(msg);
        let ciphers: Vec<u16> = ciphers.into_iter().filter(|c| !is_grease(*c)).collect();
        assert_eq!(ciphers, vec![0x1301, 0x1302, 0x1303], "{name}");
        let types: Vec<u16> = types.into_iter().filter(|t| !is_grease(*t)).collect();
        assert_eq!(types.len(), 10, "{name}: JA4 a = q13d0310h3");
        let mut sorted: Vec<u16> = types
            .iter()
            .copied()
            .filter(|t| *t != 0x0000 && *t != 0x0010)
            .collect();
        sorted.sort_unstable();
        // JA4 b and c recomputed from the reassembled hello.
        let mut sorted_ciphers = ciphers.clone();
        sorted_ciphers.sort_unstable();
        assert_eq!(hash12(&join(&sorted_ciphers)), "55b375c5d22e", "{name}");
        let c_raw = format!("{}_{}", join(&sorted), join(&sigs));
        assert_eq!(
            c_raw,
            "000a,000d,001b,002b,002d,0033,0039,4469_0403,0804,0401,0503,0805,0501,0806,0601,0201"
        );
        assert_eq!(hash12(&c_raw), "cd85d2d88918", "{name}");
        assert_eq!(conn.stats().malformed_frames, 0, "{name}");
        assert_eq!(conn.stats().crypto_dropped, 0, "{name}");
    }
}

// ---------------------------------------------------------------------------------------
// Multi-packet hellos, coalescing, short headers, Retry, version changes.

#[test]
fn client_hello_across_two_packets_out_of_order() {
    let odcid = h("0011223344556677");
    let server_cid = h("aabbccdd");
    let (ck, _) = keys_pair(VERSION_1, &odcid);
    let hello = handshake_msg(1, 2500);
    let mut p1 = crypto_frame(1200, &hello[1200..]);
    p1.push(0x01); // PING
    let mut p2 = crypto_frame(0, &hello[..700]);
    p2.extend(crypto_frame(600, &hello[600..1300])); // overlap
    // The second flight uses the server's CID as DCID but still the original keys.
    let first = seal_initial(VERSION_1, &ck, &odcid, &[1, 2], 0, &p1);
    let second = seal_initial(VERSION_1, &ck, &server_cid, &[1, 2], 1, &p2);

    let mut conn = QuicConnection::new();
    let ev = conn.on_datagram(true, &first);
    assert_eq!(ev, vec![packet_event(true, VERSION_1, PacketKind::Initial)]);
    // The server's CID shows up in between.
    let mut ev = Vec::new();
    conn.on_datagram_into(true, &second, &mut ev);
    assert_eq!(
        ev,
        vec![
            packet_event(true, VERSION_1, PacketKind::Initial),
            QuicEvent::ClientHello(hello.clone()),
        ]
    );
    assert_eq!(conn.initial_dcid(), Some(&odcid[..]));
    assert_eq!(conn.stats().initials_decrypted, 2);
}

#[test]
fn coalesced_server_datagram_and_short_header() {
    let dcid = h(RFC_DCID);
    let server_cid = h("f067a5502a4262b5");
    let (_, sk) = keys_pair(VERSION_1, &dcid);
    let sh = handshake_msg(2, 90);
    let mut payload = vec![0x02, 0x00, 0x00, 0x00, 0x00];
    payload.extend(crypto_frame(0, &sh));
    let initial = seal_initial(VERSION_1, &sk, &[9, 9], &server_cid, 0, &payload);
    // A Handshake packet (opaque to us): type 2, Length 30.
    let mut handshake = vec![0xe1, 0, 0, 0, 1, 2, 9, 9, 8];
    handshake.extend_from_slice(&server_cid);
    handshake.push(30);
    handshake.extend_from_slice(&[0x5a; 30]);
    let mut datagram = initial.clone();
    datagram.extend_from_slice(&handshake);
    datagram.extend_from_slice(&[0u8; 40]); // trailing padding

    let mut conn = QuicConnection::new();
    conn.on_datagram(true, &h(RFC9001_CLIENT_INITIAL));
    let ev = conn.on_datagram(false, &datagram);
    assert_eq!(
        ev,
        vec![
            packet_event(false, VERSION_1, PacketKind::Initial),
            QuicEvent::ServerHello(sh),
            packet_event(false, VERSION_1, PacketKind::Handshake),
        ]
    );
    assert_eq!(conn.stats().malformed_packets, 0);

    // Client Handshake + 0-RTT coalesced, then a 1-RTT short-header datagram.
    let mut zero_rtt = vec![0xd0, 0, 0, 0, 1, 0, 0, 5, 1, 2, 3, 4, 5];
    zero_rtt.extend_from_slice(&[7; 5]);
    let mut hs = vec![0xe0, 0, 0, 0, 1, 0, 0, 2, 0, 0];
    hs.extend(zero_rtt);
    assert_eq!(
        conn.on_datagram(true, &hs),
        vec![
            packet_event(true, VERSION_1, PacketKind::Handshake),
            packet_event(true, VERSION_1, PacketKind::ZeroRtt),
        ]
    );
    assert_eq!(
        conn.on_datagram(false, &[0x41, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
        vec![packet_event(false, VERSION_1, PacketKind::OneRtt)]
    );
    assert!(!looks_like_quic_initial(&[0x41, 1, 2, 3]));
    // Neither long nor fixed bit: not QUIC.
    assert!(conn.on_datagram(false, &[0x01, 2, 3]).is_empty());
    assert_eq!(conn.stats().malformed_packets, 1);
}

#[test]
fn retry_rekeys_from_its_scid() {
    let odcid = h("0102030405060708");
    let retry_scid = h("a1a2a3a4a5a6");
    let client_scid = h("c1c2");
    let (ck0, _) = keys_pair(VERSION_1, &odcid);
    let (ck1, sk1) = keys_pair(VERSION_1, &retry_scid);
    let hello = handshake_msg(1, 300);

    let mut conn = QuicConnection::new();
    // First attempt: only part of the hello gets through before the Retry.
    let first = seal_initial(
        VERSION_1,
        &ck0,
        &odcid,
        &client_scid,
        0,
        &crypto_frame(0, &hello[..100]),
    );
    conn.on_datagram(true, &first);
    assert_eq!(conn.initial_dcid(), Some(&odcid[..]));

    // A forged Retry (tag for another DCID) is ignored.
    let forged = build_retry(VERSION_1, &h("ffff"), &client_scid, &retry_scid, b"tok");
    assert_eq!(
        conn.on_datagram(false, &forged),
        vec![packet_event(false, VERSION_1, PacketKind::Retry)]
    );
    assert_eq!(conn.stats().retries_rejected, 1);
    assert_eq!(conn.initial_dcid(), Some(&odcid[..]));

    let retry = build_retry(VERSION_1, &odcid, &client_scid, &retry_scid, b"token");
    conn.on_datagram(false, &retry);
    assert_eq!(conn.stats().retries_accepted, 1);
    assert_eq!(conn.initial_dcid(), Some(&retry_scid[..]));

    // The server's Initial under the new keys decrypts even before the client's retry.
    let sh = handshake_msg(2, 50);
    let server = seal_initial(
        VERSION_1,
        &sk1,
        &client_scid,
        &h("5e"),
        0,
        &crypto_frame(0, &sh),
    );
    assert_eq!(
        conn.on_datagram(false, &server),
        vec![
            packet_event(false, VERSION_1, PacketKind::Initial),
            QuicEvent::ServerHello(sh),
        ]
    );
    // The client's second Initial (stream restarted at 0) completes the hello.
    let second = seal_initial(
        VERSION_1,
        &ck1,
        &retry_scid,
        &client_scid,
        1,
        &crypto_frame(0, &hello),
    );
    assert_eq!(
        conn.on_datagram(true, &second),
        vec![
            packet_event(true, VERSION_1, PacketKind::Initial),
            QuicEvent::ClientHello(hello),
        ]
    );
    // A second Retry is never honoured.
    let again = build_retry(VERSION_1, &retry_scid, &client_scid, &h("0b0b"), b"t");
    conn.on_datagram(false, &again);
    assert_eq!(conn.stats().retries_rejected, 2);
    assert_eq!(conn.initial_dcid(), Some(&retry_scid[..]));
}

#[test]
fn compatible_version_negotiation_v1_to_v2() {
    let dcid = h(RFC_DCID);
    let (_, sk2) = keys_pair(VERSION_2, &dcid);
    let sh = handshake_msg(2, 40);
    let server = seal_initial(VERSION_2, &sk2, &[5], &[6], 0, &crypto_frame(0, &sh));
    let mut conn = QuicConnection::new();
    conn.on_datagram(true, &h(RFC9001_CLIENT_INITIAL));
    assert_eq!(
        conn.on_datagram(false, &server),
        vec![
            packet_event(false, VERSION_2, PacketKind::Initial),
            QuicEvent::ServerHello(sh),
        ]
    );
}

#[test]
fn client_restart_with_new_dcid() {
    let (ck_a, _) = keys_pair(VERSION_1, &h("aaaaaaaaaaaaaaaa"));
    let (ck_b, _) = keys_pair(VERSION_1, &h("bbbbbbbbbbbbbbbb"));
    let hello = handshake_msg(1, 200);
    let mut conn = QuicConnection::new();
    let a = seal_initial(
        VERSION_1,
        &ck_a,
        &h("aaaaaaaaaaaaaaaa"),
        &[1],
        0,
        &crypto_frame(0, &hello[..50]),
    );
    conn.on_datagram(true, &a);
    let b = seal_initial(
        VERSION_1,
        &ck_b,
        &h("bbbbbbbbbbbbbbbb"),
        &[1],
        0,
        &crypto_frame(0, &hello),
    );
    assert_eq!(
        conn.on_datagram(true, &b),
        vec![
            packet_event(true, VERSION_1, PacketKind::Initial),
            QuicEvent::ClientHello(hello),
        ]
    );
    assert_eq!(conn.initial_dcid(), Some(&h("bbbbbbbbbbbbbbbb")[..]));
}

#[test]
fn version_negotiation_and_unknown_versions() {
    let mut conn = QuicConnection::new();
    let vn = h("80000000000408090a0b0400000001000000016b3343cf");
    assert_eq!(
        conn.on_datagram(false, &vn),
        vec![packet_event(false, 0, PacketKind::VersionNegotiation)]
    );
    let unknown = h("c01a2a3a4a0000000000");
    assert!(conn.on_datagram(true, &unknown).is_empty());
    assert_eq!(conn.stats().unsupported_version, 1);
    assert!(!looks_like_quic_initial(&unknown));
}

#[test]
fn wrong_hello_type_and_connection_close() {
    let dcid = h("1111111111111111");
    let (ck, _) = keys_pair(VERSION_1, &dcid);
    let mut payload = crypto_frame(0, &handshake_msg(2, 10));
    payload.extend([0x1c, 0x0a, 0x06, 0x00]);
    let pkt = seal_initial(VERSION_1, &ck, &dcid, &[], 0, &payload);
    let mut conn = QuicConnection::new();
    assert_eq!(
        conn.on_datagram(true, &pkt),
        vec![
            packet_event(true, VERSION_1, PacketKind::Initial),
            QuicEvent::ConnectionClose {
                from_initiator: true,
                error_code: 10,
                frame_type: Some(6),
            },
        ]
    );
    assert_eq!(conn.stats().unexpected_handshake, 1);
}

#[test]
fn hello_larger_than_cap_is_abandoned() {
    let dcid = h("2222222222222222");
    let (ck, _) = keys_pair(VERSION_1, &dcid);
    // Header announcing 1 MiB.
    let pkt = seal_initial(
        VERSION_1,
        &ck,
        &dcid,
        &[],
        0,
        &crypto_frame(0, &[1, 0x10, 0, 0]),
    );
    let mut conn = QuicConnection::new();
    conn.on_datagram(true, &pkt);
    assert_eq!(conn.stats().crypto_dropped, 1);
    // Many small islands: the fragment cap refuses the excess, nothing panics.
    let dcid = h("3333333333333333");
    let (ck, _) = keys_pair(VERSION_1, &dcid);
    let mut conn = QuicConnection::new();
    let mut payload = Vec::new();
    for i in 0..200u64 {
        payload.extend(crypto_frame(10 + i * 3, &[0xab]));
    }
    let pkt = seal_initial(VERSION_1, &ck, &dcid, &[], 0, &payload);
    let ev = conn.on_datagram(true, &pkt);
    assert_eq!(ev.len(), 1);
    assert_eq!(conn.stats().crypto_dropped, 200 - 64);
}

// ---------------------------------------------------------------------------------------
// Robustness.

fn all_samples() -> Vec<Vec<u8>> {
    vec![
        h(RFC9001_CLIENT_INITIAL),
        h(RFC9001_SERVER_INITIAL),
        h(RFC9369_CLIENT_INITIAL),
        h(RFC9369_SERVER_INITIAL),
        CORPUS_CHAOS.to_vec(),
        CORPUS_SEVERAL.to_vec(),
        h("ff000000010008f067a5502a4262b5746f6b656e04a265ba2eff4d829058fb3f0f2496ba"),
        h("80000000000408090a0b0400000001000000016b3343cf"),
    ]
}

#[test]
fn truncations_and_bit_flips_never_panic() {
    let samples = all_samples();
    let mut primed = QuicConnection::new();
    primed.on_datagram(true, &samples[0]);
    for s in &samples {
        for len in 0..s.len() {
            let cut = &s[..len];
            let _ = looks_like_quic_initial(cut);
            let _ = parse_long_header(cut);
            let _ = parse_frames(cut).count();
            for dir in [true, false] {
                QuicConnection::new().on_datagram(dir, cut);
                primed.on_datagram(dir, cut);
            }
        }
        for i in (0..s.len()).step_by(7) {
            let mut flipped = s.clone();
            flipped[i] ^= 1 << (i % 8);
            QuicConnection::new().on_datagram(true, &flipped);
            primed.on_datagram(false, &flipped);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..1500),
                                dir in any::<bool>()) {
        let _ = looks_like_quic_initial(&data);
        let _ = parse_long_header(&data);
        let _ = parse_frames(&data).count();
        let mut conn = QuicConnection::new();
        conn.on_datagram(dir, &data);
        // Random bytes behind a valid-looking v1 Initial header reach the decryptor.
        let mut framed = h("c30000000108000102030405060700");
        framed.extend(varint(data.len() as u64));
        framed.extend_from_slice(&data);
        conn.on_datagram(dir, &framed);
    }

    #[test]
    fn random_plaintext_frames_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..600)) {
        let dcid = h("4444444444444444");
        let (ck, _) = keys_pair(VERSION_1, &dcid);
        let pkt = seal_initial(VERSION_1, &ck, &dcid, &[], 0, &payload);
        let mut conn = QuicConnection::new();
        conn.on_datagram(true, &pkt);
        prop_assert_eq!(conn.stats().initials_decrypted, 1);
    }

    #[test]
    fn fragmented_hello_reassembles(body_len in 0usize..3000,
                                    cuts in proptest::collection::vec(0usize..3004, 0..12),
                                    order in proptest::collection::vec(any::<u16>(), 24),
                                    dups in proptest::collection::vec(any::<bool>(), 24),
                                    packets in 1usize..4) {
        let hello = handshake_msg(1, body_len);
        let mut points: Vec<usize> = cuts.into_iter().map(|c| c % hello.len()).collect();
        points.extend([0, hello.len()]);
        points.sort_unstable();
        points.dedup();
        let mut frags: Vec<(usize, usize)> = points.windows(2).map(|w| (w[0], w[1])).collect();
        // Only the original fragments get duplicates: counting the ones pushed here too
        // could repeat the whole hello until one Initial outgrows its 2-byte length field.
        let originals = frags.len();
        for (i, d) in dups.iter().enumerate() {
            if *d && i < originals {
                let (s, e) = frags[i];
                frags.push((s.saturating_sub(3), e)); // overlapping duplicate
            }
        }
        let mut keyed: Vec<(u16, (usize, usize))> =
            frags.into_iter().enumerate().map(|(i, f)| (order[i % order.len()], f)).collect();
        keyed.sort_by_key(|k| k.0);

        let dcid = h("5555555555555555");
        let (ck, _) = keys_pair(VERSION_1, &dcid);
        let per = keyed.len().div_ceil(packets);
        let mut conn = QuicConnection::new();
        let mut hellos = Vec::new();
        for (pn, chunk) in keyed.chunks(per.max(1)).enumerate() {
            let mut payload = vec![0x01];
            for (_, (s, e)) in chunk {
                payload.extend(crypto_frame(*s as u64, &hello[*s..*e]));
            }
            let pkt = seal_initial(VERSION_1, &ck, &dcid, &[], pn as u64, &payload);
            for ev in conn.on_datagram(true, &pkt) {
                if let QuicEvent::ClientHello(m) = ev {
                    hellos.push(m);
                }
            }
        }
        prop_assert_eq!(hellos, vec![hello]);
    }
}
