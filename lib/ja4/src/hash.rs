//! The truncated hash every JA4+ method uses for its hashed sections.

use sha2::{Digest, Sha256};

/// The hash of an empty section. The methods print this instead of the SHA-256 of the
/// empty string, so that "nothing there" is recognisable at a glance.
pub const EMPTY_HASH: &str = "000000000000";

/// First 12 lowercase hex digits of SHA-256 over `input`, or [`EMPTY_HASH`] when the input
/// is empty.
pub fn hash12(input: &str) -> String {
    if input.is_empty() {
        return EMPTY_HASH.to_string();
    }
    let digest = Sha256::digest(input.as_bytes());
    let mut out = String::with_capacity(12);
    for b in &digest[..6] {
        push_hex_byte(&mut out, *b);
    }
    out
}

fn push_hex_byte(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(HEX[(b >> 4) as usize] as char);
    out.push(HEX[(b & 0x0f) as usize] as char);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_is_zeroes() {
        assert_eq!(hash12(""), "000000000000");
    }

    #[test]
    fn spec_cipher_vector() {
        assert_eq!(
            hash12("002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,cca9"),
            "8daaf6152771"
        );
    }
}
