//! A conversation with a loaded model: the engine's KV cache holds `tokens`; `generate` feeds the new part of
//! a prompt (reusing the cached prefix), then samples token by token, streaming text through a callback.

use crate::backend::lora::ActiveAdapter;
use crate::backend::{Engine, Logits};
use crate::error::{Error, Result};
use crate::sampling::{Sampler, SamplerOptions};
use crate::tokenizer::Tokenizer;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

/// Steps of the first device-side chain (short, so the first words show quickly), and the most the chain
/// grows to.
const FIRST_CHAIN: usize = 8;
const MAX_CHAIN: usize = 64;

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampler: SamplerOptions,
    /// Generation stops when the text contains one of these (which is not included in the output).
    pub stop_strings: Vec<String>,
    /// Keep going past end-of-sequence tokens.
    pub ignore_eos: bool,
    /// Drop the oldest prompt tokens instead of failing when the prompt does not fit the context.
    pub truncate_prompt: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 128,
            sampler: SamplerOptions::default(),
            stop_strings: Vec::new(),
            ignore_eos: false,
            truncate_prompt: false,
        }
    }
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    MaxTokens,
    EndOfSequence,
    StopString,
    ContextFull,
    /// The callback asked to stop (Ctrl-C, a closed connection...).
    Cancelled,
}

#[derive(Clone, Debug, Default)]
pub struct Timings {
    pub prompt_tokens: usize,
    pub prompt_ms: f64,
    pub decode_tokens: usize,
    pub decode_ms: f64,
}

impl Timings {
    pub fn prompt_tok_s(&self) -> f64 {
        rate(self.prompt_tokens, self.prompt_ms)
    }
    pub fn decode_tok_s(&self) -> f64 {
        rate(self.decode_tokens, self.decode_ms)
    }
}

fn rate(tokens: usize, ms: f64) -> f64 {
    if ms > 0.0 {
        tokens as f64 * 1000.0 / ms
    } else {
        0.0
    }
}

#[derive(Clone, Debug)]
pub struct Generation {
    pub prompt_ids: Vec<u32>,
    pub output_ids: Vec<u32>,
    pub text: String,
    pub stop: StopReason,
    pub timings: Timings,
}

pub struct Session {
    engine: Box<dyn Engine>,
    tokenizer: Arc<Tokenizer>,
    /// The tokens whose keys and values the engine's cache holds, in order.
    tokens: Vec<u32>,
    /// The engine's active adapters.
    adapters: Vec<ActiveAdapter>,
}

impl Session {
    pub fn new(engine: Box<dyn Engine>, tokenizer: Arc<Tokenizer>) -> Session {
        Session { engine, tokenizer, tokens: Vec::new(), adapters: Vec::new() }
    }

    pub fn engine(&mut self) -> &mut dyn Engine {
        self.engine.as_mut()
    }

