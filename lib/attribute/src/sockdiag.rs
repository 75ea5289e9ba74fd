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
        // Both ends must be of one family; an IPv4 peer of an IPv6 socket is v4-mapped.
        let (local, remote) = same_family(local, remote);
        let family = if local.is_ipv4() { AF_INET } else { AF_INET6 };
        let mut hdr = NetlinkHeader::default();
        hdr.flags = NLM_F_REQUEST;
        self.seq = self.seq.wrapping_add(1);
        hdr.sequence_number = self.seq;
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
                    source_port: local.port(),
                    destination_port: remote.port(),
                    source_address: local.ip(),
                    destination_address: remote.ip(),
                    interface_id: 0,
                    // All ones: "no cookie", match by addresses.
                    cookie: [0xff; 8],
                },
            })
            .into(),
        );
        msg.finalize();
        let mut out = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut out);
        self.sock.send(&out, 0)?;
        loop {
            let n = self.sock.recv(&mut &mut self.buf[..], 0)?;
            let mut off = 0;
            while off < n {
                let reply = NetlinkMessage::<SockDiagMessage>::deserialize(&self.buf[off..n])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = reply.header.length as usize;
                let stale = reply.header.sequence_number != self.seq;
                match reply.payload {
                    _ if stale => {}
                    NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                        let id = &r.header.socket_id;
                        return Ok(Some(SocketOwner {
                            inode: r.header.inode,
                            uid: r.header.uid,
                            local: SocketAddr::new(id.source_address, id.source_port),
                            remote: SocketAddr::new(id.destination_address, id.destination_port),
                        }));
                    }
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            // ENOENT: no such socket.
                            Some(c) if c.get() == -2 => Ok(None),
                            Some(c) => Err(io::Error::from_raw_os_error(-c.get())),
                            None => Ok(None),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(None),
                    _ => {}
                }
                if len == 0 {
                    break;
                }
                off += len;
            }
        }
    }
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
