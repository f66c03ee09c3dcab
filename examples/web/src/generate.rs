//! The generation loop of the page: the prompt's new tokens (the cached prefix is reused), then one token at
//! a time, each handed to the page as soon as it is sampled. It is the loop of `omex::runtime::Session`
//! made async: the engine's forward pass is awaited, and between tokens the loop gives the browser a turn
//! (to paint, to take a click on Stop) through [`Host::pause`].

use crate::engine::WebEngine;
use omex::backend::Logits;
use omex::runtime::StopReason;
use omex::sampling::{Sampler, SamplerOptions};
use omex::tokenizer::Tokenizer;
use omex::{Error, Result};

/// An engine whose forward pass is awaited (see `omex::backend::Engine::forward`).
pub(crate) trait Forward {
    fn context_length(&self) -> usize;
    async fn forward(&mut self, ids: &[u32], pos: usize, logits: Logits) -> Result<Vec<f32>>;
}

impl Forward for WebEngine {
    fn context_length(&self) -> usize {
        WebEngine::context_length(self)
    }

    async fn forward(&mut self, ids: &[u32], pos: usize, logits: Logits) -> Result<Vec<f32>> {
        WebEngine::forward(self, ids, pos, logits).await
    }
}

/// What the loop needs from its surroundings: a clock, a turn for the event loop, and the token sink.
pub(crate) trait Host {
    /// Milliseconds from any fixed origin.
    fn now_ms(&self) -> f64;
    /// Waits until the page has had a chance to run (a macrotask, so it can paint).
    async fn pause(&self);
    /// One sampled token and the text it completed (empty while a UTF-8 character is still incomplete).
    /// Returns `false` to stop.
    fn on_token(&mut self, token: &TokenEvent) -> bool;
    /// Whether the page asked to stop (checked after each pause, before the next forward pass).
    fn cancelled(&self) -> bool;
}

#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenEvent {
    /// `None` for the text the detokenizer still held when generation ended.
    pub id: Option<u32>,
    pub piece: String,
    /// 0 for the first generated token.
    pub index: usize,
    pub prompt_ms: f64,
    /// Time spent in decode steps so far, and how many: `decode_steps * 1000 / decode_ms` is tok/s.
    pub decode_ms: f64,
    pub decode_steps: usize,
}

#[derive(Clone, Debug)]
pub struct Request {
    pub max_tokens: usize,
    pub sampler: SamplerOptions,
    /// Keep going past end-of-sequence tokens.
    pub ignore_eos: bool,
}

#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Output {
    pub prompt_ids: Vec<u32>,
    pub output_ids: Vec<u32>,
    pub text: String,
    pub stop: &'static str,
    /// Prompt tokens run (those not already in the cache), and the time they took.
    pub prompt_tokens: usize,
    pub prompt_ms: f64,
    /// Decode steps (one forward pass of one token each; the first token comes from the prompt's pass).
    pub decode_steps: usize,
    pub decode_ms: f64,
    pub prompt_tok_s: f64,
    pub decode_tok_s: f64,
}

pub fn stop_name(s: StopReason) -> &'static str {
    match s {
        StopReason::MaxTokens => "max_tokens",
        StopReason::EndOfSequence => "end_of_sequence",
        StopReason::StopString => "stop_string",
        StopReason::ContextFull => "context_full",
        StopReason::Cancelled => "cancelled",
    }
}

fn rate(n: usize, ms: f64) -> f64 {
    if ms > 0.0 {
        n as f64 * 1000.0 / ms
    } else {
        0.0
    }
}

/// The tokens whose keys and values the engine's cache holds, so a follow-up prompt that extends the last
/// one runs only its new part.
#[derive(Default)]
pub struct Conversation {
    pub tokens: Vec<u32>,
}

