//! Decryption Secrets Blocks (pcapng block type 0x0000000A) carry TLS key logs inside the
//! capture; libpcap skips them, so this scanner walks the block headers itself and returns
//! the TLS key-log text of every DSB. Only block headers are read; bodies of other blocks
//! are skipped with a seek, so the cost is one small read per block.

use std::io::{Read, Seek, SeekFrom};

const SHB: u32 = 0x0A0D_0D0A;
const DSB: u32 = 0x0000_000A;
const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;
/// Secrets type "TLSK": an NSS key log.
const SECRETS_TLS_KEYLOG: u32 = 0x544C_534B;
/// Largest DSB body read (key logs are small; this bounds hostile files).
const MAX_DSB_LEN: u32 = 16 * 1024 * 1024;

/// Returns the TLS key-log texts found in a pcapng stream; empty for classic pcap files and
/// for anything unreadable (secrets are optional; the packet reader reports real errors).
pub fn scan<R: Read + Seek>(mut r: R) -> Vec<String> {
    let mut out = Vec::new();
    let mut big_endian = false;
    let mut first = true;
    loop {
        let mut hdr = [0u8; 8];
        if r.read_exact(&mut hdr).is_err() {
            break;
        }
        let raw_type = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        if raw_type == SHB {
            // The byte-order magic follows the length; read it to learn the endianness.
            let mut magic = [0u8; 4];
            if r.read_exact(&mut magic).is_err() {
                break;
            }
            big_endian = u32::from_le_bytes(magic) != BYTE_ORDER_MAGIC;
            if big_endian && u32::from_be_bytes(magic) != BYTE_ORDER_MAGIC {
                break;
            }
            let len = read_u32(&hdr[4..8], big_endian);
            if len < 12
                || !len.is_multiple_of(4)
                || r.seek(SeekFrom::Current(i64::from(len) - 12)).is_err()
            {
                break;
            }
            first = false;
            continue;
        }
        if first {
            break; // not pcapng
        }
        let block_type = read_u32(&hdr[0..4], big_endian);
        let len = read_u32(&hdr[4..8], big_endian);
        if len < 12 || !len.is_multiple_of(4) {
            break;
        }
        if block_type == DSB && len <= MAX_DSB_LEN {
            let mut body = vec![0u8; (len - 8) as usize];
            if r.read_exact(&mut body).is_err() {
                break;
            }
            if body.len() >= 8 {
                let stype = read_u32(&body[0..4], big_endian);
                let slen = read_u32(&body[4..8], big_endian) as usize;
                if stype == SECRETS_TLS_KEYLOG
                    && let Some(data) = body.get(8..8 + slen)
                {
                    out.push(String::from_utf8_lossy(data).into_owned());
                }
            }
        } else if r.seek(SeekFrom::Current(i64::from(len) - 8)).is_err() {
            break;
        }
    }
    out
}

fn read_u32(b: &[u8], big_endian: bool) -> u32 {
    let a = [b[0], b[1], b[2], b[3]];
    if big_endian {
        u32::from_be_bytes(a)
    } else {
        u32::from_le_bytes(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn block(t: u32, body: &[u8]) -> Vec<u8> {
        let len = (12 + body.len()) as u32;
        let mut b = Vec::new();
        b.extend_from_slice(&t.to_le_bytes());
        b.extend_from_slice(&len.to_le_bytes());
        b.extend_from_slice(body);
        b.extend_from_slice(&len.to_le_bytes());
        b
    }

    #[test]
    fn finds_keylog_in_dsb_and_survives_garbage() {
        let mut shb = Vec::new();
        shb.extend_from_slice(&BYTE_ORDER_MAGIC.to_le_bytes());
        shb.extend_from_slice(&[1, 0, 0, 0]);
        shb.extend_from_slice(&u64::MAX.to_le_bytes());
        let text = b"CLIENT_RANDOM 00 11\n";
        let mut dsb = Vec::new();
        dsb.extend_from_slice(&SECRETS_TLS_KEYLOG.to_le_bytes());
        dsb.extend_from_slice(&(text.len() as u32).to_le_bytes());
        dsb.extend_from_slice(text);
        while dsb.len() % 4 != 0 {
            dsb.push(0);
        }
        let mut file = block(SHB, &shb);
        file.extend(block(1, &[1, 0, 0, 0, 0, 0, 4, 0]));
        file.extend(block(DSB, &dsb));
        let found = scan(Cursor::new(&file));
        assert_eq!(found, vec!["CLIENT_RANDOM 00 11\n".to_string()]);
        for cut in 0..file.len() {
            let _ = scan(Cursor::new(&file[..cut]));
        }
        assert!(scan(Cursor::new(b"\xd4\xc3\xb2\xa1 classic pcap")).is_empty());
    }
}
