//! Hand-written scanners with exactly the semantics of the pre-tokenizer regexes of GPT-2, Llama-3 and
//! Qwen2 (leftmost-first alternation, greedy runs, the `\s+(?!\S)` look-ahead), plus the `Digits` and
//! `Metaspace` splits. No regex engine runs at encode time.
//!
//! GPT-2:   `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
//! Llama-3: `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
//! Qwen2:   the Llama-3 regex with `\p{N}` for `\p{N}{1,3}` (every digit alone).

use super::unicode::{class_of, is_digit, Class};

/// How the `Digits` pre-tokenizer ahead of the GPT-2 regex splits numbers (SmolLM2 isolates each digit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Digits {
    Off,
    Individual,
    Contiguous,
}

/// What a scanner sees in one character. `Digit` only appears under a `Digits` split: it ends the
/// segment the regex runs on, like the end of the string.
#[derive(Clone, Copy, PartialEq, Eq)]
enum K {
    L,
    N,
    S,
    O,
    Digit,
}

#[inline(always)]
fn char_at(s: &str, i: usize) -> (char, usize) {
    let b = s.as_bytes()[i];
    if b < 0x80 {
        return (b as char, 1);
    }
    match s.get(i..).and_then(|t| t.chars().next()) {
        Some(c) => (c, c.len_utf8()),
        None => ('\u{FFFD}', 1),
    }
}

/// `K` of each ASCII character (digits as `N`).
static ASCII_K: [K; 128] = {
    let mut t = [K::O; 128];
    let mut i = 0;
    while i < 128 {
        let b = i as u8;
        t[i] = if b.is_ascii_alphabetic() {
            K::L
        } else if b.is_ascii_digit() {
            K::N
        } else if matches!(b, b'\t' | b'\n' | 0x0B | 0x0C | b'\r' | b' ') {
            K::S
        } else {
            K::O
        };
        i += 1;
    }
    t
};

#[inline(always)]
fn kind(c: char, digits: Digits) -> K {
    if (c as u32) < 0x80 {
        let k = ASCII_K[c as usize];
        return if k == K::N && digits != Digits::Off { K::Digit } else { k };
    }
    kind_slow(c, digits)
}

fn kind_slow(c: char, digits: Digits) -> K {
    if digits != Digits::Off && is_digit(c) {
        return K::Digit;
    }
    match class_of(c) {
        Class::Letter => K::L,
        Class::Number => K::N,
        Class::Space => K::S,
        Class::Other => K::O,
    }
}

/// End of the run of `k` characters starting at `i`.
#[inline(always)]
fn run(s: &str, mut i: usize, k: K, digits: Digits) -> usize {
    let b = s.as_bytes();
    while i < b.len() {
        let (c, l) = char_at(s, i);
        if kind(c, digits) != k {
            break;
        }
        i += l;
    }
    i
}

/// Length of the GPT-2 contraction suffix (`s t m d re ve ll`, lower case) starting at `i`.
#[inline]
fn contraction(b: &[u8], i: usize) -> Option<usize> {
    match (b.get(i), b.get(i + 1)) {
        (Some(b's' | b't' | b'm' | b'd'), _) => Some(1),
        (Some(b'r' | b'v'), Some(b'e')) | (Some(b'l'), Some(b'l')) => Some(2),
        _ => None,
    }
}

/// The same, case-insensitively as Oniguruma folds (`ſ` U+017F folds to `s`).
#[inline]
fn contraction_ci(s: &str, i: usize) -> Option<usize> {
    if i >= s.len() {
        return None;
    }
    let (c, l) = char_at(s, i);
    let second = |want: u8| s.as_bytes().get(i + 1).is_some_and(|b| b.to_ascii_lowercase() == want);
    match c {
        's' | 'S' | 'ſ' | 't' | 'T' | 'm' | 'M' | 'd' | 'D' => Some(l),
        'r' | 'R' | 'v' | 'V' if second(b'e') => Some(2),
        'l' | 'L' if second(b'l') => Some(2),
        _ => None,
    }
}

