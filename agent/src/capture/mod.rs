//! Packet sources. Offline files go through libpcap (pcap and pcapng, or `-` for stdin);
//! the pcapng Decryption Secrets Blocks that libpcap skips are read by a small block scanner.

pub mod file;
pub mod pcapng_secrets;
