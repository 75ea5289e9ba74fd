//! Socket lookups through netlink `NETLINK_SOCK_DIAG` (what `ss` uses): given a flow's exact
//! addresses, the kernel returns the matching socket's inode and owner uid in one round trip,
//! without scanning `/proc/net/*`.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use netlink_sys::{Socket, SocketAddr as NlAddr};

use crate::Proto;

/// A socket as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketOwner {
    /// Inode of the socket file; 0 when no file refers to it yet (a connection waiting in a
    /// listener's accept queue) or any more (TIME_WAIT).
    pub inode: u32,
    pub uid: u32,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// TCP state (`include/net/tcp_states.h`: 1 established, 6 time-wait, 10 listen, …).
    pub state: u8,
}

impl SocketOwner {
    /// Whether this is a connection the handshake has completed (or is completing) but no
    /// process has accepted yet: it will have a socket file in a moment.
    pub fn in_accept_queue(&self) -> bool {
        const ESTABLISHED: u8 = 1;
        const SYN_RECV: u8 = 3;
        const NEW_SYN_RECV: u8 = 12;
        self.inode == 0 && matches!(self.state, ESTABLISHED | SYN_RECV | NEW_SYN_RECV)
    }
}

/// A netlink socket for sock_diag queries. One per thread; queries are synchronous.
#[derive(Debug)]
pub struct SockDiag {
    sock: Socket,
    buf: Vec<u8>,
    seq: u32,
}

impl SockDiag {
    pub fn open() -> io::Result<SockDiag> {
        let mut sock = Socket::new(NETLINK_SOCK_DIAG)?;
        sock.bind_auto()?;
        sock.connect(&NlAddr::new(0, 0))?;
        Ok(SockDiag {
            sock,
            buf: vec![0; 64 * 1024],
            seq: 0,
        })
    }

    /// The socket whose local end is `local` and remote end `remote`. A listening or unconnected
    /// socket matches when `remote` is the unspecified address with port 0. `Ok(None)` when
    /// there is no such socket.
    pub fn find(
        &mut self,
        proto: Proto,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> io::Result<Option<SocketOwner>> {
        Ok(self.find_many(&[(proto, local, remote)])?.pop().flatten())
    }

    /// [`Self::find`] for each of `queries`, answered in order. All the requests go to the
    /// kernel in one message and the answers come back together: one round trip for a batch
    /// instead of one per flow.
    pub fn find_many(
        &mut self,
        queries: &[(Proto, SocketAddr, SocketAddr)],
    ) -> io::Result<Vec<Option<SocketOwner>>> {
        let mut out = vec![None; queries.len()];
        // Sent in chunks that the kernel's socket buffers take whole.
        for (chunk, answers) in queries
            .chunks(MAX_REQUESTS)
            .zip(out.chunks_mut(MAX_REQUESTS))
        {
            self.round_trip(chunk, answers)?;
        }
        Ok(out)
    }

    fn round_trip(
        &mut self,
        queries: &[(Proto, SocketAddr, SocketAddr)],
        answers: &mut [Option<SocketOwner>],
    ) -> io::Result<()> {
        let first = self.seq.wrapping_add(1);
        let mut req = Vec::with_capacity(queries.len() * 80);
        for &(proto, local, remote) in queries {
            self.seq = self.seq.wrapping_add(1);
            encode_request(self.seq, proto, local, remote, &mut req);
        }
        self.sock.send(&req, 0)?;
        let mut pending = queries.len();
        while pending > 0 {
            let n = self.sock.recv(&mut &mut self.buf[..], 0)?;
            for (seq, reply) in Replies(&self.buf[..n]) {
                // Replies to earlier, abandoned requests carry older sequence numbers.
                let i = seq.wrapping_sub(first) as usize;
                if i < answers.len()
                    && let Some(r) = reply
                {
                    answers[i] = r?;
                    pending -= 1;
                }
            }
        }
        Ok(())
    }
}

/// Requests sent in one message; their answers (about 100 bytes each) fit the default socket
/// receive buffer many times over.
const MAX_REQUESTS: usize = 256;

/// Netlink and sock_diag constants (`linux/netlink.h`, `linux/sock_diag.h`, `linux/inet_diag.h`).
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const ENOENT: i32 = 2;
/// `struct nlmsghdr`, `struct inet_diag_req_v2` and `struct inet_diag_msg` sizes.
const NLMSG_HDR: usize = 16;
const REQ_LEN: usize = NLMSG_HDR + 56;
const MSG_LEN: usize = 72;

/// Appends an exact-match request (`nlmsghdr` + `inet_diag_req_v2`) for the socket `local` ↔
/// `remote` to `buf`. The layout is the kernel's, in native byte order except the ports and
/// addresses (network order).
fn encode_request(
    seq: u32,
    proto: Proto,
    local: SocketAddr,
    remote: SocketAddr,
    buf: &mut Vec<u8>,
) {
    // Both ends must be of one family; an IPv4 peer of an IPv6 socket is v4-mapped.
    let (local, remote) = same_family(local, remote);
    // The kernel looks a UDP socket up as the receiver of a datagram from the request's
    // "source" to its "destination" (swapped against TCP, for historical reasons), so the
    // local end goes second. An unconnected socket bound to `local` then matches any remote.
    let (src, dst) = match proto {
        Proto::Tcp => (local, remote),
        Proto::Udp => (remote, local),
    };
    buf.extend_from_slice(&(REQ_LEN as u32).to_ne_bytes());
    buf.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    buf.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    buf.push(if local.is_ipv4() { AF_INET } else { AF_INET6 });
    buf.push(match proto {
        Proto::Tcp => IPPROTO_TCP,
        Proto::Udp => IPPROTO_UDP,
    });
    buf.push(0); // no extensions
    buf.push(0);
    buf.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    buf.extend_from_slice(&src.port().to_be_bytes());
    buf.extend_from_slice(&dst.port().to_be_bytes());
    for a in [src.ip(), dst.ip()] {
        let mut field = [0u8; 16];
        match a {
            IpAddr::V4(v4) => field[..4].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => field = v6.octets(),
        }
        buf.extend_from_slice(&field);
    }
    buf.extend_from_slice(&0u32.to_ne_bytes()); // any interface
    buf.extend_from_slice(&[0xff; 8]); // no cookie: match by addresses
}

/// The messages of one netlink datagram: each reply's sequence number and, for the replies
/// that answer a request, the answer (`Ok(None)`: no such socket). Malformed or truncated
/// bytes end the iteration; they never panic.
struct Replies<'a>(&'a [u8]);