/// A whitespace run from `i`: its end, the start of its last character, and the end of its last CR/LF.
#[inline]
fn space_run(s: &str, i: usize, digits: Digits) -> (usize, usize, usize) {
    let (mut j, mut last, mut nl_end) = (i, i, 0);
    while j < s.len() {
        let (c, l) = char_at(s, j);
        if kind(c, digits) != K::S {
            break;
        }
        if c == '\r' || c == '\n' {
            nl_end = j + l;
        }
        last = j;
        j += l;
    }
    (j, last, nl_end)
}

/// `\s+(?!\S)|\s+` on the run `[i, end)`: all of it at the end of the segment, else all but its last
/// character (which then joins the next piece), else the single whitespace character.
#[inline]
fn space_piece(s: &str, i: usize, end: usize, last: usize, digits: Digits) -> usize {
    let at_end = end >= s.len() || kind(char_at(s, end).0, digits) == K::Digit;
    if at_end || last == i {
        end
    } else {
        last
    }
}

fn gpt2_end(s: &str, i: usize, digits: Digits) -> usize {
    let n = s.len();
    let (c0, l0) = char_at(s, i);
    let k0 = kind(c0, digits);
    if k0 == K::Digit {
        return if digits == Digits::Contiguous { run(s, i + l0, K::Digit, digits) } else { i + l0 };
    }
    if c0 == '\'' {
        if let Some(len) = contraction(s.as_bytes(), i + 1) {
            return i + 1 + len;
        }
    }
    if c0 == ' ' && i + 1 < n {
        let (c1, l1) = char_at(s, i + 1);
        let k1 = kind(c1, digits);
        if matches!(k1, K::L | K::N | K::O) {
            return run(s, i + 1 + l1, k1, digits);
        }
    }
    if matches!(k0, K::L | K::N | K::O) {
        return run(s, i + l0, k0, digits);
    }
    let (end, last, _) = space_run(s, i, digits);
    space_piece(s, i, end, last, digits)
}

/// End of the Llama-3-family piece at `i`; `max_digits` is 3 for Llama-3 (`\p{N}{1,3}`), 1 for Qwen2.
fn llama3_end(s: &str, i: usize, max_digits: usize) -> usize {
    let n = s.len();
    let d = Digits::Off;
    let (c0, l0) = char_at(s, i);
    let k0 = kind(c0, d);
    if c0 == '\'' {
        if let Some(len) = contraction_ci(s, i + 1) {
            return i + 1 + len;
        }
    }
    if k0 == K::L {
        return run(s, i + l0, K::L, d);
    }
    let next = if i + l0 < n { Some(char_at(s, i + l0)) } else { None };
    let k1 = next.map(|(c, _)| kind(c, d));
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if k0 != K::N && c0 != '\r' && c0 != '\n' && k1 == Some(K::L) {
        let l1 = next.map_or(0, |(_, l)| l);
        return run(s, i + l0 + l1, K::L, d);
    }
    // \p{N}{1,3} (Llama-3) or \p{N} (Qwen2)
    if k0 == K::N {
        let mut j = i + l0;
        for _ in 1..max_digits {
            if j >= n {
                break;
            }
            let (c, l) = char_at(s, j);
            if kind(c, d) != K::N {
                break;
            }
            j += l;
        }
        return j;
    }
    // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
    let punct_from = if k0 == K::O {
        Some(i + l0)
    } else if c0 == ' ' && k1 == Some(K::O) {
        next.map(|(_, l)| i + 1 + l)
    } else {
        None
    };
    if let Some(p) = punct_from {
        let b = s.as_bytes();
        let mut j = run(s, p, K::O, d);
        while j < n && (b[j] == b'\r' || b[j] == b'\n') {
            j += 1;
        }
        return j;
    }
    // \s*[\r\n]+ : through the last CR/LF of the run; then \s+(?!\S)|\s+
    let (end, last, nl_end) = space_run(s, i, d);
    if nl_end > 0 {
        return nl_end;
    }
    space_piece(s, i, end, last, d)
}

/// Calls `f` on each piece of `s` under the GPT-2 regex (after a `Digits` split when asked).
#[inline]
pub(crate) fn split_gpt2<'a>(s: &'a str, digits: Digits, f: &mut impl FnMut(&'a str)) {
    let mut i = 0;
    while i < s.len() {
        let e = gpt2_end(s, i, digits);
        f(&s[i..e]);
        i = e;
    }
}

