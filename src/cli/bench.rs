//! `omex bench`: prompt processing and generation speed, as llama-bench measures them: `pp` runs a prompt of
//! `-p` tokens from an empty cache; `tg` generates `-n` tokens one at a time from an empty cache. Each is
//! repeated `-r` times after one warm-up run; mean ± standard deviation in tokens per second. An engine that
//! can chain greedy steps on the device (the GPU) generates that way, since that is how `omex run` decodes
//! greedily; `--no-chain` measures one forward (and one logits read-back) per token instead. `--batch B`
//! generates with B sequences at once, one token each per batched forward pass (as `omex serve` decodes), and
//! reports their tokens together per second: the server's decode rate without HTTP, sampling or scheduling.

use super::engine_args::EngineArgs;
use clap::Args;
use omex::backend::{Engine, Logits, SeqChunk, KV_BLOCK_TOKENS};
use omex::runtime::Model;
use omex::sampling::SamplerOptions;
use omex::{Error, Result};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct BenchArgs {
    pub model: PathBuf,
    /// Prompt tokens per prompt-processing run (0: skip)
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    pub n_prompt: usize,
    /// Tokens per generation run (0: skip)
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    pub n_gen: usize,
    /// Timed runs of each test, after one warm-up run (at least 1)
    #[arg(short = 'r', long = "repetitions", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub reps: u32,
    /// Print one JSON object (means, standard deviations and every sample) instead of the table
    #[arg(long)]
    pub json: bool,
    /// Generate with one forward per token even when the engine can chain greedy steps on the device
    #[arg(long)]
    pub no_chain: bool,
    /// Sequences generated together, one token each per batched forward pass (1 to 256); tg then reports
    /// their tokens per second together
    #[arg(short = 'b', long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub batch: u32,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// Mean and sample standard deviation.
fn stats(xs: &[f64]) -> (f64, f64) {
    let mean = xs.iter().sum::<f64>() / xs.len() as f64;
    let var =
        if xs.len() > 1 { xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (xs.len() - 1) as f64 } else { 0.0 };
    (mean, var.sqrt())
}

fn ids_probe(model: &Model) -> u32 {
    tokens(1, model.config.vocab_size)[0]
}

/// Deterministic token ids spread over the vocabulary (the speed does not depend on which).
fn tokens(n: usize, vocab: u32) -> Vec<u32> {
    (0..n as u64).map(|i| ((i * 2_654_435_761 + 17) % vocab as u64) as u32).collect()
}

fn time_tg_unchained(engine: &mut dyn Engine, ids: &[u32]) -> Result<f64> {
    let t = Instant::now();
    for (pos, &id) in ids.iter().enumerate() {
        engine.forward(&[id], pos, Logits::Last)?;
    }
    Ok(ids.len() as f64 / t.elapsed().as_secs_f64())
}

fn time_pp(engine: &mut dyn Engine, ids: &[u32]) -> Result<f64> {
    let t = Instant::now();
    engine.forward(ids, 0, Logits::Last)?;
    Ok(ids.len() as f64 / t.elapsed().as_secs_f64())
}

fn time_tg(engine: &mut dyn Engine, ids: &[u32]) -> Result<f64> {
    let t = Instant::now();
    if let Some(chosen) = engine.sample_steps(ids[0], 0, ids.len(), &SamplerOptions::default(), 0) {
        chosen?;
        return Ok(ids.len() as f64 / t.elapsed().as_secs_f64());
    }
    time_tg_unchained(engine, ids)
}

/// `ids.len()` tokens for each of `batch` sequences, every step one batched pass of one token per sequence
/// (sequence `s` in blocks `s * per_seq..`); their tokens together per second.
fn time_tg_batched(engine: &mut dyn Engine, ids: &[u32], batch: usize) -> Result<f64> {
    let per_seq = ids.len().div_ceil(KV_BLOCK_TOKENS);
    let tables: Vec<Vec<u32>> = (0..batch).map(|s| (0..per_seq).map(|b| (s * per_seq + b) as u32).collect()).collect();
    let t = Instant::now();
    for pos in 0..ids.len() {
        // Each sequence its own token (the speed does not depend on which).
        let step: Vec<u32> = (0..batch).map(|s| ids[(pos + s) % ids.len()]).collect();
        let seqs: Vec<SeqChunk> =
            (0..batch).map(|s| SeqChunk { ids: &step[s..s + 1], pos, blocks: &tables[s], logits: true }).collect();
        engine.forward_batch(&seqs)?;
    }
    Ok((batch * ids.len()) as f64 / t.elapsed().as_secs_f64())
}

/// One timed test: tokens per second of a run over these ids.
type TimedRun<'a> = dyn Fn(&mut dyn Engine, &[u32]) -> Result<f64> + 'a;

pub fn run(args: BenchArgs) -> Result<()> {
    let model = args.engine.load(&args.model)?;
    let ctx = args.n_prompt.max(args.n_gen).max(1);
    let batch = args.batch as usize;
    let mut opts = args.engine.options(Some(ctx));
    if batch > 1 {
        opts.max_sequences = batch;
        opts.kv_tokens = batch * args.n_gen.div_ceil(KV_BLOCK_TOKENS) * KV_BLOCK_TOKENS;
        opts.kv_tokens = opts.kv_tokens.max(ctx);
    }
    let mut engine = model.engine(&opts)?;
    args.engine.apply_adapters(&model, engine.as_mut())?;
    let mut describe = engine.describe();
    let greedy = SamplerOptions::default();
    if batch > 1 {
        match engine.kv_blocks() {
            Some(kv) if kv.max_batch >= batch => describe.push_str(&format!(", tg over {batch} sequences at once")),
            _ => return Err(Error::Usage(format!("--batch {batch}: {describe} cannot run {batch} sequences at once"))),
        }
    } else if args.n_gen > 0 && !args.no_chain && engine.sample_steps(ids_probe(&model), 0, 1, &greedy, 0).is_some() {
        describe.push_str(", tg chained on the device");
    }
    let ids = tokens(ctx, model.config.vocab_size);
    let reps = args.reps as usize;
    let tests = usize::from(args.n_prompt > 0) + usize::from(args.n_gen > 0);
    let bar = super::progress(((reps + 1) * tests) as u64, "warm-up and timed runs");
    let mut measure = |n: usize, f: &TimedRun<'_>| -> Result<Option<(f64, f64, Vec<f64>)>> {
        if n == 0 {
            return Ok(None);
        }
        let mut timed = |label: &str| {
            if let Some(b) = &bar {
                b.set_message(label.to_string());
            }
            let r = f(engine.as_mut(), &ids[..n]);
            if let Some(b) = &bar {
                b.inc(1);
            }
            r
        };
        timed("warm-up")?;
        let samples = (0..reps).map(|i| timed(&format!("run {}/{reps}", i + 1))).collect::<Result<Vec<_>>>()?;
        let (mean, sd) = stats(&samples);
        Ok(Some((mean, sd, samples)))
    };
    let pp = measure(args.n_prompt, &time_pp)?;
    let tg = if batch > 1 {
        measure(args.n_gen, &|e: &mut dyn Engine, ids: &[u32]| time_tg_batched(e, ids, batch))?
    } else {
        measure(args.n_gen, if args.no_chain { &time_tg_unchained } else { &time_tg })?
    };
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if args.json {
        let v = serde_json::json!({
            "model": args.model.display().to_string(), "engine": describe, "kv": opts.kv.name(), "n_prompt": args.n_prompt, "n_gen": args.n_gen,
            "repetitions": reps, "batch": batch,
            "pp_tok_s": pp.as_ref().map(|p| p.0), "pp_sd": pp.as_ref().map(|p| p.1), "pp_samples": pp.as_ref().map(|p| &p.2),
            "tg_tok_s": tg.as_ref().map(|t| t.0), "tg_sd": tg.as_ref().map(|t| t.1), "tg_samples": tg.as_ref().map(|t| &t.2),
        });
        outln!("{v}");
    } else {
        outln!("| model | engine | test | t/s |");
        outln!("|---|---|---|---|");
        let name = args.model.display();
        if let Some((m, sd, _)) = pp {
            outln!("| {name} | {describe} | pp{} | {m:.2} ± {sd:.2} |", args.n_prompt);
        }
        if let Some((m, sd, _)) = tg {
            let test = if batch > 1 { format!("tg{} x{batch}", args.n_gen) } else { format!("tg{}", args.n_gen) };
            outln!("| {name} | {describe} | {test} | {m:.2} ± {sd:.2} |");
        }
    }
    Ok(())
}
