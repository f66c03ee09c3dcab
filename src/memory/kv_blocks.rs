//! The paged KV cache's bookkeeping: which of an engine's cache blocks are free, which sequences hold which,
//! and which full blocks can be shared between sequences whose prompts start alike.
//!
//! A block that a sequence has filled is *published* under the tokens that led to it (its own tokens and the
//! chain of blocks before it). A later sequence whose tokens start the same way takes those blocks instead of
//! computing them again. Blocks are reference-counted; a released block keeps its contents and stays findable
//! until it is handed out again, least recently released first.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

/// The identity of a full block's contents: the chain hash of every block before it and its own tokens.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    parent: u64,
    tokens: Vec<u32>,
}

impl Key {
    fn chain_hash(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.hash(&mut h);
        h.finish()
    }
}

#[derive(Clone, Debug, Default)]
struct Block {
    refs: u32,
    /// Where this block is published, when it is.
    key: Option<Key>,
    /// Its place in the free list (the release stamp), while free.
    freed: Option<u64>,
}

/// The blocks of one cache.
#[derive(Debug)]
pub struct BlockPool {
    block_tokens: usize,
    blocks: Vec<Block>,
    /// Free blocks by release stamp: the oldest is handed out first.
    free: BTreeMap<u64, u32>,
    stamp: u64,
    published: HashMap<Key, u32>,
}

impl BlockPool {
    pub fn new(blocks: usize, block_tokens: usize) -> BlockPool {
        assert!(block_tokens > 0, "blocks of 0 tokens");
        BlockPool {
            block_tokens,
            blocks: vec![Block::default(); blocks],
            free: (0..blocks as u32).map(|b| (b as u64, b)).collect(),
            stamp: blocks as u64,
            published: HashMap::new(),
        }
    }

    pub fn block_tokens(&self) -> usize {
        self.block_tokens
    }

    pub fn total(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks no sequence holds (some may still be found by [`BlockPool::share_prefix`]).
    pub fn free(&self) -> usize {
        self.free.len()
    }

    /// Blocks `tokens` needs.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_tokens)
    }

    /// The published blocks that hold the longest run of whole blocks at the start of `tokens`, at most
    /// `max_blocks` of them, each now held once more by the caller.
    pub fn share_prefix(&mut self, tokens: &[u32], max_blocks: usize) -> Vec<u32> {
        self.share_prefix_in(0, tokens, max_blocks)
    }

    /// [`BlockPool::share_prefix`] among the blocks published under `space` only: keys and values computed
    /// under other weights (another LoRA adapter set) are never shared. Space 0 is the one of
    /// [`BlockPool::share_prefix`] and [`BlockPool::publish`].
    pub fn share_prefix_in(&mut self, space: u64, tokens: &[u32], max_blocks: usize) -> Vec<u32> {
        let mut out = Vec::new();
        let mut parent = space;
        for chunk in tokens.chunks_exact(self.block_tokens).take(max_blocks) {
            let key = Key { parent, tokens: chunk.to_vec() };
            let Some(&b) = self.published.get(&key) else { break };
            parent = key.chain_hash();
            self.hold(b);
            out.push(b);
        }
        out
    }

    /// A block for a sequence to write, or `None` when every block is held.
    pub fn allocate(&mut self) -> Option<u32> {
        let (_, b) = self.free.pop_first()?;
        let block = &mut self.blocks[b as usize];
        block.freed = None;
        block.refs = 1;
        if let Some(key) = block.key.take() {
            self.published.remove(&key);
        }
        Some(b)
    }

    /// Gives back one hold of each block.
    pub fn release(&mut self, blocks: &[u32]) {
        for &b in blocks {
            let block = &mut self.blocks[b as usize];
            assert!(block.refs > 0, "block {b} released more often than held");
            block.refs -= 1;
            if block.refs == 0 {
                self.stamp += 1;
                block.freed = Some(self.stamp);
                self.free.insert(self.stamp, b);
            }
        }
    }

    /// Records that the sequence holding `table` has filled its blocks up to `tokens.len()` positions with
    /// `tokens`: its whole blocks become findable by [`BlockPool::share_prefix`]. Blocks already published (a
    /// shared prefix) are kept as they are.
    pub fn publish(&mut self, tokens: &[u32], table: &[u32]) {
        self.publish_in(0, tokens, table)
    }

