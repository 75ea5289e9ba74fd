//! Where generated frames go: a classic pcap file (Ethernet, microsecond timestamps) or
//! memory.

use std::io::{self, Write};

/// Receives generated Ethernet frames in capture order.
pub trait FrameSink {
    /// One frame captured at `ts_us` (microseconds since the epoch).
    fn frame(&mut self, ts_us: u64, data: &[u8]) -> io::Result<()>;
}

/// Writes a little-endian pcap file with link type Ethernet.
#[derive(Debug)]
pub struct PcapWriter<W: Write> {
    out: W,
    bytes: u64,
}

impl<W: Write> PcapWriter<W> {
    /// Writes the global header.
    pub fn new(mut out: W) -> io::Result<Self> {
        let mut h = Vec::with_capacity(24);
        h.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        h.extend_from_slice(&2u16.to_le_bytes());
        h.extend_from_slice(&4u16.to_le_bytes());
        h.extend_from_slice(&0i32.to_le_bytes()); // thiszone
        h.extend_from_slice(&0u32.to_le_bytes()); // sigfigs
        h.extend_from_slice(&262_144u32.to_le_bytes()); // snaplen
        h.extend_from_slice(&1u32.to_le_bytes()); // LINKTYPE_ETHERNET
        out.write_all(&h)?;
        Ok(PcapWriter { out, bytes: 24 })
    }

    /// Bytes written so far, headers included.
    pub fn bytes_written(&self) -> u64 {
        self.bytes
    }

    /// Flushes and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write> FrameSink for PcapWriter<W> {
    fn frame(&mut self, ts_us: u64, data: &[u8]) -> io::Result<()> {
        let len = data.len() as u32;
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&((ts_us / 1_000_000) as u32).to_le_bytes());
        h[4..8].copy_from_slice(&((ts_us % 1_000_000) as u32).to_le_bytes());
        h[8..12].copy_from_slice(&len.to_le_bytes());
        h[12..16].copy_from_slice(&len.to_le_bytes());
        self.out.write_all(&h)?;
        self.out.write_all(data)?;
        self.bytes += 16 + u64::from(len);
        Ok(())
    }
}

/// Keeps frames in memory (for benches that replay them).
#[derive(Debug, Default)]
pub struct MemorySink {
    /// `(timestamp in microseconds, frame)` in capture order.
    pub frames: Vec<(u64, Vec<u8>)>,
}

impl FrameSink for MemorySink {
    fn frame(&mut self, ts_us: u64, data: &[u8]) -> io::Result<()> {
        self.frames.push((ts_us, data.to_vec()));
        Ok(())
    }
}
