//! Unicode NFC (the `NFC` normalizer of Qwen2's `tokenizer.json`): canonical decomposition, canonical
//! ordering of combining marks, canonical composition; Hangul by arithmetic. Text without any code point
//! of `MAYBE` is already NFC and is returned borrowed, so ASCII, CJK and emoji cost one scan.

use std::borrow::Cow;
use std::cmp::Ordering;

use super::nfc_tables::{CCC, COMPOSE, DECOMP, DECOMP_CHARS, MAYBE};

const S_BASE: u32 = 0xAC00;
const L_BASE: u32 = 0x1100;
const V_BASE: u32 = 0x1161;
const T_BASE: u32 = 0x11A7;
const L_COUNT: u32 = 19;
const V_COUNT: u32 = 21;
const T_COUNT: u32 = 28;
const N_COUNT: u32 = V_COUNT * T_COUNT;
const S_COUNT: u32 = L_COUNT * N_COUNT;

fn range_cmp(lo: u32, hi: u32, c: u32) -> Ordering {
    if hi < c {
        Ordering::Less
    } else if lo > c {
        Ordering::Greater
    } else {
        Ordering::Equal
    }
}

fn maybe_changes(c: char) -> bool {
    (c as u32) >= 0x300 && MAYBE.binary_search_by(|&(lo, hi)| range_cmp(lo, hi, c as u32)).is_ok()
}

fn ccc(c: u32) -> u8 {
    if c < 0x300 {
        return 0;
    }
    CCC.binary_search_by(|&(lo, hi, _)| range_cmp(lo, hi, c)).map_or(0, |i| CCC[i].2)
}

fn decompose(c: u32, out: &mut Vec<u32>) {
    let s = c.wrapping_sub(S_BASE);
    if s < S_COUNT {
        out.push(L_BASE + s / N_COUNT);
        out.push(V_BASE + (s % N_COUNT) / T_COUNT);
        if !s.is_multiple_of(T_COUNT) {
            out.push(T_BASE + s % T_COUNT);
        }
        return;
    }
    match DECOMP.binary_search_by_key(&c, |&(cp, _, _)| cp) {
        Ok(i) => {
            let (_, start, len) = DECOMP[i];
            out.extend_from_slice(&DECOMP_CHARS[start as usize..start as usize + len as usize]);
        }
        Err(_) => out.push(c),
    }
}

fn compose(a: u32, b: u32) -> Option<u32> {
    let (l, v) = (a.wrapping_sub(L_BASE), b.wrapping_sub(V_BASE));
    if l < L_COUNT && v < V_COUNT {
        return Some(S_BASE + (l * V_COUNT + v) * T_COUNT);
    }
    let (s, t) = (a.wrapping_sub(S_BASE), b.wrapping_sub(T_BASE));
    if s < S_COUNT && s % T_COUNT == 0 && t > 0 && t < T_COUNT {
        return Some(a + t);
    }
    COMPOSE.binary_search_by_key(&(a, b), |&(x, y, _)| (x, y)).ok().map(|i| COMPOSE[i].2)
}

/// `s` in Normalization Form C.
pub(crate) fn nfc(s: &str) -> Cow<'_, str> {
    if !s.chars().any(maybe_changes) {
        return Cow::Borrowed(s);
    }
    let mut d: Vec<u32> = Vec::with_capacity(s.len() + 8);
    for c in s.chars() {
        decompose(c as u32, &mut d);
    }
    // Canonical order: a stable sort by class within each run of non-starters (runs are short).
    let mut i = 0;
    while i < d.len() {
        if ccc(d[i]) == 0 {
            i += 1;
            continue;
        }
        let start = i;
        while i < d.len() && ccc(d[i]) != 0 {
            i += 1;
        }
        d[start..i].sort_by_key(|&c| ccc(c));
    }
    // Composition: a mark joins the last starter unless a mark of the same or a higher class, or another
    // starter, stands between them.
    let mut out: Vec<u32> = Vec::with_capacity(d.len());
    let mut starter: Option<usize> = None;
    let mut last_class: u16 = 0;
    for c in d {
        let class = ccc(c) as u16;
        if let Some(at) = starter {
            let open = last_class == 0 && out.len() == at + 1 || last_class < class;
            if let Some(comp) = open.then(|| compose(out[at], c)).flatten() {
                out[at] = comp;
                continue;
            }
        }
        if class == 0 {
            starter = Some(out.len());
        } else if starter.is_none() {
            // Marks before any starter never compose.
            last_class = 256;
            out.push(c);
            continue;
        }
        last_class = class;
        out.push(c);
    }
    Cow::Owned(out.into_iter().filter_map(char::from_u32).collect())
}

#[cfg(test)]
mod tests {
    use super::nfc;

    #[test]
    fn composes_reorders_and_keeps() {
        assert_eq!(nfc("plain ascii 你好 😀"), "plain ascii 你好 😀");
        assert!(matches!(nfc("plain"), std::borrow::Cow::Borrowed(_)));
        assert_eq!(nfc("e\u{301}"), "\u{e9}");
        assert_eq!(nfc("\u{212b}"), "\u{c5}");
        assert_eq!(nfc("\u{1100}\u{1161}\u{11a8}"), "\u{ac01}");
        assert_eq!(nfc("\u{ac00}\u{11a8}"), "\u{ac01}");
        assert_eq!(nfc("a\u{307}\u{323}"), "\u{1ea1}\u{307}");
        assert_eq!(nfc("\u{1e9b}\u{323}"), "\u{1e9b}\u{323}");
        assert_eq!(nfc("\u{301}e"), "\u{301}e");
        assert_eq!(nfc("\u{958}"), "\u{915}\u{93c}");
    }
}