/// Calls `f` on each piece of `s` under the Llama-3 regex.
#[inline]
pub(crate) fn split_llama3<'a>(s: &'a str, f: &mut impl FnMut(&'a str)) {
    let mut i = 0;
    while i < s.len() {
        let e = llama3_end(s, i, 3);
        f(&s[i..e]);
        i = e;
    }
}

/// Calls `f` on each piece of `s` under the Qwen2 regex.
#[inline]
pub(crate) fn split_qwen2<'a>(s: &'a str, f: &mut impl FnMut(&'a str)) {
    let mut i = 0;
    while i < s.len() {
        let e = llama3_end(s, i, 1);
        f(&s[i..e]);
        i = e;
    }
}

/// Splits before every `▁` (the delimiter starts the next piece), as `Metaspace(split=true)` does.
pub(crate) fn split_metaspace<'a>(s: &'a str, f: &mut impl FnMut(&'a str)) {
    let mut start = 0;
    for (idx, _) in s.match_indices('▁') {
        if idx > start {
            f(&s[start..idx]);
        }
        start = idx;
    }
    if start < s.len() {
        f(&s[start..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpt2(s: &str, d: Digits) -> Vec<&str> {
        let mut v = Vec::new();
        split_gpt2(s, d, &mut |p| v.push(p));
        v
    }
    fn llama3(s: &str) -> Vec<&str> {
        let mut v = Vec::new();
        split_llama3(s, &mut |p| v.push(p));
        v
    }

    #[test]
    fn gpt2_pieces() {
        assert_eq!(gpt2("Hello world", Digits::Off), ["Hello", " world"]);
        assert_eq!(gpt2("it's  a\n\nb   ", Digits::Off), ["it", "'s", " ", " a", "\n", "\n", "b", "   "]);
        assert_eq!(gpt2("x \n\ty", Digits::Off), ["x", " \n", "\t", "y"]);
        assert_eq!(gpt2("?'s 12ab", Digits::Off), ["?'", "s", " 12", "ab"]);
        assert_eq!(gpt2("a 12  3", Digits::Individual), ["a", " ", "1", "2", "  ", "3"]);
        assert_eq!(gpt2("a 12  3", Digits::Contiguous), ["a", " ", "12", "  ", "3"]);
    }

    #[test]
    fn llama3_pieces() {
        assert_eq!(llama3("Hello, world!!\n\nOK"), ["Hello", ",", " world", "!!\n\n", "OK"]);
        assert_eq!(llama3("12345 x"), ["123", "45", " x"]);
        assert_eq!(llama3("  \n  hi"), ["  \n", " ", " hi"]);
        assert_eq!(llama3("I'M 'ſ \tab"), ["I", "'M", " '", "ſ", " ", "\tab"]);
        assert_eq!(llama3("(hi) \n"), ["(hi", ")", " \n"]);
    }

    #[test]
    fn qwen2_pieces() {
        let qwen2 = |s| {
            let mut v = Vec::new();
            split_qwen2(s, &mut |p| v.push(p));
            v
        };
        assert_eq!(qwen2("12345 x"), ["1", "2", "3", "4", "5", " x"]);
        assert_eq!(qwen2("v2.0: x=10;"), ["v", "2", ".", "0", ":", " x", "=", "1", "0", ";"]);
        assert_eq!(qwen2("Hello, world!!\n\nOK"), ["Hello", ",", " world", "!!\n\n", "OK"]);
        assert_eq!(qwen2("  \n  hi\tthere"), ["  \n", " ", " hi", "\tthere"]);
        assert_eq!(qwen2("I'M don't 'ſ"), ["I", "'M", " don", "'t", " '", "ſ"]);
        assert_eq!(qwen2("²³ 你好😀!"), ["²", "³", " 你好", "😀!"]);
        assert_eq!(qwen2("def f():\n    return 1\n"), ["def", " f", "():\n", "   ", " return", " ", "1", "\n"]);
    }

    #[test]
    fn metaspace_pieces() {
        let mut v = Vec::new();
        split_metaspace("▁a▁▁b", &mut |p| v.push(p.to_string()));
        assert_eq!(v, ["▁a", "▁", "▁b"]);
    }
}