impl Iterator for Replies<'_> {
    type Item = (u32, Option<io::Result<Option<SocketOwner>>>);

    fn next(&mut self) -> Option<Self::Item> {
        let b = self.0;
        let len = u32::from_ne_bytes(b.get(0..4)?.try_into().ok()?) as usize;
        if len < NLMSG_HDR || len > b.len() {
            self.0 = &[];
            return None;
        }
        // Messages are padded to 4 bytes.
        self.0 = b.get(len.next_multiple_of(4)..).unwrap_or(&[]);
        let kind = u16::from_ne_bytes([b[4], b[5]]);
        let seq = u32::from_ne_bytes([b[8], b[9], b[10], b[11]]);
        let body = &b[NLMSG_HDR..len];
        let answer = match kind {
            SOCK_DIAG_BY_FAMILY => Some(decode_socket(body).map(Some).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "short sock_diag reply")
            })),
            NLMSG_ERROR => {
                let code = body
                    .get(0..4)
                    .map_or(0, |c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]));
                Some(match -code {
                    0 | ENOENT => Ok(None),
                    e => Err(io::Error::from_raw_os_error(e)),
                })
            }
            NLMSG_DONE => Some(Ok(None)),
            _ => None,
        };
        Some((seq, answer))
    }
}

/// Decodes one netlink datagram as [`SockDiag`] would, checking what must hold for any bytes:
/// no panic, and every decoded socket's two ends of one family. For the fuzz target
/// (`fuzz/fuzz_targets/sock_diag.rs`) and its corpus replay.
#[doc(hidden)]
pub fn fuzz_replies(datagram: &[u8]) {
    for (_, answer) in Replies(datagram) {
        if let Some(Ok(Some(o))) = answer {
            assert_eq!(o.local.is_ipv4(), o.remote.is_ipv4());
        }
    }
}

