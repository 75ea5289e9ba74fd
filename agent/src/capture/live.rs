//! Live capture from network interfaces through libpcap.
//!
//! Opening checks what can be checked up front, so a misconfigured agent fails at start with
//! one clear line and a distinct exit code instead of at the first packet: the interface
//! must exist (EX_UNAVAILABLE, 69, with the list of interfaces that do), the process needs
//! CAP_NET_RAW, not root (EX_NOPERM, 77, with how to grant it), and the filter must compile
//! (EX_USAGE-like 2).
//!
//! Reading is non-blocking: [`LiveCapture::dispatch`] handles what is queued and returns,
//! possibly with nothing, and the caller waits a little when it got nothing. The obvious
//! alternatives don't give the caller a tick on a quiet interface: libpcap 1.10 on Linux
//! keeps polling through its read timeout until a packet arrives (pcap_set_timeout(3) warns
//! the timeout may never fire), so idle flows would never be swept and SIGTERM would wait
//! for the next packet; and waking a blocked read with `pcap_breakloop` makes
//! `pcap_next_ex` drop the packet it just read.

use std::time::Duration;
use thiserror::Error;

use crate::decode::LinkType;

/// Linux capability numbers (linux/capability.h).
pub const CAP_NET_ADMIN: u32 = 12;
/// Opening an AF_PACKET socket, which is what libpcap captures with on Linux.
pub const CAP_NET_RAW: u32 = 13;

/// Why live capture can't start (or stopped).
#[derive(Debug, Error)]
pub enum LiveError {
    #[error("unknown interface {name:?} (available: {})", available.join(", "))]
    UnknownInterface {
        name: String,
        available: Vec<String>,
    },
    #[error(
        "capturing on {interface} needs {missing}, which this process lacks; grant it with \
         `setcap cap_net_raw,cap_net_admin=eip {exe}` or, under systemd, \
         `AmbientCapabilities=CAP_NET_RAW CAP_NET_ADMIN` in the unit (root is not needed){}",
        detail.as_deref().map(|d| format!(" [{d}]")).unwrap_or_default()
    )]
    MissingCapability {
        interface: String,
        missing: String,
        exe: String,
        detail: Option<String>,
    },
    #[error("{interface}: bad capture filter {filter:?}: {detail}")]
    BadFilter {
        interface: String,
        filter: String,
        detail: String,
    },
    #[error(
        "{interface}: unsupported link type {dlt} (supported: Ethernet, Linux cooked v1/v2, raw IPv4/IPv6, BSD loopback)"
    )]
    UnsupportedLinkType { interface: String, dlt: i32 },
    #[error("{interface}: cannot capture: {detail}")]
    Open { interface: String, detail: String },
    #[error("{interface}: capture failed: {detail}")]
    Read { interface: String, detail: String },
}

impl LiveError {
    /// Process exit code (sysexits.h): 69 EX_UNAVAILABLE for a missing or unusable
    /// interface, 77 EX_NOPERM for missing privileges, 2 for a filter that doesn't compile,
    /// 74 EX_IOERR for a capture that fails while running.
    pub fn exit_code(&self) -> i32 {
        match self {
            LiveError::UnknownInterface { .. }
            | LiveError::UnsupportedLinkType { .. }
            | LiveError::Open { .. } => 69,
            LiveError::MissingCapability { .. } => 77,
            LiveError::BadFilter { .. } => 2,
            LiveError::Read { .. } => 74,
        }
    }
}

/// How to open each interface.
#[derive(Debug, Clone)]
pub struct LiveOptions {
    /// libpcap filter; empty = everything.
    pub bpf: String,
    pub snaplen: i32,
    /// Kernel buffer, bytes.
    pub buffer_bytes: i32,
    pub promiscuous: bool,
    /// Longest time the kernel holds captured packets before handing them over.
    pub block_timeout_ms: i32,
}

impl Default for LiveOptions {
    fn default() -> Self {
        LiveOptions {
            bpf: crate::config::DEFAULT_BPF.to_string(),
            snaplen: 65_535,
            buffer_bytes: 16 << 20,
            promiscuous: false,
            block_timeout_ms: 100,
        }
    }
}

/// One captured packet: capture time (µs since the epoch), original length, bytes.
#[derive(Debug)]
pub struct LivePacket<'a> {
    pub ts_us: u64,
    pub orig_len: u32,
    pub data: &'a [u8],
}

/// Drop counters since the capture opened, widened to u64: libpcap's are u32 and wrap on a
/// busy interface within hours, so deltas are accumulated with wrapping arithmetic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CaptureStats {
    /// Packets the kernel handed to the filter.
    pub received: u64,
    /// Dropped because the kernel buffer was full (the agent was too slow).
    pub dropped: u64,
    /// Dropped by the interface or its driver.
    pub if_dropped: u64,
}

