//! The BPE model: a vocabulary, a merge-rank map keyed by the pair of ids, byte-level and character-level
//! starting symbols (with SentencePiece byte fallback and unknown-token fusing), and the merge loop.
//!
//! Merging follows Hugging Face `tokenizers` exactly: repeatedly merge the adjacent pair with the lowest
//! rank, the leftmost one among equals.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::bytelevel::BYTE_CHAR;
use super::hash::{fast_map, FastMap};

/// No token: a missing table entry, or a symbol removed by a merge.
pub(crate) const NONE: u32 = u32::MAX;
/// Words with more symbols than this merge through a heap instead of a linear scan.
const SMALL_WORD: usize = 48;

/// Options of the BPE model, as `tokenizer.json` names them.
#[derive(Clone, Debug, Default)]
pub(crate) struct BpeOptions {
    pub byte_fallback: bool,
    pub unk_id: Option<u32>,
    pub fuse_unk: bool,
    pub ignore_merges: bool,
}

/// Why a merge could not be built: which side is missing from the vocabulary.
#[derive(Debug)]
pub(crate) enum MergeError {
    Left,
    Right,
    Merged(String),
}

pub(crate) struct Bpe {
    pub vocab: FastMap<Box<str>, u32>,
    /// (left id << 32 | right id) -> (rank << 32 | merged id).
    merges: FastMap<u64, u64>,
    /// Byte-level start symbols: the id of the one-character token of each byte.
    byte_ids: [u32; 256],
    /// SentencePiece byte fallback: the id of `<0xNN>`.
    fallback_ids: [u32; 256],
    /// Character-level start symbols for ASCII.
    ascii_ids: [u32; 128],
    pub opts: BpeOptions,
}

/// Buffers reused from word to word.
#[derive(Default)]
pub(crate) struct Scratch {
    syms: Vec<u32>,
    pairs: Vec<u64>,
    next: Vec<u32>,
    prev: Vec<u32>,
    heap: BinaryHeap<Reverse<u64>>,
    text: String,
}

