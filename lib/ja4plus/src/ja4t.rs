//! JA4T / JA4TS: TCP fingerprints of the client SYN and the server SYN-ACK.
//!
//! `window_options_mss_wscale`, e.g. `64240_2-1-3-1-1-4_1460_8`. Formatting follows the
//! written method and the Wireshark reference rather than the Rust tool (which prints empty
//! or `0` fields): any missing field is `00`, so a SYN without options is `8192_00_00_00`.
//! A window-scale option with shift 0 also prints `00` (it carries no information either way,
//! and that is what the references and published fingerprint lists show). The MSS is printed
//! as `%02d`: plain decimal for every real value (`1460`), `00` when absent.
//!
//! JA4TS may carry a fifth section with the server's SYN-ACK retransmission timing, which
//! needs state: see [`Ja4tsTracker`].

use hais_dissect::tcp_options::TcpOptions;

/// JA4T of a client SYN (first SYN of the connection; ECN bits allowed), from the raw TCP
/// window field and the raw option bytes.
pub fn ja4t(window: u16, options: &[u8]) -> String {
    ja4t_from_parsed(window, &TcpOptions::parse(options))
}

/// JA4TS without the retransmission section: the same four fields, from the SYN-ACK.
pub fn ja4ts(window: u16, options: &[u8]) -> String {
    ja4t(window, options)
}

/// JA4T from options the caller already parsed (the engine parses each SYN once).
pub fn ja4t_from_parsed(window: u16, options: &TcpOptions) -> String {
    let kinds = if options.kinds.is_empty() {
        "00".to_owned()
    } else {
        options
            .kinds
            .iter()
            .map(u8::to_string)
            .collect::<Vec<_>>()
            .join("-")
    };
    let mss = options
        .mss
        .map_or_else(|| "00".to_owned(), |m| format!("{m:02}"));
    let wscale = match options.window_scale {
        None | Some(0) => "00".to_owned(),
        Some(s) => s.to_string(),
    };
    format!("{window}_{kinds}_{mss}_{wscale}")
}

/// At most this many SYN-ACK retransmissions are listed (the method's limit).
pub const MAX_RETRANSMISSIONS: usize = 10;
/// A SYN-ACK or RST later than this after the previous SYN-ACK is no longer part of the
/// handshake's retransmission sequence (the method's 2-minute timeout).
pub const RETRANSMISSION_TIMEOUT_MICROS: u64 = 120_000_000;

/// Builds JA4TS with the optional `_e` section from the server's SYN-ACKs and RST.
///
/// Each SYN-ACK after the first adds the delay since the previous SYN-ACK, in seconds rounded
/// to nearest (as the Wireshark reference does), so a quick duplicate shows as `0`; a server
/// RST adds `R<seconds>` and ends the sequence. The first four fields always come from the
/// first SYN-ACK. Example: `65535_2-1-3-1-1-4_65495_8_1-2-4-8-R6`.
///
/// The engine feeds the SYN-ACKs and RSTs the *server* sends on one connection and calls
/// [`Ja4tsTracker::close`] once the server sends payload: after that, a RST is an ordinary
/// connection abort, not part of the handshake, and would only add noise.
#[derive(Debug, Clone, Default)]
pub struct Ja4tsTracker {
    base: Option<String>,
    last_syn_ack: u64,
    steps: Vec<String>,
    retransmissions: usize,
    closed: bool,
}

impl Ja4tsTracker {
    /// A tracker that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// A SYN-ACK from the server at `ts_micros` (capture time, microseconds).
    pub fn on_syn_ack(&mut self, ts_micros: u64, window: u16, options: &[u8]) {
        if self.closed {
            return;
        }
        let Some(_) = self.base else {
            self.base = Some(ja4ts(window, options));
            self.last_syn_ack = ts_micros;
            return;
        };
        let delay = ts_micros.saturating_sub(self.last_syn_ack);
        if delay > RETRANSMISSION_TIMEOUT_MICROS {
            self.closed = true;
            return;
        }
        if self.retransmissions < MAX_RETRANSMISSIONS {
            self.steps.push(round_secs(delay).to_string());
            self.retransmissions += 1;
        }
        self.last_syn_ack = ts_micros;
    }