/// An open live capture on one interface.
pub struct LiveCapture {
    cap: pcap::Capture<pcap::Active>,
    link: LinkType,
    name: String,
    last_raw: (u32, u32, u32),
    totals: CaptureStats,
}

impl std::fmt::Debug for LiveCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveCapture")
            .field("name", &self.name)
            .field("link", &self.link)
            .field("totals", &self.totals)
            .finish()
    }
}

/// Names of the interfaces libpcap can capture on (including `any`).
pub fn interface_names() -> Result<Vec<String>, String> {
    pcap::Device::list()
        .map(|l| l.into_iter().map(|d| d.name).collect())
        .map_err(|e| e.to_string())
}

/// Fails with [`LiveError::UnknownInterface`] for the first name libpcap doesn't list. When
/// the list itself can't be read, the check is skipped and opening reports the problem.
pub fn check_interfaces(names: &[String]) -> Result<(), LiveError> {
    let Ok(available) = interface_names() else {
        return Ok(());
    };
    for n in names {
        if !available.iter().any(|a| a == n) {
            return Err(LiveError::UnknownInterface {
                name: n.clone(),
                available,
            });
        }
    }
    Ok(())
}

/// The effective capability set of this process (CapEff in /proc/self/status), `None` where
/// it can't be read (not Linux, no procfs).
pub fn effective_capabilities() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_cap_eff(&status)
}

/// Parses the `CapEff:` line of a /proc/PID/status text.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

/// Capabilities live capture needs that `cap_eff` lacks; CAP_NET_ADMIN is only needed for
/// some setups (promiscuous mode on some drivers, hardware timestamps), so only CAP_NET_RAW
/// is required here.
pub fn missing_capabilities(cap_eff: u64) -> Vec<&'static str> {
    let mut missing = Vec::new();
    if cap_eff & (1 << CAP_NET_RAW) == 0 {
        missing.push("CAP_NET_RAW");
    }
    missing
}

fn exe_path() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.to_str().map(str::to_string))
        .unwrap_or_else(|| "/usr/bin/hais-agent".to_string())
}

/// Checks CapEff before anything is opened, so a missing capability gets the how-to-fix
/// message rather than libpcap's "socket: Operation not permitted".
pub fn check_capabilities(interface: &str) -> Result<(), LiveError> {
    let Some(eff) = effective_capabilities() else {
        return Ok(());
    };
    let missing = missing_capabilities(eff);
    if missing.is_empty() {
        return Ok(());
    }
    Err(LiveError::MissingCapability {
        interface: interface.to_string(),
        missing: missing.join(" and "),
        exe: exe_path(),
        detail: None,
    })
}

/// libpcap's wording for an EPERM/EACCES from socket(), bind() or the activate step.
fn is_permission_error(msg: &str) -> bool {
    let m = msg.to_ascii_lowercase();
    m.contains("permission") || m.contains("not permitted")
}