impl Bpe {
    /// Builds the model; `merges` in rank order. A pair listed twice keeps its last rank, as in
    /// `tokenizers`.
    pub(crate) fn new<'a>(
        vocab: FastMap<Box<str>, u32>,
        merges: impl Iterator<Item = (&'a str, &'a str)>,
        opts: BpeOptions,
    ) -> Result<Self, (usize, String, String, MergeError)> {
        let mut map = fast_map(vocab.len());
        let mut joined = String::new();
        for (rank, (a, b)) in merges.enumerate() {
            let err = |e| (rank, a.to_string(), b.to_string(), e);
            let ia = *vocab.get(a).ok_or_else(|| err(MergeError::Left))?;
            let ib = *vocab.get(b).ok_or_else(|| err(MergeError::Right))?;
            joined.clear();
            joined.push_str(a);
            joined.push_str(b);
            let new = *vocab.get(joined.as_str()).ok_or_else(|| err(MergeError::Merged(joined.clone())))?;
            map.insert(key(ia, ib), (rank as u64) << 32 | new as u64);
        }
        let mut byte_ids = [NONE; 256];
        let mut fallback_ids = [NONE; 256];
        let mut buf = [0u8; 4];
        for b in 0..256usize {
            let c: &str = BYTE_CHAR[b].encode_utf8(&mut buf);
            byte_ids[b] = vocab.get(c).copied().unwrap_or(NONE);
            fallback_ids[b] = vocab.get(format!("<0x{b:02X}>").as_str()).copied().unwrap_or(NONE);
        }
        let mut ascii_ids = [NONE; 128];
        for (b, slot) in ascii_ids.iter_mut().enumerate() {
            *slot = vocab.get((b as u8 as char).encode_utf8(&mut buf) as &str).copied().unwrap_or(NONE);
        }
        Ok(Bpe { vocab, merges: map, byte_ids, fallback_ids, ascii_ids, opts })
    }

    /// The token of a one-byte pre-token in byte-level BPE (`NONE` if the vocabulary lacks it): no merge
    /// applies to a single symbol, so it needs neither the cache nor the merge loop.
    #[inline(always)]
    pub(crate) fn single_byte(&self, b: u8) -> u32 {
        self.byte_ids[b as usize]
    }

    #[inline(always)]
    fn pair(&self, a: u32, b: u32) -> u64 {
        self.merges.get(&key(a, b)).copied().unwrap_or(u64::MAX)
    }

    /// Byte-level BPE of one pre-token (raw bytes; the byte-to-character map is implied).
    pub(crate) fn encode_bytes(&self, piece: &[u8], out: &mut Vec<u32>, sc: &mut Scratch) {
        if piece.is_empty() {
            return;
        }
        let all_known = piece.iter().all(|&b| self.byte_ids[b as usize] != NONE);
        if self.opts.ignore_merges || !all_known {
            let mut text = std::mem::take(&mut sc.text);
            text.clear();
            text.extend(piece.iter().map(|&b| BYTE_CHAR[b as usize]));
            if self.opts.ignore_merges && all_known {
                if let Some(&id) = self.vocab.get(text.as_str()) {
                    out.push(id);
                    sc.text = text;
                    return;
                }
            }
            if !all_known {
                self.encode_chars(&text, out, sc);
                sc.text = text;
                return;
            }
            sc.text = text;
        }
        let mut syms = std::mem::take(&mut sc.syms);
        syms.clear();
        syms.extend(piece.iter().map(|&b| self.byte_ids[b as usize]));
        self.merge_all(&mut syms, sc);
        out.extend_from_slice(&syms);
        sc.syms = syms;
    }

    /// Character-level BPE of one word: each character is a start symbol, else its `<0xNN>` bytes (byte
    /// fallback), else the unknown token (fused when `fuse_unk`), else nothing.
    pub(crate) fn encode_chars(&self, word: &str, out: &mut Vec<u32>, sc: &mut Scratch) {
        if word.is_empty() {
            return;
        }
        if self.opts.ignore_merges {
            if let Some(&id) = self.vocab.get(word) {
                out.push(id);
                return;
            }
        }
        let mut syms = std::mem::take(&mut sc.syms);
        syms.clear();
        let mut unk: Option<u32> = None;
        let mut buf = [0u8; 4];
        for c in word.chars() {
            let id = if (c as u32) < 0x80 {
                self.ascii_ids[c as usize]
            } else {
                self.vocab.get(c.encode_utf8(&mut buf) as &str).copied().unwrap_or(NONE)
            };
            if id != NONE {
                syms.extend(unk.take());
                syms.push(id);
                continue;
            }
            if self.opts.byte_fallback {
                let bytes = c.encode_utf8(&mut buf).as_bytes();
                if bytes.iter().all(|&b| self.fallback_ids[b as usize] != NONE) {
                    // As in `tokenizers`, a pending unknown token is not flushed here.
                    syms.extend(bytes.iter().map(|&b| self.fallback_ids[b as usize]));
                    continue;
                }
            }
            if let Some(unk_id) = self.opts.unk_id {
                match unk {
                    Some(_) if self.opts.fuse_unk => {}
                    Some(prev) => {
                        syms.push(prev);
                        unk = Some(unk_id);
                    }
                    None => unk = Some(unk_id),
                }
            }
        }
        syms.extend(unk);
        self.merge_all(&mut syms, sc);
        out.extend_from_slice(&syms);
        sc.syms = syms;
    }

    fn merge_all(&self, syms: &mut Vec<u32>, sc: &mut Scratch) {
        if syms.len() < 2 {
            return;
        }
        if syms.len() <= SMALL_WORD {
            self.merge_small(syms, &mut sc.pairs);
        } else {
            self.merge_heap(syms, sc);
        }
    }

    /// Linear scan for the best pair; fine for the short words that make up almost all text.
    fn merge_small(&self, syms: &mut Vec<u32>, pairs: &mut Vec<u64>) {
        pairs.clear();
        pairs.extend(syms.windows(2).map(|w| self.pair(w[0], w[1])));
        loop {
            let mut best = u64::MAX;
            let mut at = 0;
            for (i, &p) in pairs.iter().enumerate() {
                if p < best {
                    best = p;
                    at = i;
                }
            }
            if best == u64::MAX {
                return;
            }
            syms[at] = best as u32;
            syms.remove(at + 1);
            pairs.remove(at);
            if at > 0 {
                pairs[at - 1] = self.pair(syms[at - 1], syms[at]);
            }
            if at + 1 < syms.len() {
                pairs[at] = self.pair(syms[at], syms[at + 1]);
            }
        }
    }

    /// A min-heap of (rank, position) over a linked list of symbols, for long words.
    fn merge_heap(&self, syms: &mut Vec<u32>, sc: &mut Scratch) {
        let n = syms.len();
        let (next, prev, heap) = (&mut sc.next, &mut sc.prev, &mut sc.heap);
        next.clear();
        prev.clear();
        heap.clear();
        next.extend((1..=n as u32).map(|i| if i as usize == n { NONE } else { i }));
        prev.extend((0..n as u32).map(|i| if i == 0 { NONE } else { i - 1 }));
        for i in 0..n - 1 {
            let p = self.pair(syms[i], syms[i + 1]);
            if p != u64::MAX {
                heap.push(Reverse((p >> 32) << 32 | i as u64));
            }
        }
        while let Some(Reverse(top)) = heap.pop() {
            let (rank, pos) = (top >> 32, (top & 0xFFFF_FFFF) as usize);
            let right = next[pos];
            if syms[pos] == NONE || right == NONE {
                continue;
            }
            let p = self.pair(syms[pos], syms[right as usize]);
            if p >> 32 != rank {
                continue; // stale: this position's pair changed since it was queued
            }
            syms[pos] = p as u32;
            syms[right as usize] = NONE;
            let after = next[right as usize];
            next[pos] = after;
            if after != NONE {
                prev[after as usize] = pos as u32;
                let q = self.pair(syms[pos], syms[after as usize]);
                if q != u64::MAX {
                    heap.push(Reverse((q >> 32) << 32 | pos as u64));
                }
            }
            let before = prev[pos];
            if before != NONE {
                let q = self.pair(syms[before as usize], syms[pos]);
                if q != u64::MAX {
                    heap.push(Reverse((q >> 32) << 32 | before as u64));
                }
            }
        }
        syms.retain(|&s| s != NONE);
    }
}