    /// A segment with RST set, sent by the server, at `ts_micros`. Ignored before the first
    /// SYN-ACK (there is nothing to fingerprint) and after the timeout.
    pub fn on_server_rst(&mut self, ts_micros: u64) {
        if self.closed || self.base.is_none() {
            return;
        }
        let delay = ts_micros.saturating_sub(self.last_syn_ack);
        if delay <= RETRANSMISSION_TIMEOUT_MICROS {
            self.steps.push(format!("R{}", round_secs(delay)));
        }
        self.closed = true;
    }

    /// Stops recording: later SYN-ACKs and RSTs are ignored (see the type docs).
    pub fn close(&mut self) {
        self.closed = true;
    }

    /// True once later SYN-ACKs and RSTs can no longer change the fingerprint.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// JA4TS as known so far: `None` before any SYN-ACK; the `_e` section only when a
    /// retransmission or RST was seen.
    pub fn fingerprint(&self) -> Option<String> {
        let base = self.base.as_ref()?;
        if self.steps.is_empty() {
            Some(base.clone())
        } else {
            Some(format!("{base}_{}", self.steps.join("-")))
        }
    }
}

/// Microseconds to whole seconds, rounding halves up.
fn round_secs(micros: u64) -> u64 {
    micros.saturating_add(500_000) / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).expect("test hex")
    }

    #[test]
    fn spec_and_reference_examples() {
        // macOS SYN (badcurveball.pcap): trailing EOL padding listed.
        assert_eq!(
            ja4t(
                65535,
                &h("0204056a010303060101080a112233440000000004020000")
            ),
            "65535_2-1-3-1-1-8-4-0-0_1386_6"
        );
        // Windows 10 (ssh2.pcapng) and Linux (ssh-r.pcap).
        assert_eq!(
            ja4t(64240, &h("020405b40103030801010402")),
            "64240_2-1-3-1-1-4_1460_8"
        );
        assert_eq!(
            ja4t(29200, &h("020405b40402080a000000010000000001030307")),
            "29200_2-4-8-1-3_1460_7"
        );
        // No options at all (gre-erspan-vxlan.pcap; spec `1024_00_00_00`).
        assert_eq!(ja4t(8192, &[]), "8192_00_00_00");
        assert_eq!(ja4t(1024, &[]), "1024_00_00_00");
        // Nmap-style SYN with only MSS (spec `1024_2_1460_00`).
        assert_eq!(ja4t(1024, &h("020405b4")), "1024_2_1460_00");
        // Explicit window scale 0 prints 00 (sshv1.pcap: `8192_2-1-3-1-1-8_1440_00`).
        assert_eq!(
            ja4t(8192, &h("020405a0010303000101080a0000000000000000")),
            "8192_2-1-3-1-1-8_1440_00"
        );
        // JA4TS of the SYN-ACK in ssh2.pcapng stream 15.
        assert_eq!(
            ja4ts(64240, &h("020405b40101040201030307")),
            "64240_2-1-1-4-1-3_1460_7"
        );
    }

    #[test]
    fn small_mss_and_malformed_options() {
        assert_eq!(ja4t(100, &h("02040005")), "100_2_05_00");
        // Malformed option after MSS: the walk stops but what was read is kept.
        assert_eq!(ja4t(100, &h("020405b40301")), "100_2_1460_00");
    }

    #[test]
    fn ja4ts_without_retransmission_has_four_fields() {
        let mut t = Ja4tsTracker::new();
        assert_eq!(t.fingerprint(), None);
        t.on_server_rst(5); // before any SYN-ACK: nothing to fingerprint
        assert_eq!(t.fingerprint(), None);
        t.on_syn_ack(1_000, 62727, &h("02042301"));
        assert_eq!(t.fingerprint().as_deref(), Some("62727_2_8961_00"));
    }

    #[test]
    fn retransmission_delays_round_to_seconds() {
        // Spec progression: `62727_2_8961_00` -> `..._1-2-4-8-16`.
        let mut t = Ja4tsTracker::new();
        let opts = h("02042301");
        let mut ts = 10_000_000u64;
        t.on_syn_ack(ts, 62727, &opts);
        assert_eq!(t.fingerprint().as_deref(), Some("62727_2_8961_00"));
        for (secs, jitter) in [
            (1u64, 3_000i64),
            (2, -2_000),
            (4, 499_999),
            (8, -499_999),
            (16, 0),
        ] {
            ts = ts.wrapping_add_signed(secs as i64 * 1_000_000 + jitter);
            t.on_syn_ack(ts, 1, &[]); // later SYN-ACKs never change the first four fields
        }
        assert_eq!(
            t.fingerprint().as_deref(),
            Some("62727_2_8961_00_1-2-4-8-16"),
            "4.499999 s rounds down, 7.500001 s rounds up"
        );
    }

    #[test]
    fn windows_rst_example_and_quick_duplicate() {
        // README: `64240_2-1-3-1-1-4_1460_8_1-2-4-8-R6` style with a RST.
        let mut t = Ja4tsTracker::new();
        let opts = h("020405b40103030801010402");
        t.on_syn_ack(0, 64240, &opts);
        let mut ts = 0;
        for s in [1u64, 2, 4, 8] {
            ts += s * 1_000_000;
            t.on_syn_ack(ts, 64240, &opts);
        }
        t.on_server_rst(ts + 6_200_000);
        assert_eq!(
            t.fingerprint().as_deref(),
            Some("64240_2-1-3-1-1-4_1460_8_1-2-4-8-R6")
        );
        t.on_syn_ack(ts + 7_000_000, 64240, &opts);
        assert!(t.fingerprint().is_some_and(|f| f.ends_with("-R6")));

        // ssh2.pcapng frames 370/373: a SYN-ACK repeated 5.8 ms later prints `_0`.
        let mut t = Ja4tsTracker::new();
        let opts = h("020405b40101040201030307");
        t.on_syn_ack(1_688_672_871_347_960, 64240, &opts);
        t.on_syn_ack(1_688_672_871_353_789, 64240, &opts);
        assert_eq!(
            t.fingerprint().as_deref(),
            Some("64240_2-1-1-4-1-3_1460_7_0")
        );
    }

    #[test]
    fn limits_timeout_and_close() {
        let mut t = Ja4tsTracker::new();
        t.on_syn_ack(0, 1, &[]);
        for i in 1..=15u64 {
            t.on_syn_ack(i * 1_000_000, 1, &[]);
        }
        let f = t.fingerprint().expect("fp");
        assert_eq!(f, format!("1_00_00_00_{}", ["1"; 10].join("-")));

        let mut t = Ja4tsTracker::new();
        t.on_syn_ack(0, 1, &[]);
        t.on_syn_ack(RETRANSMISSION_TIMEOUT_MICROS + 1, 1, &[]);
        t.on_server_rst(RETRANSMISSION_TIMEOUT_MICROS + 2);
        assert_eq!(t.fingerprint().as_deref(), Some("1_00_00_00"));

        let mut t = Ja4tsTracker::new();
        t.on_syn_ack(0, 1, &[]);
        t.close();
        t.on_server_rst(1_000_000);
        assert_eq!(t.fingerprint().as_deref(), Some("1_00_00_00"));

        // Timestamps going backwards count as zero delay instead of wrapping.
        let mut t = Ja4tsTracker::new();
        t.on_syn_ack(5_000_000, 1, &[]);
        t.on_syn_ack(1_000_000, 1, &[]);
        assert_eq!(t.fingerprint().as_deref(), Some("1_00_00_00_0"));
    }

    #[test]
    fn no_panic_on_garbage_options() {
        let mut x: u32 = 0xdead_beef;
        for _ in 0..2000 {
            let mut buf = [0u8; 40];
            for b in buf.iter_mut() {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                *b = x as u8;
            }
            let n = (x as usize) % 41;
            let f = ja4t(x as u16, &buf[..n]);
            assert_eq!(f.split('_').count(), 4);
        }
    }
}
