//! Character classes of the pre-tokenizer regexes (`\p{L}`, `\p{N}`, `\s`) and of the `Digits`
//! pre-tokenizer, from tables generated out of the Hugging Face `tokenizers` regex engine itself.

use std::sync::OnceLock;

use super::unicode_tables::{DIGIT_EXTRA, LETTER, NUMBER, WHITESPACE};

/// The class a pre-tokenizer regex sees in one character.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    /// `\p{L}`
    Letter,
    /// `\p{N}`
    Number,
    /// `\s`
    Space,
    /// Anything else: `[^\s\p{L}\p{N}]`.
    Other,
}

const CLASSES: [Class; 4] = [Class::Other, Class::Letter, Class::Number, Class::Space];

fn in_ranges(table: &[(u32, u32)], c: u32) -> bool {
    table
        .binary_search_by(|&(lo, hi)| {
            if hi < c {
                std::cmp::Ordering::Less
            } else if lo > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

fn class_slow(c: u32) -> Class {
    if in_ranges(LETTER, c) {
        Class::Letter
    } else if in_ranges(NUMBER, c) {
        Class::Number
    } else if in_ranges(WHITESPACE, c) {
        Class::Space
    } else {
        Class::Other
    }
}

/// One byte per code point of the Basic Multilingual Plane: the index of its class in `CLASSES`.
fn bmp_table() -> &'static [u8] {
    static TABLE: OnceLock<Box<[u8]>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = vec![0u8; 0x10000];
        for (table, code) in [(LETTER, 1u8), (NUMBER, 2), (WHITESPACE, 3)] {
            for &(lo, hi) in table {
                for c in lo..=hi.min(0xFFFF) {
                    t[c as usize] = code;
                }
            }
        }
        t.into_boxed_slice()
    })
}

const fn ascii_class(b: u8) -> Class {
    match b {
        b'a'..=b'z' | b'A'..=b'Z' => Class::Letter,
        b'0'..=b'9' => Class::Number,
        b'\t' | b'\n' | 0x0B | 0x0C | b'\r' | b' ' => Class::Space,
        _ => Class::Other,
    }
}

static ASCII: [Class; 128] = {
    let mut t = [Class::Other; 128];
    let mut i = 0;
    while i < 128 {
        t[i] = ascii_class(i as u8);
        i += 1;
    }
    t
};

/// The regex class of `c`.
#[inline]
pub(crate) fn class_of(c: char) -> Class {
    let u = c as u32;
    if u < 0x80 {
        ASCII[u as usize]
    } else if u < 0x10000 {
        CLASSES[bmp_table()[u as usize] as usize]
    } else {
        class_slow(u)
    }
}

/// Whether the `Digits` pre-tokenizer treats `c` as a digit (`char::is_numeric` in `tokenizers`).
#[inline]
pub(crate) fn is_digit(c: char) -> bool {
    if (c as u32) < 0x80 {
        return c.is_ascii_digit();
    }
    class_of(c) == Class::Number || in_ranges(DIGIT_EXTRA, c as u32)
}

/// Python's `str.isspace` (what Jinja's `trim` and `str.strip()` remove): Unicode White_Space plus the
/// four ASCII separators U+001C..U+001F.
pub(crate) fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_match_the_tables() {
        assert_eq!(class_of('a'), Class::Letter);
        assert_eq!(class_of('é'), Class::Letter);
        assert_eq!(class_of('中'), Class::Letter);
        assert_eq!(class_of('٣'), Class::Number);
        assert_eq!(class_of('½'), Class::Number);
        assert_eq!(class_of('\u{3000}'), Class::Space);
        assert_eq!(class_of('\u{85}'), Class::Space);
        assert_eq!(class_of('\u{200b}'), Class::Other);
        assert_eq!(class_of('\u{301}'), Class::Other);
        assert_eq!(class_of('😀'), Class::Other);
        assert_eq!(class_of('𠀀'), Class::Letter);
        assert_eq!(class_of('𝟘'), Class::Number);
        for c in (0u32..0x30000).filter_map(char::from_u32) {
            assert_eq!(class_of(c), class_slow(c as u32), "{:X}", c as u32);
        }
    }

    #[test]
    fn digits_cover_numbers() {
        assert!(is_digit('7') && is_digit('٣') && is_digit('²') && !is_digit('a'));
        assert!(is_digit('\u{11de0}'));
    }
}