impl Conversation {
    pub(crate) async fn generate(
        &mut self,
        engine: &mut impl Forward,
        tokenizer: &Tokenizer,
        ids: Vec<u32>,
        req: &Request,
        host: &mut impl Host,
    ) -> Result<Output> {
        req.sampler.check().map_err(Error::Usage)?;
        if ids.is_empty() {
            return Err(Error::Usage("the prompt is empty (no tokens)".into()));
        }
        let ctx = engine.context_length();
        if ids.len() >= ctx {
            return Err(Error::Usage(format!(
                "the prompt has {} tokens and the context holds {ctx}: shorten it",
                ids.len()
            )));
        }
        // Reuse the cached prefix; at least the last prompt token runs again to give its logits.
        let common = self.tokens.iter().zip(&ids).take_while(|(a, b)| a == b).count().min(ids.len() - 1);
        self.tokens.truncate(common);

        let t0 = host.now_ms();
        let mut logits = engine.forward(&ids[common..], common, Logits::Last).await?;
        let prompt_ms = host.now_ms() - t0;
        self.tokens.extend_from_slice(&ids[common..]);

        let mut sampler = Sampler::new(req.sampler.clone());
        let mut stream = tokenizer.stream_decoder(true);
        let mut out_ids = Vec::new();
        let mut text = String::new();
        let (mut decode_ms, mut decode_steps) = (0.0, 0);
        let stop = loop {
            let id = sampler.sample(&mut logits, &self.tokens);
            if !req.ignore_eos && tokenizer.is_stop(id) {
                break StopReason::EndOfSequence;
            }
            out_ids.push(id);
            let piece = stream.push(id).unwrap_or_default();
            text.push_str(&piece);
            let event =
                TokenEvent { id: Some(id), piece, index: out_ids.len() - 1, prompt_ms, decode_ms, decode_steps };
            if !host.on_token(&event) {
                break StopReason::Cancelled;
            }
            if out_ids.len() >= req.max_tokens {
                break StopReason::MaxTokens;
            }
            if self.tokens.len() + 1 > ctx {
                break StopReason::ContextFull;
            }
            host.pause().await;
            if host.cancelled() {
                break StopReason::Cancelled;
            }
            let t = host.now_ms();
            let pos = self.tokens.len();
            logits = engine.forward(&[id], pos, Logits::Last).await?;
            self.tokens.push(id);
            decode_ms += host.now_ms() - t;
            decode_steps += 1;
        };
        if let Some(rest) = stream.finish() {
            text.push_str(&rest);
            let event = TokenEvent { id: None, piece: rest, index: out_ids.len(), prompt_ms, decode_ms, decode_steps };
            host.on_token(&event);
        }
        Ok(Output {
            prompt_tokens: ids.len() - common,
            prompt_tok_s: rate(ids.len() - common, prompt_ms),
            decode_tok_s: rate(decode_steps, decode_ms),
            prompt_ids: ids,
            output_ids: out_ids,
            text,
            stop: stop_name(stop),
            prompt_ms,
            decode_steps,
            decode_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in engine whose "cache" is the token list it was fed: the next token is a function of every
    /// token before it, so a wrong position or a stale cache entry changes the output.
    struct Fake {
        vocab: usize,
        cache: Vec<u32>,
        calls: Vec<(usize, usize)>,
    }

    impl Forward for Fake {
        fn context_length(&self) -> usize {
            64
        }

        async fn forward(&mut self, ids: &[u32], pos: usize, _logits: Logits) -> Result<Vec<f32>> {
            assert!(pos <= self.cache.len(), "position {pos} leaves a gap after {} cached tokens", self.cache.len());
            self.calls.push((pos, ids.len()));
            self.cache.truncate(pos);
            self.cache.extend_from_slice(ids);
            let h = self.cache.iter().fold(7u64, |h, &t| h.wrapping_mul(31).wrapping_add(t as u64));
            let mut logits = vec![0.0; self.vocab];
            logits[300 + (h % 200) as usize] = 1.0;
            Ok(logits)
        }
    }

    struct Quiet {
        t: f64,
        stop_after: usize,
        seen: Vec<u32>,
    }

    impl Host for Quiet {
        fn now_ms(&self) -> f64 {
            self.t
        }
        async fn pause(&self) {}
        fn on_token(&mut self, token: &TokenEvent) -> bool {
            self.t += 1.0;
            self.seen.extend(token.id);
            self.seen.len() < self.stop_after
        }
        fn cancelled(&self) -> bool {
            false
        }
    }

    fn run(
        conv: &mut Conversation,
        engine: &mut Fake,
        tok: &Tokenizer,
        prompt: &[u32],
        n: usize,
        stop_after: usize,
    ) -> Output {
        let req = Request { max_tokens: n, sampler: SamplerOptions::default(), ignore_eos: true };
        let mut host = Quiet { t: 0.0, stop_after, seen: Vec::new() };
        let out = futures::executor::block_on(conv.generate(engine, tok, prompt.to_vec(), &req, &mut host)).unwrap();
        assert_eq!(host.seen, out.output_ids, "every token reaches the page, in order");
        out
    }

    #[test]
    fn a_repeated_prompt_reuses_the_cache_and_gives_the_same_tokens() {
        let tok = Tokenizer::from_hf_json(include_bytes!("../../../tests/data/tokenizer/gpt2_tokenizer.json")).unwrap();
        let fake = || Fake { vocab: tok.vocab_size(), cache: Vec::new(), calls: Vec::new() };
        let prompt = [10, 20, 30, 40, 50];
        let (mut conv, mut engine) = (Conversation::default(), fake());
        let first = run(&mut conv, &mut engine, &tok, &prompt, 6, usize::MAX);
        assert_eq!(first.output_ids.len(), 6);
        assert_eq!(first.stop, "max_tokens");
        assert_eq!((first.prompt_tokens, first.decode_steps), (5, 5), "no forward pass for the unused last token");
        assert_eq!(engine.calls[0], (0, 5));
        assert_eq!(conv.tokens.len(), 10, "the cache holds the prompt and the tokens fed back");

        engine.calls.clear();
        let again = run(&mut conv, &mut engine, &tok, &prompt, 6, usize::MAX);
        assert_eq!(engine.calls[0], (4, 1), "only the last prompt token runs again");
        assert_eq!(again.prompt_tokens, 1);
        assert_eq!(again.output_ids, first.output_ids);

        // A longer prompt that extends the conversation runs only its new tokens.
        let mut longer = prompt.to_vec();
        longer.extend_from_slice(&first.output_ids[..3]);
        engine.calls.clear();
        let cont = run(&mut conv, &mut engine, &tok, &longer, 3, usize::MAX);
        assert_eq!(engine.calls[0], (7, 1));
        let fresh = run(&mut Conversation::default(), &mut fake(), &tok, &longer, 3, usize::MAX);
        assert_eq!(cont.output_ids, fresh.output_ids);
    }

    #[test]
    fn the_page_can_stop_generation() {
        let tok = Tokenizer::from_hf_json(include_bytes!("../../../tests/data/tokenizer/gpt2_tokenizer.json")).unwrap();
        let mut engine = Fake { vocab: tok.vocab_size(), cache: Vec::new(), calls: Vec::new() };
        let out = run(&mut Conversation::default(), &mut engine, &tok, &[1, 2, 3], 50, 2);
        assert_eq!(out.stop, "cancelled");
        assert_eq!(out.output_ids.len(), 2);
        assert_eq!(engine.calls.len(), 2, "the prompt and one decode step, nothing after the stop");
    }
}