    /// [`BlockPool::publish`] under `space` (see [`BlockPool::share_prefix_in`]).
    pub fn publish_in(&mut self, space: u64, tokens: &[u32], table: &[u32]) {
        let mut parent = space;
        for (chunk, &b) in tokens.chunks_exact(self.block_tokens).zip(table) {
            let key = Key { parent, tokens: chunk.to_vec() };
            parent = key.chain_hash();
            if self.blocks[b as usize].key.as_ref() == Some(&key) {
                continue;
            }
            if self.published.contains_key(&key) {
                // Same contents computed twice (two sequences with one prompt at once): keep the first.
                continue;
            }
            if let Some(old) = self.blocks[b as usize].key.take() {
                self.published.remove(&old);
            }
            self.published.insert(key.clone(), b);
            self.blocks[b as usize].key = Some(key);
        }
    }

    fn hold(&mut self, b: u32) {
        let block = &mut self.blocks[b as usize];
        if let Some(stamp) = block.freed.take() {
            self.free.remove(&stamp);
        }
        block.refs += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_release_and_run_out() {
        let mut p = BlockPool::new(3, 4);
        let a: Vec<u32> = (0..3).map(|_| p.allocate().unwrap()).collect();
        assert_eq!(p.allocate(), None);
        assert_eq!(p.free(), 0);
        p.release(&a[1..2]);
        assert_eq!(p.allocate(), Some(a[1]));
    }

    #[test]
    fn spaces_share_nothing_with_each_other() {
        let mut p = BlockPool::new(4, 2);
        let table: Vec<u32> = (0..2).map(|_| p.allocate().unwrap()).collect();
        p.publish_in(7, &[1, 2, 3, 4], &table);
        assert!(p.share_prefix(&[1, 2, 3, 4, 5], 8).is_empty(), "space 0 saw space 7's blocks");
        assert!(p.share_prefix_in(9, &[1, 2, 3, 4, 5], 8).is_empty());
        assert_eq!(p.share_prefix_in(7, &[1, 2, 3, 4, 5], 8), table);
    }

    #[test]
    fn a_published_prefix_is_shared_and_survives_release_until_reused() {
        let mut p = BlockPool::new(4, 2);
        let tokens = [1, 2, 3, 4, 5];
        let table: Vec<u32> = (0..3).map(|_| p.allocate().unwrap()).collect();
        p.publish(&tokens, &table);
        // Two whole blocks are published; the third is partial.
        let shared = p.share_prefix(&[1, 2, 3, 4, 9, 9], 8);
        assert_eq!(shared, table[..2]);
        // A different first block shares nothing, even if the second matches.
        assert!(p.share_prefix(&[7, 2, 3, 4], 8).is_empty());
        // The cap holds.
        let one = p.share_prefix(&tokens, 1);
        assert_eq!(one, table[..1]);
        p.release(&one);
        p.release(&shared);
        p.release(&table);
        assert_eq!(p.free(), 4);
        // Released but still findable; taking it removes it from the free list.
        let again = p.share_prefix(&tokens, 8);
        assert_eq!(again, table[..2]);
        assert_eq!(p.free(), 2);
        // Reusing a block for something else unpublishes it.
        let b = (0..2).map(|_| p.allocate().unwrap()).collect::<Vec<_>>();
        assert!(!b.contains(&table[0]) && !b.contains(&table[1]));
        p.release(&again);
        let all: Vec<u32> = (0..2).map(|_| p.allocate().unwrap()).collect();
        assert!(all.contains(&table[0]));
        assert!(p.share_prefix(&tokens, 8).is_empty());
    }

    #[test]
    fn the_oldest_free_block_is_reused_first() {
        let mut p = BlockPool::new(3, 1);
        let t: Vec<u32> = (0..3).map(|_| p.allocate().unwrap()).collect();
        p.publish(&[10, 11, 12], &t);
        p.release(&[t[2]]);
        p.release(&[t[0]]);
        assert_eq!(p.allocate(), Some(t[2]));
    }
}
