//! Socket lookups through netlink `NETLINK_SOCK_DIAG` (what `ss` uses): given a flow's exact
//! addresses, the kernel returns the matching socket's inode and owner uid in one round trip,
//! without scanning `/proc/net/*`.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
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
            let mut off = 0;
            while off < n {
                let reply = NetlinkMessage::<SockDiagMessage>::deserialize(&self.buf[off..n])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = reply.header.length as usize;
                // Replies to earlier, abandoned requests carry older sequence numbers.
                let i = reply.header.sequence_number.wrapping_sub(first) as usize;
                if i < answers.len() {
                    let answer = match reply.payload {
                        NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                            let id = &r.header.socket_id;
                            Some(Ok(Some(SocketOwner {
                                inode: r.header.inode,
                                uid: r.header.uid,
                                local: SocketAddr::new(id.source_address, id.source_port),
                                remote: SocketAddr::new(
                                    id.destination_address,
                                    id.destination_port,
                                ),
                            })))
                        }
                        NetlinkPayload::Error(e) => Some(match e.code {
                            // ENOENT: no such socket.
                            Some(c) if c.get() != -2 => Err(io::Error::from_raw_os_error(-c.get())),
                            _ => Ok(None),
                        }),
                        NetlinkPayload::Done(_) => Some(Ok(None)),
                        _ => None,
                    };
                    if let Some(a) = answer {
                        answers[i] = a?;
                        pending -= 1;
                    }
                }
                if len == 0 {
                    break;
                }
                off += len;
            }
        }
        Ok(())
    }
}

/// Requests sent in one message; their answers (about 100 bytes each) fit the default socket
/// receive buffer many times over.
const MAX_REQUESTS: usize = 256;

/// Appends an exact-match request for the socket `local` ↔ `remote` to `buf`.
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
    let family = if local.is_ipv4() { AF_INET } else { AF_INET6 };
    let mut hdr = NetlinkHeader::default();
    hdr.flags = NLM_F_REQUEST;
    hdr.sequence_number = seq;
    let mut msg = NetlinkMessage::new(
        hdr,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: match proto {
                Proto::Tcp => IPPROTO_TCP,
                Proto::Udp => IPPROTO_UDP,
            },
            extensions: ExtensionFlags::empty(),
            states: StateFlags::all(),
            socket_id: SocketId {
                source_port: src.port(),
                destination_port: dst.port(),
                source_address: src.ip(),
                destination_address: dst.ip(),
                interface_id: 0,
                // All ones: "no cookie", match by addresses.
                cookie: [0xff; 8],
            },
        })
        .into(),
    );
    msg.finalize();
    let at = buf.len();
    buf.resize(at + msg.buffer_len(), 0);
    msg.serialize(&mut buf[at..]);
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
        assert_eq!(got[n + 1], None);
        assert_eq!(got[n + 2].unwrap().local, a);
        assert_eq!(got[n + 3].unwrap().local, a6);
        let c = got[n + 4].expect("connected UDP socket");
        assert_eq!((c.local, c.remote), (u0, pa));
        assert_eq!(got[n + 5].expect("unconnected UDP socket").local, pa);
        // One at a time agrees.
        let q = queries[7];
        assert_eq!(sd.find(q.0, q.1, q.2).unwrap(), got[7]);
    }
}
