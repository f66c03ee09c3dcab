//! GPT-2's reversible byte-to-character map: printable Latin-1 bytes stand for themselves, the other 68
//! bytes take the characters from U+0100 on, in byte order, so every byte is a visible character.

/// The character that stands for each byte in byte-level vocabularies (`Ġ` for a space, `Ċ` for `\n`).
pub(crate) static BYTE_CHAR: [char; 256] = build_byte_chars();

const fn visible(b: u32) -> bool {
    (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)
}

const fn build_byte_chars() -> [char; 256] {
    let mut out = ['\0'; 256];
    let mut extra = 0u32;
    let mut b = 0u32;
    while b < 256 {
        let cp = if visible(b) {
            b
        } else {
            extra += 1;
            0xFF + extra
        };
        out[b as usize] = match char::from_u32(cp) {
            Some(c) => c,
            None => '\0',
        };
        b += 1;
    }
    out
}

/// The byte a byte-level character stands for, if it is one of the 256.
#[inline]
pub(crate) fn char_byte(c: char) -> Option<u8> {
    let u = c as u32;
    if u < 0x100 {
        if visible(u) {
            Some(u as u8)
        } else {
            None
        }
    } else if u <= 0x143 {
        // U+0100 + k stands for the k-th byte (from 0) that is not visible.
        let k = u - 0x100;
        let mut seen = 0;
        let mut b = 0u32;
        while b < 256 {
            if !visible(b) {
                if seen == k {
                    return Some(b as u8);
                }
                seen += 1;
            }
            b += 1;
        }
        None
    } else {
        None
    }
}

/// The bytes a byte-level token stands for; a token with any other character (an added token such as
/// `<|x y|>`) stands for its own UTF-8 bytes, as in the `ByteLevel` decoder of `tokenizers`.
pub(crate) fn token_bytes(token: &str) -> Vec<u8> {
    let mapped: Option<Vec<u8>> = token.chars().map(char_byte).collect();
    mapped.unwrap_or_else(|| token.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_known_points() {
        assert_eq!(BYTE_CHAR[b' ' as usize], 'Ġ');
        assert_eq!(BYTE_CHAR[b'\n' as usize], 'Ċ');
        assert_eq!(BYTE_CHAR[b'a' as usize], 'a');
        for b in 0..=255u8 {
            assert_eq!(char_byte(BYTE_CHAR[b as usize]), Some(b));
        }
        assert_eq!(token_bytes("Ġhi"), b" hi");
        assert_eq!(token_bytes("<|x y|>"), b"<|x y|>");
    }
}
