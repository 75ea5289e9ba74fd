//! Turns off Nagle's algorithm on the PostgreSQL pool's TCP connections.
//!
//! sqlx 0.9.0 connects without `TCP_NODELAY` (a regression: launchbadge/sqlx#4335, fixed
//! upstream by #4336 but not released yet). The binary `COPY` ingest sends its data and then a
//! small `CopyDone` without waiting for an answer in between, so with Nagle on, `CopyDone` waits
//! for the server's delayed ACK: every group commit took ~40 ms longer than its work, which
//! capped uplink throughput and set the floor of ingest latency.
//!
//! sqlx does not expose its socket, so after connecting we ask the server which address the
//! connection comes from (`inet_client_addr()`, `inet_client_port()`), find our own socket with
//! that local address among this process's descriptors, and set the option on a duplicate taken
//! with `pidfd_getfd` (a socket option belongs to the socket, not the descriptor; no unsafe code
//! and no descriptor we do not own). Best effort: behind a proxy or NAT the addresses differ and
//! nothing is found, which is logged once and costs only the latency above.
//! Remove this module when sqlx sets `TCP_NODELAY` itself again.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::process::{PidfdFlags, PidfdGetfdFlags, getpid, pidfd_getfd, pidfd_open};

/// Sets `TCP_NODELAY` on a fresh pool connection (sqlx `after_connect`).
pub async fn after_connect(conn: &mut sqlx::PgConnection, server_port: u16) -> sqlx::Result<()> {
    let (ip, port): (Option<String>, Option<i32>) =
        sqlx::query_as("SELECT host(inet_client_addr()), inet_client_port()")
            .fetch_one(&mut *conn)
            .await?;
    // NULL over a Unix socket, where Nagle does not apply.
    let (Some(ip), Some(port)) = (ip, port) else {
        return Ok(());
    };
    let (Ok(ip), Ok(port)) = (ip.parse::<IpAddr>(), u16::try_from(port)) else {
        return Ok(());
    };
    match set_nodelay(SocketAddr::new(ip, port), server_port) {
        Ok(true) => {}
        Ok(false) => warn_once("no local socket has the address the server reports"),
        Err(e) => warn_once(&e.to_string()),
    }
    Ok(())
}

fn warn_once(why: &str) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            reason = why,
            "could not turn off Nagle's algorithm on a PostgreSQL connection; each ingest commit may wait ~40 ms longer"
        );
    }
}

/// Finds this process's TCP socket bound to `local` and connected to `server_port`, and sets
/// `TCP_NODELAY` on it. `Ok(false)` when there is none.
pub fn set_nodelay(local: SocketAddr, server_port: u16) -> std::io::Result<bool> {
    let pidfd = pidfd_open(getpid(), PidfdFlags::empty())?;
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let entry = entry?;
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|t| t.as_os_str().as_encoded_bytes().starts_with(b"socket:"));
        if !is_socket {
            continue;
        }
        // The descriptor may have been closed (or reused) since the listing: then the
        // duplicate fails or is another socket, and the address check below skips it.
        let Ok(dup) = pidfd_getfd(&pidfd, fd, PidfdGetfdFlags::empty()) else {
            continue;
        };
        let ours = rustix::net::getsockname(&dup)
            .ok()
            .and_then(|a| SocketAddr::try_from(a).ok())
            .is_some_and(|a| same(a, local));
        let to_server = rustix::net::getpeername(&dup)
            .ok()
            .flatten()
            .and_then(|a| SocketAddr::try_from(a).ok())
            .is_some_and(|a| a.port() == server_port);
        if ours && to_server {
            rustix::net::sockopt::set_tcp_nodelay(&dup, true)?;
            return Ok(true);
        }
    }
    Ok(false)
}

/// Address equality that sees `::ffff:a.b.c.d` and `a.b.c.d` as the same.
fn same(a: SocketAddr, b: SocketAddr) -> bool {
    let canon = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    a.port() == b.port() && canon(a.ip()) == canon(b.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_connected_socket_by_its_local_address_and_sets_nodelay() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let server = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(server).unwrap();
        assert!(!client.nodelay().unwrap());
        let local = client.local_addr().unwrap();
        assert!(set_nodelay(local, server.port()).unwrap());
        assert!(
            client.nodelay().unwrap(),
            "the option is the socket's, seen from any fd"
        );
        // Another local port, or the right one towards another server port: nothing found.
        let other = SocketAddr::new(local.ip(), local.port().wrapping_add(1).max(1));
        assert!(!set_nodelay(other, server.port()).unwrap());
        assert!(!set_nodelay(local, server.port().wrapping_add(1)).unwrap());
    }

    #[test]
    fn mapped_ipv4_addresses_match_plain_ones() {
        let a: SocketAddr = "127.0.0.1:5".parse().unwrap();
        let b: SocketAddr = "[::ffff:127.0.0.1]:5".parse().unwrap();
        assert!(same(a, b));
        assert!(!same(a, "127.0.0.2:5".parse().unwrap()));
    }
}
