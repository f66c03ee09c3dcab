//! Added tokens (special tokens such as `<|im_start|>`, and user-defined ones) found in the text before
//! any BPE runs: leftmost-longest, non-overlapping, with the `single_word`, `lstrip` and `rstrip` rules of
//! Hugging Face `tokenizers`.

/// One added token, as `tokenizer.json`'s `added_tokens` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AddedToken {
    pub id: u32,
    pub content: String,
    pub special: bool,
    pub single_word: bool,
    pub lstrip: bool,
    pub rstrip: bool,
    /// Matched in the normalized text instead of the raw text.
    pub normalized: bool,
}

/// A piece of the input: plain text, or an added token's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Piece<'a> {
    /// Text and its byte offset in the string that was split.
    Text(&'a str, usize),
    Token(u32),
}

/// Finds a fixed set of patterns, leftmost-longest (what aho-corasick's `LeftmostLongest` gives).
#[derive(Default)]
pub(crate) struct Matcher {
    /// (pattern, token id, single_word, lstrip, rstrip)
    patterns: Vec<(String, u32, bool, bool, bool)>,
    /// Indexes into `patterns` by first byte, longest pattern first.
    by_first: Vec<Vec<u32>>,
}

impl Matcher {
    /// A matcher over `tokens`, each matched as `pattern(token)` (its content, or its normalized form).
    pub(crate) fn new<'a>(tokens: impl Iterator<Item = (&'a AddedToken, String)>) -> Self {
        let mut m = Matcher { patterns: Vec::new(), by_first: vec![Vec::new(); 256] };
        for (t, pattern) in tokens {
            if pattern.is_empty() {
                continue;
            }
            let first = pattern.as_bytes()[0] as usize;
            m.by_first[first].push(m.patterns.len() as u32);
            m.patterns.push((pattern, t.id, t.single_word, t.lstrip, t.rstrip));
        }
        for list in &mut m.by_first {
            // Longest first; among equal lengths, the first listed (aho-corasick's pattern order).
            list.sort_by_key(|&i| std::cmp::Reverse(m.patterns[i as usize].0.len()));
        }
        m
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The next match at or after `from`: (start, end, pattern index).
    #[inline]
    fn find(&self, s: &str, from: usize) -> Option<(usize, usize, usize)> {
        let b = s.as_bytes();
        for i in from..b.len() {
            let list = &self.by_first[b[i] as usize];
            if list.is_empty() {
                continue;
            }
            for &p in list {
                let pat = self.patterns[p as usize].0.as_bytes();
                if b[i..].starts_with(pat) {
                    return Some((i, i + pat.len(), p as usize));
                }
            }
        }
        None
    }

    /// Splits `s` into text and tokens, calling `f` on each piece in order. `base` is the offset of `s`
    /// in the original input (reported with each text piece). An empty `s` gives one empty text piece.
    pub(crate) fn split<'a>(&self, s: &'a str, base: usize, f: &mut impl FnMut(Piece<'a>)) {
        if self.patterns.is_empty() || s.is_empty() {
            f(Piece::Text(s, base));
            return;
        }
        let mut done = 0; // end of the last emitted piece
        let mut from = 0; // where the next search starts
        while let Some((mut start, mut stop, p)) = self.find(s, from) {
            from = stop;
            let (_, id, single_word, lstrip, rstrip) = self.patterns[p];
            if single_word {
                let start_ok = start == 0 || !s[..start].chars().next_back().is_some_and(is_word_char);
                let stop_ok = stop == s.len() || !s[stop..].chars().next().is_some_and(is_word_char);
                if !start_ok || !stop_ok {
                    continue;
                }
            }
            if lstrip {
                let trimmed = s[..start].trim_end_matches(char::is_whitespace).len();
                start = trimmed.max(done);
            }
            if rstrip {
                stop = s.len() - s[stop..].trim_start_matches(char::is_whitespace).len();
                from = stop;
            }
            if done < start {
                f(Piece::Text(&s[done..start], base + done));
            }
            f(Piece::Token(id));
            done = stop;
        }
        if done < s.len() {
            f(Piece::Text(&s[done..], base + done));
        }
    }
}

/// `\w` of the `regex` crate, which `tokenizers` uses for `single_word`: alphanumeric, marks, `_`.
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || ('\u{300}'..='\u{36f}').contains(&c) || c == '\u{200c}' || c == '\u{200d}'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(id: u32, content: &str) -> AddedToken {
        AddedToken {
            id,
            content: content.into(),
            special: true,
            single_word: false,
            lstrip: false,
            rstrip: false,
            normalized: false,
        }
    }

    fn pieces(m: &Matcher, s: &str) -> Vec<String> {
        let mut v = Vec::new();
        m.split(s, 0, &mut |p| {
            v.push(match p {
                Piece::Text(t, _) => t.to_string(),
                Piece::Token(id) => format!("#{id}"),
            })
        });
        v
    }

    #[test]
    fn leftmost_longest() {
        let toks = [tok(1, "<s>"), tok(2, "<s><s>"), tok(3, "s>")];
        let m = Matcher::new(toks.iter().map(|t| (t, t.content.clone())));
        assert_eq!(pieces(&m, "a<s><s><s>b"), ["a", "#2", "#1", "b"]);
        assert_eq!(pieces(&m, "xs>"), ["x", "#3"]);
        assert_eq!(pieces(&m, ""), [""]);
    }

    #[test]
    fn strip_and_single_word() {
        let mut t = tok(7, "<mask>");
        t.lstrip = true;
        t.rstrip = true;
        let mut w = tok(8, "cat");
        w.single_word = true;
        let toks = [t, w];
        let m = Matcher::new(toks.iter().map(|t| (t, t.content.clone())));
        assert_eq!(pieces(&m, "a  <mask>  b"), ["a", "#7", "b"]);
        assert_eq!(pieces(&m, "cat concat cat."), ["#8", " concat ", "#8", "."]);
    }
}