impl LiveCapture {
    /// Opens `name` non-blocking and applies the filter.
    ///
    /// Not in immediate mode, on purpose: immediate mode makes libpcap use TPACKET_V2, whose
    /// ring has one fixed slot per packet sized for the snaplen (64 KiB with offloads on),
    /// so a 16 MiB buffer holds only about 128 packets and a burst on a busy host drops
    /// some. TPACKET_V3 packs packets into blocks by their real size; the price is that a
    /// block is handed over when full or after [`LiveOptions::block_timeout_ms`], which
    /// delays records, never packet timestamps (JA4L uses those).
    pub fn open(name: &str, opts: &LiveOptions) -> Result<LiveCapture, LiveError> {
        let open_err = |e: pcap::Error| {
            let detail = e.to_string();
            if is_permission_error(&detail) {
                LiveError::MissingCapability {
                    interface: name.to_string(),
                    missing: "CAP_NET_RAW (and CAP_NET_ADMIN on some setups)".to_string(),
                    exe: exe_path(),
                    detail: Some(detail),
                }
            } else if detail.contains("No such device") {
                LiveError::UnknownInterface {
                    name: name.to_string(),
                    available: interface_names().unwrap_or_default(),
                }
            } else {
                LiveError::Open {
                    interface: name.to_string(),
                    detail,
                }
            }
        };
        let cap = pcap::Capture::from_device(name)
            .map_err(open_err)?
            .immediate_mode(false)
            .timeout(opts.block_timeout_ms.max(1))
            .snaplen(opts.snaplen)
            .buffer_size(opts.buffer_bytes)
            .promisc(opts.promiscuous)
            .open()
            .map_err(open_err)?;
        let mut cap = cap.setnonblock().map_err(open_err)?;
        let dlt = cap.get_datalink().0;
        let link = LinkType::from_dlt(dlt).ok_or(LiveError::UnsupportedLinkType {
            interface: name.to_string(),
            dlt,
        })?;
        cap.filter(&opts.bpf, true)
            .map_err(|e| LiveError::BadFilter {
                interface: name.to_string(),
                filter: opts.bpf.clone(),
                detail: e.to_string(),
            })?;
        Ok(LiveCapture {
            cap,
            link,
            name: name.to_string(),
            last_raw: (0, 0, 0),
            totals: CaptureStats::default(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn link_type(&self) -> LinkType {
        self.link
    }

    /// Waits until the kernel has packets to hand over (a block of its ring is full or its
    /// `block_timeout_ms` ran out with packets in it), or `timeout` passes. Waking only then
    /// costs one wake-up per block instead of polling on a timer.
    pub fn wait(&self, timeout: Duration) -> Result<(), LiveError> {
        use rustix::event::{PollFd, PollFlags, Timespec};
        let mut fds = [PollFd::new(&self.cap, PollFlags::IN)];
        let t = Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        match rustix::event::poll(&mut fds, Some(&t)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => Ok(()),
            Err(e) => Err(LiveError::Open {
                interface: self.name.clone(),
                detail: format!("poll: {e}"),
            }),
        }
    }

    /// Hands at most `max` queued packets to `f` and returns how many there were; 0 when
    /// nothing is queued (the call never blocks). Bounded so a busy interface still lets the
    /// caller sweep, report and notice shutdown between batches.
    pub fn dispatch(
        &mut self,
        max: usize,
        mut f: impl FnMut(LivePacket<'_>),
    ) -> Result<usize, LiveError> {
        self.cap
            .dispatch(Some(max.max(1)), |p| {
                let ts = p.header.ts;
                let ts_us = ts.tv_sec.max(0) as u64 * 1_000_000 + ts.tv_usec.max(0) as u64;
                f(LivePacket {
                    ts_us,
                    orig_len: p.header.len,
                    data: p.data,
                });
            })
            .map_err(|e| LiveError::Read {
                interface: self.name.clone(),
                detail: e.to_string(),
            })
    }

    /// Reads libpcap's counters and returns the totals since opening.
    pub fn stats(&mut self) -> Result<CaptureStats, LiveError> {
        let s = self.cap.stats().map_err(|e| LiveError::Read {
            interface: self.name.clone(),
            detail: format!("reading statistics: {e}"),
        })?;
        let (r, d, i) = self.last_raw;
        self.totals.received += u64::from(s.received.wrapping_sub(r));
        self.totals.dropped += u64::from(s.dropped.wrapping_sub(d));
        self.totals.if_dropped += u64::from(s.if_dropped.wrapping_sub(i));
        self.last_raw = (s.received, s.dropped, s.if_dropped);
        Ok(self.totals)
    }

    /// The totals as of the last [`LiveCapture::stats`] call.
    pub fn totals(&self) -> CaptureStats {
        self.totals
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_eff_parsing() {
        let status = "Name:\tx\nCapPrm:\t0000000000000000\nCapEff:\t000001fffeffffff\n";
        assert_eq!(parse_cap_eff(status), Some(0x0000_01ff_feff_ffff));
        assert!(missing_capabilities(0x0000_01ff_feff_ffff).is_empty());
        assert_eq!(parse_cap_eff("Name:\tx\n"), None);
        assert_eq!(missing_capabilities(0), vec!["CAP_NET_RAW"]);
        assert_eq!(
            missing_capabilities(1 << CAP_NET_ADMIN),
            vec!["CAP_NET_RAW"]
        );
        assert!(missing_capabilities(1 << CAP_NET_RAW).is_empty());
    }

    #[test]
    fn capability_message_says_what_and_how() {
        let e = LiveError::MissingCapability {
            interface: "eth0".into(),
            missing: "CAP_NET_RAW".into(),
            exe: "/usr/bin/hais-agent".into(),
            detail: None,
        };
        let m = e.to_string();
        assert!(m.contains("CAP_NET_RAW"), "{m}");
        assert!(
            m.contains("setcap cap_net_raw,cap_net_admin=eip /usr/bin/hais-agent"),
            "{m}"
        );
        assert!(m.contains("AmbientCapabilities="), "{m}");
        assert!(!m.contains('\n'));
        assert_eq!(e.exit_code(), 77);
    }

    #[test]
    fn unknown_interface_lists_the_available_ones() {
        let e = check_interfaces(&["hais-no-such-if0".to_string()]).unwrap_err();
        assert_eq!(e.exit_code(), 69);
        let m = e.to_string();
        assert!(
            m.contains("hais-no-such-if0") && m.contains("available:"),
            "{m}"
        );
    }

    #[test]
    fn permission_errors_are_recognised() {
        assert!(is_permission_error(
            "socket: Operation not permitted (you may need CAP_NET_RAW)"
        ));
        assert!(is_permission_error(
            "You don't have permission to perform this capture on that device"
        ));
        assert!(!is_permission_error("That device is not up"));
    }
}