/// A `struct inet_diag_msg`.
fn decode_socket(m: &[u8]) -> Option<SocketOwner> {
    if m.len() < MSG_LEN {
        return None;
    }
    let u32_at = |o: usize| u32::from_ne_bytes([m[o], m[o + 1], m[o + 2], m[o + 3]]);
    let addr = |o: usize| -> IpAddr {
        if m[0] == AF_INET {
            IpAddr::V4(Ipv4Addr::new(m[o], m[o + 1], m[o + 2], m[o + 3]))
        } else {
            let mut a = [0u8; 16];
            a.copy_from_slice(&m[o..o + 16]);
            IpAddr::V6(Ipv6Addr::from(a))
        }
    };
    Some(SocketOwner {
        local: SocketAddr::new(addr(8), u16::from_be_bytes([m[4], m[5]])),
        remote: SocketAddr::new(addr(24), u16::from_be_bytes([m[6], m[7]])),
        uid: u32_at(64),
        inode: u32_at(68),
        state: m[1],
    })
}

fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    let v6 = |s: SocketAddr| match s.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), s.port()),
        IpAddr::V6(_) => s,
    };
    if a.is_ipv4() == b.is_ipv4() {
        (a, b)
    } else {
        (v6(a), v6(b))
    }
}

/// The "any address, port 0" remote end that matches listening and unconnected sockets.
pub fn wildcard_for(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream, UdpSocket};

    /// A reply as the kernel sends it for a TCP socket 127.0.0.1:40000 ↔ 127.0.0.1:443.
    fn reply(seq: u32) -> Vec<u8> {
        let mut m = vec![0u8; NLMSG_HDR + MSG_LEN];
        m[0..4].copy_from_slice(&((NLMSG_HDR + MSG_LEN) as u32).to_ne_bytes());
        m[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        m[8..12].copy_from_slice(&seq.to_ne_bytes());
        let d = &mut m[NLMSG_HDR..];
        d[0] = AF_INET;
        d[1] = 6; // TIME_WAIT
        d[4..6].copy_from_slice(&40000u16.to_be_bytes());
        d[6..8].copy_from_slice(&443u16.to_be_bytes());
        d[8..12].copy_from_slice(&[127, 0, 0, 1]);
        d[24..28].copy_from_slice(&[127, 0, 0, 1]);
        d[64..68].copy_from_slice(&1000u32.to_ne_bytes());
        d[68..72].copy_from_slice(&4242u32.to_ne_bytes());
        m
    }

    #[test]
    fn replies_decode_and_bad_bytes_never_panic() {
        let mut two = reply(7);
        let mut err = vec![0u8; NLMSG_HDR + 20];
        err[0..4].copy_from_slice(&((NLMSG_HDR + 20) as u32).to_ne_bytes());
        err[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        err[8..12].copy_from_slice(&8u32.to_ne_bytes());
        err[16..20].copy_from_slice(&(-ENOENT).to_ne_bytes());
        two.extend_from_slice(&err);
        let got: Vec<_> = Replies(&two).collect();
        assert_eq!(got.len(), 2);
        let (seq, Some(Ok(Some(o)))) = &got[0] else {
            panic!("{:?}", got[0]);
        };
        assert_eq!(*seq, 7);
        assert_eq!(o.local, "127.0.0.1:40000".parse().unwrap());
        assert_eq!(o.remote, "127.0.0.1:443".parse().unwrap());
        assert_eq!((o.uid, o.inode, o.state), (1000, 4242, 6));
        assert!(!o.in_accept_queue(), "it has a file");
        assert!(matches!(got[1], (8, Some(Ok(None)))));
        // Every truncation, and every byte flipped, is survived.
        for cut in 0..two.len() {
            let _ = Replies(&two[..cut]).count();
        }
        for i in 0..two.len() {
            let mut bad = two.clone();
            bad[i] ^= 0xff;
            let _ = Replies(&bad).count();
        }
        // A length field pointing past the end, or below a header, ends the datagram.
        let mut long = reply(1);
        long[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert_eq!(Replies(&long).count(), 0);
        long[0..4].copy_from_slice(&3u32.to_ne_bytes());
        assert_eq!(Replies(&long).count(), 0);
    }

    #[test]
    fn requests_have_the_kernel_layout() {
        let mut b = Vec::new();
        let local: SocketAddr = "10.0.0.1:1234".parse().unwrap();
        let remote: SocketAddr = "[::1]:80".parse().unwrap();
        encode_request(9, Proto::Tcp, local, remote, &mut b);
        assert_eq!(b.len(), REQ_LEN);
        assert_eq!(
            u32::from_ne_bytes(b[0..4].try_into().unwrap()),
            REQ_LEN as u32
        );
        assert_eq!(b[16], AF_INET6, "mixed families go as IPv6, v4-mapped");
        assert_eq!(&b[24..26], &1234u16.to_be_bytes());
        assert_eq!(
            &b[28..44],
            &"::ffff:10.0.0.1".parse::<Ipv6Addr>().unwrap().octets()
        );
        assert_eq!(&b[64..72], &[0xff; 8]);
        // UDP: the local end second.
        let mut u = Vec::new();
        encode_request(9, Proto::Udp, local, wildcard_for(local), &mut u);
        assert_eq!((u[16], u[17]), (AF_INET, IPPROTO_UDP));
        assert_eq!(&u[26..28], &1234u16.to_be_bytes());
        assert_eq!(&u[44..48], &[10, 0, 0, 1]);
    }

    #[test]
    fn many_lookups_are_answered_in_order() {
        // More sockets than one request message carries.
        let n = MAX_REQUESTS + 20;
        let udp: Vec<UdpSocket> = (0..n)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let mut queries: Vec<(Proto, SocketAddr, SocketAddr)> = udp
            .iter()
            .map(|u| {
                let a = u.local_addr().unwrap();
                (Proto::Udp, a, wildcard_for(a))
            })
            .collect();
        // A connection, a socket that does not exist, a listener, an IPv6 socket.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        let c = TcpStream::connect(a).unwrap();
        let c_addr = c.local_addr().unwrap();
        queries.push((Proto::Tcp, c_addr, a));
        queries.push((Proto::Tcp, SocketAddr::from(([127, 0, 0, 1], 1)), a));
        queries.push((Proto::Tcp, a, wildcard_for(a)));
        let u6 = UdpSocket::bind("[::1]:0").unwrap();
        let a6 = u6.local_addr().unwrap();
        queries.push((Proto::Udp, a6, wildcard_for(a6)));
        // A connected UDP socket, and an unconnected one asked about by a datagram's remote.
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let pa = peer.local_addr().unwrap();
        let connected = UdpSocket::bind("127.0.0.1:0").unwrap();
        connected.connect(pa).unwrap();
        let u0 = connected.local_addr().unwrap();
        queries.push((Proto::Udp, u0, pa));
        queries.push((Proto::Udp, pa, u0));
        let mut sd = SockDiag::open().unwrap();
        let got = sd.find_many(&queries).unwrap();
        assert_eq!(got.len(), queries.len());
        for (q, g) in queries.iter().zip(&got).take(n) {
            assert_eq!(g.expect("UDP socket").local, q.1);
        }
        let mut inodes: Vec<u32> = got[..n].iter().map(|g| g.unwrap().inode).collect();
        inodes.sort_unstable();
        inodes.dedup();
        assert_eq!(inodes.len(), n, "each answer is its own socket");
        let conn = got[n].expect("connection");
        assert_eq!((conn.local, conn.remote), (c_addr, a));
        assert_eq!(conn.state, 1, "established");
        // Its server end was never accepted: no file yet, in the accept queue.
        let server_end = sd.find(Proto::Tcp, a, c_addr).unwrap().expect("server end");
        assert!(server_end.in_accept_queue(), "{server_end:?}");
        assert_eq!(got[n + 1], None);
        assert_eq!(got[n + 2].unwrap().local, a);
        assert_eq!(got[n + 2].unwrap().state, 10, "listening");
        assert_eq!(got[n + 3].unwrap().local, a6);
        let c = got[n + 4].expect("connected UDP socket");
        assert_eq!((c.local, c.remote), (u0, pa));
        assert_eq!(got[n + 5].expect("unconnected UDP socket").local, pa);
        // One at a time agrees.
        let q = queries[7];
        assert_eq!(sd.find(q.0, q.1, q.2).unwrap(), got[7]);
    }
}
