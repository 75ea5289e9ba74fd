//! TLS and DTLS: record framing, handshake reassembly, the hello and certificate messages,
//! and record decryption with key-log secrets.

pub mod certificate;
pub mod client_hello;
pub mod decrypt;
pub mod dtls;
pub mod handshake;
pub mod record;
pub mod server_hello;
