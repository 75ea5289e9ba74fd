//! Packet sources, all through libpcap: live interfaces ([`live`]) and offline files (pcap
//! and pcapng, or `-` for stdin); the pcapng Decryption Secrets Blocks that libpcap skips
//! are read by a small block scanner.

pub mod file;
pub mod live;
pub mod pcapng_secrets;