    /// Tokens the engine's KV cache holds.
    pub fn context_length(&self) -> usize {
        self.engine.context_length()
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Applies `active` (empty: the base alone) from the next request on. The base stays loaded and the
    /// adapters are resident ([`Model::adapter`](crate::runtime::Model::adapter)), so a switch only changes
    /// which matrices the engine adds; the cached conversation was computed under the old set and is
    /// forgotten when the set changes.
    pub fn set_adapters(&mut self, active: Vec<ActiveAdapter>) -> Result<()> {
        if active == self.adapters {
            return Ok(());
        }
        self.engine.set_adapters(&active)?;
        self.adapters = active;
        self.tokens.clear();
        Ok(())
    }

    pub fn adapters(&self) -> &[ActiveAdapter] {
        &self.adapters
    }

    /// Forgets the conversation (the cache is overwritten from position 0 next time).
    pub fn reset(&mut self) {
        self.tokens.clear();
    }

    /// Tokenizes `prompt` (special tokens recognised; BOS added when the tokenizer config asks for it).
    pub fn encode_prompt(&self, prompt: &str) -> Vec<u32> {
        self.tokenizer.encode_with_specials(prompt)
    }

    /// Generates a continuation of `prompt`. `on_text` receives each complete UTF-8 piece as soon as it is
    /// decoded and returns `false` to stop.
    pub fn generate(
        &mut self,
        prompt: &str,
        opts: &GenerateOptions,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation> {
        let ids = self.encode_prompt(prompt);
        self.generate_from_ids(ids, opts, on_text)
    }

    pub fn generate_from_ids(
        &mut self,
        mut ids: Vec<u32>,
        opts: &GenerateOptions,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation> {
        opts.sampler.check().map_err(Error::Usage)?;
        if ids.is_empty() {
            return Err(Error::Usage("the prompt is empty (no tokens)".into()));
        }
        let ctx = self.engine.context_length();
        if ctx < 2 {
            return Err(Error::Usage(format!(
                "a context of {ctx} token cannot generate: it needs at least 2 (a prompt token and the next)"
            )));
        }
        if ids.len() >= ctx {
            if !opts.truncate_prompt {
                return Err(Error::Usage(format!(
                    "the prompt has {} tokens and the context holds {ctx}: shorten it, raise --ctx, or pass --truncate",
                    ids.len()
                )));
            }
            ids.drain(..ids.len() + 1 - ctx);
            self.tokens.clear();
        }
        // Reuse the cached prefix; at least the last prompt token is run again to get its logits.
        let common = self.tokens.iter().zip(&ids).take_while(|(a, b)| a == b).count().min(ids.len() - 1);
        self.tokens.truncate(common);

        let mut timings = Timings { prompt_tokens: ids.len() - common, ..Default::default() };
        let t0 = Instant::now();
        let mut logits = self.engine.forward(&ids[common..], common, Logits::Last)?;
        timings.prompt_ms = t0.elapsed().as_secs_f64() * 1e3;
        self.tokens.extend_from_slice(&ids[common..]);

        let mut sampler = Sampler::new(opts.sampler.clone());
        let tokenizer = self.tokenizer.clone();
        let mut stream = tokenizer.stream_decoder(true);
        let mut out_ids = Vec::new();
        let mut text = String::new();
        let mut emitted = 0; // bytes of `text` already handed to the callback
        let t1 = Instant::now();
        // Without a repetition penalty (which needs the history, on the host) decoding can stay on the device in
        // chains of steps, greedy or sampled (only ids come back). The device samples as `sampler` would, with
        // the draw numbers `sampler` would use next, and `sampler` then moves past them: a chained run gives
        // the tokens a host-sampled one does. `chained` holds the ids of the current chain still to hand out,
        // with whether the engine has already fed each one (all but the chain's last).
        let can_chain = opts.sampler.repetition_penalty == 1.0;
        let mut chained: VecDeque<(u32, bool)> = VecDeque::new();
        let mut chain_len = FIRST_CHAIN;
        let stop = loop {
            if opts.max_tokens == 0 {
                break StopReason::MaxTokens;
            }
            let (id, fed) = match chained.pop_front() {
                Some(c) => c,
                None => (sampler.sample(&mut logits, &self.tokens), false),
            };
            if !opts.ignore_eos && self.tokenizer.is_stop(id) {
                break StopReason::EndOfSequence;
            }
            out_ids.push(id);
            let checked = text.len();
            if let Some(piece) = stream.push(id) {
                text.push_str(&piece);
            }
            if let Some(at) = find_stop(&text, &opts.stop_strings, checked) {
                text.truncate(at);
                emitted = emitted.min(at);
                on_text(&text[emitted..]);
                break StopReason::StopString;
            }
            // Hold back a tail that could still become a stop string.
            let safe = safe_prefix_len(&text, &opts.stop_strings).max(emitted);
            if safe > emitted {
                let go_on = on_text(&text[emitted..safe]);
                emitted = safe;
                if !go_on {
                    break StopReason::Cancelled;
                }
            }
            // The last token is not run: its logits would go unused.
            if out_ids.len() >= opts.max_tokens {
                break StopReason::MaxTokens;
            }
            if self.tokens.len() + 1 > ctx {
                break StopReason::ContextFull;
            }
            let pos = self.tokens.len();
            if fed {
                self.tokens.push(id);
                continue;
            }
            let steps = (opts.max_tokens - out_ids.len()).min(ctx - pos).min(chain_len);
            if can_chain {
                if let Some(ids) = self.engine.sample_steps(id, pos, steps, &opts.sampler, sampler.draws()) {
                    let ids = ids?;
                    sampler.skip_draws(ids.len() as u32);
                    let last = ids.len().saturating_sub(1);
                    chained.extend(ids.into_iter().enumerate().map(|(i, id)| (id, i < last)));
                    chain_len = (chain_len * 2).min(MAX_CHAIN);
                    self.tokens.push(id);
                    continue;
                }
            }
            logits = self.engine.forward(&[id], pos, Logits::Last)?;
            self.tokens.push(id);
        };
        if stop != StopReason::StopString {
            text.extend(stream.finish());
            // A cancelled caller asked for no more text; the rest stays in `text`.
            if stop != StopReason::Cancelled && emitted < text.len() {
                on_text(&text[emitted..]);
            }
        }
        timings.decode_tokens = out_ids.len();
        timings.decode_ms = t1.elapsed().as_secs_f64() * 1e3;
        Ok(Generation { prompt_ids: ids, output_ids: out_ids, text, stop, timings })
    }
}

/// Where the first stop string starts in `text`, given that `text[..checked]` was searched before (and held
/// none): only the part a new match can touch is searched, so a long generation is not rescanned per token.
pub(super) fn find_stop(text: &str, stops: &[String], checked: usize) -> Option<usize> {
    let longest = stops.iter().map(String::len).max().unwrap_or(0);
    let mut from = checked.min(text.len()).saturating_sub(longest.saturating_sub(1));
    while !text.is_char_boundary(from) {
        from -= 1;
    }
    let tail = &text[from..];
    stops.iter().filter(|s| !s.is_empty()).filter_map(|s| tail.find(s.as_str())).min().map(|at| from + at)
}

/// The length of `text` that cannot be the start of a stop string still being generated.
pub(super) fn safe_prefix_len(text: &str, stops: &[String]) -> usize {
    let mut safe = text.len();
    for s in stops.iter().filter(|s| !s.is_empty()) {
        for k in (1..s.len().min(text.len() + 1)).rev() {
            if text.is_char_boundary(text.len() - k) && s.starts_with(&text[text.len() - k..]) {
                safe = safe.min(text.len() - k);
                break;
            }
        }
    }
    safe
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `(ids, pos)` of every forward call, shared with the test.
    type Calls = std::rc::Rc<std::cell::RefCell<Vec<(Vec<u32>, usize)>>>;

    /// An engine whose logits always favour token `(last id + 1) % vocab`, recording every forward call.
    struct Recorder {
        vocab: usize,
        /// Offer device-side chains.
        chains: bool,
        calls: Calls,
    }

    impl Recorder {
        fn logits(&self, last: u32) -> Vec<f32> {
            let mut logits = vec![0.0; self.vocab];
            logits[(last as usize + 1) % self.vocab] = 10.0;
            logits
        }
    }

    impl Engine for Recorder {
        fn describe(&self) -> String {
            "recorder".into()
        }
        fn context_length(&self) -> usize {
            64
        }
        fn forward(&mut self, ids: &[u32], pos: usize, _: Logits) -> Result<Vec<f32>> {
            self.calls.borrow_mut().push((ids.to_vec(), pos));
            Ok(self.logits(*ids.last().unwrap()))
        }
        /// Samples as a device would: a sampler of its own, from the draw number it is given.
        fn sample_steps(
            &mut self,
            first: u32,
            pos: usize,
            steps: usize,
            opts: &SamplerOptions,
            draw: u32,
        ) -> Option<Result<Vec<u32>>> {
            if !self.chains || opts.repetition_penalty != 1.0 {
                return None;
            }
            self.calls.borrow_mut().push((vec![first; steps], pos));
            let mut device = Sampler::new(opts.clone());
            device.skip_draws(draw);
            let mut id = first;
            let ids = (0..steps)
                .map(|_| {
                    id = device.sample(&mut self.logits(id), &[]);
                    id
                })
                .collect();
            Some(Ok(ids))
        }
    }

    fn tiny_tokenizer() -> Arc<Tokenizer> {
        let vocab: serde_json::Map<String, serde_json::Value> =
            ["a", "b", "c", "d", "e", "f"].iter().enumerate().map(|(i, t)| (t.to_string(), i.into())).collect();
        let json = serde_json::json!({
            "model": {"type": "BPE", "vocab": vocab, "merges": []},
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},
            "decoder": {"type": "ByteLevel"}, "normalizer": null, "added_tokens": []
        });
        Arc::new(Tokenizer::from_hf_json(json.to_string().as_bytes()).unwrap())
    }

    #[test]
    fn a_repeated_prompt_reuses_the_cache_and_keeps_positions_right() {
        let calls = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let engine = Recorder { vocab: 6, chains: false, calls: calls.clone() };
        let mut session = Session::new(Box::new(engine), tiny_tokenizer());
        let opts = GenerateOptions { max_tokens: 2, ignore_eos: true, ..Default::default() };
        let first = session.generate_from_ids(vec![0, 1, 2], &opts, &mut |_| true).unwrap();
        assert_eq!(first.output_ids, vec![3, 4]);
        assert_eq!(session.tokens, vec![0, 1, 2, 3]);
        calls.borrow_mut().clear();
        // The same prompt again: only its last token is run, at its own position, and the answer repeats.
        let second = session.generate_from_ids(vec![0, 1, 2], &opts, &mut |_| true).unwrap();
        assert_eq!(second.output_ids, first.output_ids);
        assert_eq!(calls.borrow()[0], (vec![2], 2));
        assert_eq!(calls.borrow()[1], (vec![3], 3));
        assert_eq!(session.tokens, vec![0, 1, 2, 3]);
        // A longer prompt that extends the conversation runs only the new tokens.
        calls.borrow_mut().clear();
        session.generate_from_ids(vec![0, 1, 2, 3, 4, 5], &opts, &mut |_| true).unwrap();
        assert_eq!(calls.borrow()[0], (vec![4, 5], 4));
    }

    #[test]
    fn stop_string_tail_is_held_back() {
        let stops = vec!["\nUser:".to_string()];
        assert_eq!(safe_prefix_len("hello\nUs", &stops), 5);
        assert_eq!(safe_prefix_len("hello", &stops), 5);
        assert_eq!(find_stop("a\nUser: b", &stops, 0), Some(1));
        assert_eq!(find_stop("abc", &stops, 0), None);
        // Only what a new match can touch is searched: a stop ending in the new text is found, one wholly
        // inside the checked part is not looked for again.
        assert_eq!(find_stop("a\nUser: b", &stops, 6), Some(1));
        assert_eq!(find_stop("a\nUser: b", &stops, 8), None);
        let stops = vec!["é!".to_string(), "xyz".to_string()];
        assert_eq!(find_stop("ééé!", &stops, 5), Some(4));
        assert_eq!(find_stop("ééé!", &stops, 6), Some(4));
    }

    #[test]
    fn device_chains_give_the_same_text_and_leave_the_cache_consistent() {
        let calls = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let mut plain =
            Session::new(Box::new(Recorder { vocab: 6, chains: false, calls: calls.clone() }), tiny_tokenizer());
        let mut chained =
            Session::new(Box::new(Recorder { vocab: 6, chains: true, calls: calls.clone() }), tiny_tokenizer());
        let opts = GenerateOptions { max_tokens: 20, ignore_eos: true, ..Default::default() };
        let a = plain.generate_from_ids(vec![0, 1], &opts, &mut |_| true).unwrap();
        let b = chained.generate_from_ids(vec![0, 1], &opts, &mut |_| true).unwrap();
        assert_eq!(a.output_ids, b.output_ids);
        assert_eq!(a.text, b.text);
        assert_eq!(plain.tokens, chained.tokens);
        assert_eq!(chained.tokens.len(), 2 + 19);
        // A repetition penalty needs every row of logits: no chains then.
        calls.borrow_mut().clear();
        let mut penalised = opts.clone();
        penalised.sampler.repetition_penalty = 1.1;
        chained.reset();
        chained.generate_from_ids(vec![0, 1], &penalised, &mut |_| true).unwrap();
        assert!(calls.borrow().iter().all(|(ids, _)| ids.len() <= 2));
    }

    #[test]
    fn sampled_chains_draw_what_host_sampling_draws() {
        let calls = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let mut plain =
            Session::new(Box::new(Recorder { vocab: 6, chains: false, calls: calls.clone() }), tiny_tokenizer());
        let chained_calls = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let mut chained =
            Session::new(Box::new(Recorder { vocab: 6, chains: true, calls: chained_calls.clone() }), tiny_tokenizer());
        // Temperature 8 flattens the favoured token's lead (10 / 8) so that draws matter.
        let mut opts = GenerateOptions { max_tokens: 40, ignore_eos: true, ..Default::default() };
        opts.sampler = SamplerOptions { temperature: 8.0, top_k: 4, top_p: 0.95, seed: 11, ..Default::default() };
        let a = plain.generate_from_ids(vec![0, 1], &opts, &mut |_| true).unwrap();
        let b = chained.generate_from_ids(vec![0, 1], &opts, &mut |_| true).unwrap();
        assert_eq!(a.output_ids, b.output_ids);
        assert_eq!(plain.tokens, chained.tokens);
        // The chained session took chains (the prompt is its only forward pass), and the tokens are not the
        // greedy ones (each would be the last + 1).
        assert!(chained_calls.borrow().len() > 1 && chained_calls.borrow()[1..].iter().all(|(ids, _)| ids.len() > 1));
        assert!(a.output_ids.windows(2).any(|w| w[1] != (w[0] + 1) % 6), "{:?}", a.output_ids);
        // Another seed, other tokens.
        opts.sampler.seed = 12;
        chained.reset();
        let c = chained.generate_from_ids(vec![0, 1], &opts, &mut |_| true).unwrap();
        assert_ne!(c.output_ids, b.output_ids);
    }
}