#[inline(always)]
fn key(a: u32, b: u32) -> u64 {
    (a as u64) << 32 | b as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(merges: &[(&str, &str)]) -> Bpe {
        let mut vocab = fast_map(16);
        for (i, t) in ["a", "b", "c", "ab", "bc", "abc", "aa", "aaaa", "<0x41>"].iter().enumerate() {
            vocab.insert(Box::<str>::from(*t), i as u32);
        }
        Bpe::new(vocab, merges.iter().copied(), BpeOptions::default()).ok().unwrap()
    }

    #[test]
    fn lowest_rank_then_leftmost() {
        let bpe = toy(&[("b", "c"), ("a", "b"), ("a", "bc"), ("a", "a"), ("aa", "aa")]);
        let mut sc = Scratch::default();
        let mut out = Vec::new();
        bpe.encode_chars("abc", &mut out, &mut sc);
        assert_eq!(out, [5]); // bc first, then a+bc
        out.clear();
        bpe.encode_chars("aaaaa", &mut out, &mut sc);
        assert_eq!(out, [7, 0]);
    }

    #[test]
    fn heap_and_scan_agree() {
        let bpe = toy(&[("a", "a"), ("b", "c"), ("aa", "aa"), ("a", "b"), ("a", "bc")]);
        let mut sc = Scratch::default();
        let mut seed = 12345u64;
        for len in [2usize, 5, 30, 49, 100, 300] {
            for _ in 0..20 {
                let word: Vec<u32> = (0..len)
                    .map(|_| {
                        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        ((seed >> 33) % 3) as u32
                    })
                    .collect();
                let (mut x, mut y) = (word.clone(), word.clone());
                bpe.merge_small(&mut x, &mut sc.pairs);
                bpe.merge_heap(&mut y, &mut sc);
                assert_eq!(x, y, "{word:?}");
            }
        }
    }

    #[test]
    fn unknown_characters() {
        let mut bpe = toy(&[]);
        bpe.opts = BpeOptions { byte_fallback: false, unk_id: Some(8), fuse_unk: true, ignore_merges: false };
        let mut sc = Scratch::default();
        let mut out = Vec::new();
        bpe.encode_chars("axyb", &mut out, &mut sc);
        assert_eq!(out, [0, 8, 1]);
        bpe.opts.fuse_unk = false;
        out.clear();
        bpe.encode_chars("axyb", &mut out, &mut sc);
        assert_eq!(out, [0, 8, 8, 1]);
    }
}
