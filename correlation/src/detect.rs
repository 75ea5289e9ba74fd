//! The pure parts of the detectors: what changed between two fingerprints, what kind of SSH
//! session a JA4SSH window shows, and how far away a server is.

use serde::{Deserialize, Serialize};

/// How far a new fingerprint is from the closest one of a baseline, by JA4 section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    /// Only the first section differs (for JA4: TLS version, SNI, ALPN, counts): the same
    /// cipher and extension sets, configured differently.
    FirstSection,
    /// A later section differs (for JA4: the cipher or extension set).
    Sets,
}

/// The smallest change from any of `known` to `new`: [`Change::FirstSection`] when one of them
/// has the same sections after the first (`_`-separated), else [`Change::Sets`].
pub fn closest_change<'a>(new: &str, known: impl IntoIterator<Item = &'a str>) -> Change {
    let tail = |s: &'a str| s.split_once('_').map(|(_, t)| t);
    let new_tail = new.split_once('_').map(|(_, t)| t);
    match new_tail {
        Some(t) if known.into_iter().any(|k| tail(k) == Some(t)) => Change::FirstSection,
        _ => Change::Sets,
    }
}

/// What an SSH session window looks like (FoxIO's JA4SSH notes): keystrokes echoed in small
/// packets with the client acknowledging (interactive), the same pattern with the *server*
/// acknowledging (someone typing on the server side: a reverse shell), or full-size packets one
/// way (file transfer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SshSession {
    Interactive,
    FileTransfer,
    ReverseShell,
    Other,
}

impl SshSession {
    pub fn as_str(self) -> &'static str {
        match self {
            SshSession::Interactive => "interactive",
            SshSession::FileTransfer => "file-transfer",
            SshSession::ReverseShell => "reverse-shell",
            SshSession::Other => "other",
        }
    }

    /// Sessions a person types into (the ssh-session detector's concern).
    pub fn is_interactive(self) -> bool {
        matches!(self, SshSession::Interactive | SshSession::ReverseShell)
    }
}

/// Payload lengths at or above this are bulk data (a TCP segment near the MSS).
const BULK_LEN: u32 = 1000;
/// Payload lengths at or below this are keystrokes and their echoes (36 to ~100 bytes with the
/// usual ciphers and MACs).
const KEYSTROKE_LEN: u32 = 200;

/// The session type of a JA4SSH value (`c{mode}s{mode}_c{pkts}s{pkts}_c{acks}s{acks}`), `None`
/// when it is not one. `reverse_shell`: whether to tell reverse shells apart at all (the
/// ssh-session detector is off by default, see NOTICE); without it they count as interactive.
pub fn ssh_session(value: &str, reverse_shell: bool) -> Option<SshSession> {
    let mut sections = value.split('_').map(pair);
    let (cmode, smode) = sections.next()??;
    let _packets = sections.next()??;
    let (cacks, sacks) = sections.next()??;
    if sections.next().is_some() {
        return None;
    }
    Some(if cmode >= BULK_LEN || smode >= BULK_LEN {
        SshSession::FileTransfer
    } else if cmode <= KEYSTROKE_LEN && smode <= KEYSTROKE_LEN && cmode > 0 && smode > 0 {
        if reverse_shell && sacks > cacks {
            SshSession::ReverseShell
        } else if cacks > 0 || sacks > 0 {
            SshSession::Interactive
        } else {
            SshSession::Other
        }
    } else {
        SshSession::Other
    })
}

/// `c<n>s<m>` as `(n, m)`.
fn pair(s: &str) -> Option<(u32, u32)> {
    let (c, s) = s.strip_prefix('c')?.split_once('s')?;
    Some((c.parse().ok()?, s.parse().ok()?))
}

/// What a JA4L/JA4LS value says about the path: hops from the observed TTL (initial TTL 64, 128
/// or 255, whichever is the smallest not below it, as the JA4L notes say) and, when the value
/// has the third section (application handshake latency), its gap to the TCP handshake latency.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PathSample {
    pub hops: u32,
    /// Microseconds; `None` without a third section.
    pub gap_us: Option<f64>,
}

/// Parses `latency_ttl[_applatency]`.
pub fn path_sample(value: &str) -> Option<PathSample> {
    let mut it = value.split('_');
    let latency: u64 = it.next()?.parse().ok()?;
    let ttl: u32 = it.next()?.parse().ok()?;
    if ttl == 0 || ttl > 255 {
        return None;
    }
    let initial = match ttl {
        0..=64 => 64,
        65..=128 => 128,
        _ => 255,
    };
    let gap_us = it
        .next()
        .and_then(|c| c.parse::<u64>().ok())
        .map(|app| app as f64 - latency as f64);
    Some(PathSample {
        hops: initial - ttl,
        gap_us,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_by_section() {
        let known = ["t13d1516h2_8daaf6152771_e5627efa2ab1"];
        // ALPN and counts differ, same sets.
        assert_eq!(
            closest_change("t13d1515h1_8daaf6152771_e5627efa2ab1", known),
            Change::FirstSection
        );
        assert_eq!(
            closest_change("t13d1516h2_8daaf6152771_02713d6af862", known),
            Change::Sets
        );
        assert_eq!(closest_change("x", known), Change::Sets);
        assert_eq!(closest_change("a_b", []), Change::Sets);
    }

    #[test]
    fn ssh_sessions_as_foxio_describes_them() {
        // The examples of FoxIO's JA4SSH notes.
        assert_eq!(
            ssh_session("c36s36_c51s80_c69s0", true),
            Some(SshSession::Interactive)
        );
        assert_eq!(
            ssh_session("c76s76_c71s59_c0s70", true),
            Some(SshSession::ReverseShell)
        );
        assert_eq!(
            ssh_session("c76s76_c71s59_c0s70", false),
            Some(SshSession::Interactive)
        );
        assert_eq!(
            ssh_session("c112s1460_c0s179_c21s0", true),
            Some(SshSession::FileTransfer)
        );
        assert_eq!(
            ssh_session("c500s600_c10s10_c1s1", true),
            Some(SshSession::Other)
        );
        assert_eq!(ssh_session("garbage", true), None);
        assert_eq!(ssh_session("c1s1_c1s1_c1s1_x", true), None);
    }

    #[test]
    fn hops_from_ttl() {
        assert_eq!(
            path_sample("5191_42"),
            Some(PathSample {
                hops: 22,
                gap_us: None
            })
        );
        assert_eq!(path_sample("10_64").unwrap().hops, 0);
        assert_eq!(path_sample("10_120").unwrap().hops, 8);
        assert_eq!(path_sample("10_250").unwrap().hops, 5);
        assert_eq!(path_sample("100_60_4100").unwrap().gap_us, Some(4000.0));
        assert_eq!(path_sample("100_0"), None);
        assert_eq!(path_sample("x_1"), None);
    }
}
