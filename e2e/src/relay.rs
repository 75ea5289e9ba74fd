//! A UDP relay on loopback that can be cut and restored, to simulate a network outage between an
//! agent and the control plane without touching interfaces or needing privileges.
//!
//! Each client address gets its own upstream socket, as a NAT would, so QUIC sees an ordinary
//! path. While cut, datagrams in both directions are dropped (not queued), exactly as on a dead
//! link.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::net::UdpSocket;
use tokio::sync::Mutex;

/// A running relay. Dropping it stops it.
#[derive(Debug)]
pub struct UdpRelay {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl UdpRelay {
    /// Listens on an ephemeral loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<UdpRelay> {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let addr = front.local_addr()?;
        let cut = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicU64::new(0));
        let peers: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>> = Arc::default();
        let (c, d) = (cut.clone(), dropped.clone());
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            loop {
                let Ok((n, client)) = front.recv_from(&mut buf).await else {
                    return;
                };
                if c.load(Ordering::Relaxed) {
                    d.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let back = {
                    let mut peers = peers.lock().await;
                    match peers.get(&client) {
                        Some(s) => s.clone(),
                        None => {
                            let Ok(s) = UdpSocket::bind("127.0.0.1:0").await else {
                                continue;
                            };
                            if s.connect(upstream).await.is_err() {
                                continue;
                            }
                            let s = Arc::new(s);
                            peers.insert(client, s.clone());
                            tokio::spawn(pump_back(
                                s.clone(),
                                front.clone(),
                                client,
                                c.clone(),
                                d.clone(),
                            ));
                            s
                        }
                    }
                };
                let _ = back.send(&buf[..n]).await;
            }
        });
        Ok(UdpRelay {
            addr,
            cut,
            dropped,
            task,
        })
    }

    /// Where clients should send.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts (`true`) or restores (`false`) the path.
    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::Relaxed);
    }

    /// Datagrams dropped while cut.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump_back(
    up: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    client: SocketAddr,
    cut: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 65536];
    // recv fails with ECONNREFUSED while the upstream is down (ICMP port unreachable); keep
    // going, the control plane may come back.
    loop {
        match up.recv(&mut buf).await {
            Ok(n) if !cut.load(Ordering::Relaxed) => {
                let _ = front.send_to(&buf[..n], client).await;
            }
            Ok(_) => {
                dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn forwards_both_ways_and_drops_while_cut() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let relay = UdpRelay::start(server.local_addr().unwrap()).await.unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.connect(relay.addr()).await.unwrap();
        let mut buf = [0u8; 16];

        client.send(b"ping").await.unwrap();
        let (n, from) = server.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"ping");
        server.send_to(b"pong", from).await.unwrap();
        let n = client.recv(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"pong");

        relay.set_cut(true);
        client.send(b"lost").await.unwrap();
        let got = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            server.recv_from(&mut buf),
        )
        .await;
        assert!(got.is_err(), "nothing crosses a cut path");
        assert_eq!(relay.dropped(), 1);

        relay.set_cut(false);
        client.send(b"again").await.unwrap();
        let (n, _) = server.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"again");
    }
}
