//! Continuous batching on the real model (CPU engine): what a request gets through the scheduler, alone or
//! beside others, is what a plain session gives it; cancellation, preemption and prefix sharing keep that.

mod common;

use futures::executor::block_on;
use futures::StreamExt;
use omex::runtime::scheduler::{Event, Finish, Request, Scheduler, SchedulerOptions, Stream, SubmitError};
use omex::runtime::{BackendChoice, EngineOptions, GenerateOptions, Model, StopReason};
use std::sync::Arc;
use std::time::Duration;

const PROMPTS: [&str; 8] = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three primary colors are",
    "Water boils at a temperature of",
    "My favourite programming language is",
    "1, 2, 3, 4, 5,",
    "The quick brown fox",
];

fn options(kv_tokens: usize) -> EngineOptions {
    EngineOptions {
        backend: BackendChoice::Cpu,
        threads: 2,
        context_length: Some(512),
        kv_tokens,
        ..Default::default()
    }
}

fn model() -> Arc<Model> {
    Arc::new(Model::load(common::smollm2_omex("keep")).expect("model"))
}

fn start(model: &Arc<Model>, kv_tokens: usize, opts: SchedulerOptions) -> Scheduler {
    let m = model.clone();
    Scheduler::start(move || m.engine(&options(kv_tokens)), model.tokenizer.clone(), opts).expect("scheduler")
}

/// Collects a stream: the text and how it finished.
fn collect(mut s: Stream) -> (String, Finish) {
    let mut text = String::new();
    while let Some(e) = block_on(s.next()) {
        match e {
            Event::Text(t) => text.push_str(&t),
            Event::Done(f) => return (text, f),
            Event::Error(e) => panic!("request failed: {e}"),
        }
    }
    panic!("the stream ended without Done");
}

fn greedy(model: &Model, prompt: &str, n: usize) -> (String, Vec<u32>) {
    let g = greedy_full(model, prompt, n);
    (g.0, g.1)
}

fn greedy_full(model: &Model, prompt: &str, n: usize) -> (String, Vec<u32>, StopReason) {
    let mut session = model.session(&options(0)).unwrap();
    let opts = GenerateOptions { max_tokens: n, ..Default::default() };
    let g = session.generate(prompt, &opts, &mut |_| true).unwrap();
    (g.text, g.output_ids, g.stop)
}

fn request(model: &Model, prompt: &str, n: usize) -> Request {
    Request { max_tokens: Some(n), ..Request::new(model.tokenizer.encode_with_specials(prompt)) }
}

#[test]
fn batched_greedy_equals_a_lone_session() {
    let model = model();
    let want: Vec<_> = PROMPTS.iter().map(|p| greedy_full(&model, p, 24)).collect();
    let sched = start(&model, 8 * 512, SchedulerOptions { parallel: 8, ..Default::default() });
    // Alone.
    let (text, f) = collect(sched.submit(request(&model, PROMPTS[0], 24)).unwrap());
    assert_eq!((text.as_str(), &f.ids), (want[0].0.as_str(), &want[0].1));
    // Eight at once, the prompts of different lengths reading in while others decode.
    let streams: Vec<_> = PROMPTS.iter().map(|p| sched.submit(request(&model, p, 24)).unwrap()).collect();
    for (i, s) in streams.into_iter().enumerate() {
        let (text, f) = collect(s);
        assert_eq!(f.ids, want[i].1, "prompt {i} {:?}", PROMPTS[i]);
        assert_eq!(text, want[i].0);
        assert_eq!(f.reason, want[i].2);
        assert_eq!(f.completion_tokens, want[i].1.len());
    }
    let m = sched.metrics();
    assert!(
        m.step_sequences.load(std::sync::atomic::Ordering::Relaxed)
            > m.steps.load(std::sync::atomic::Ordering::Relaxed)
    );
}

#[test]
fn too_few_blocks_preempt_and_recompute_without_changing_the_text() {
    let model = model();
    let want: Vec<_> = PROMPTS[..4].iter().map(|p| greedy(&model, p, 40)).collect();
    // Room for one context (512 positions, 32 blocks) while four sequences of ~50 positions each run: some are
    // preempted when the blocks run out... so give less: 6 blocks of 16 = 96 positions.
    let m2 = model.clone();
    let opts = EngineOptions { context_length: Some(96), ..options(96) };
    let sched =
        Scheduler::start(move || m2.engine(&opts), model.tokenizer.clone(), SchedulerOptions::default()).unwrap();
    let streams: Vec<_> = PROMPTS[..4].iter().map(|p| sched.submit(request(&model, p, 40)).unwrap()).collect();
    for (i, s) in streams.into_iter().enumerate() {
        let (text, f) = collect(s);
        assert_eq!(f.ids, want[i].1, "prompt {i}");
        assert_eq!(text, want[i].0);
    }
    assert!(sched.metrics().preempted.load(std::sync::atomic::Ordering::Relaxed) > 0, "nothing was preempted");
}

#[test]
fn a_shared_prompt_start_is_reused_and_gives_the_same_tokens() {
    let model = model();
    let long = "You are a helpful assistant. Answer briefly and truthfully, and say so when you do not know. \
                Question: what is the capital of France? Answer:";
    let want = greedy(&model, long, 12);
    let sched = start(&model, 4 * 512, SchedulerOptions::default());
    let (_, first) = collect(sched.submit(request(&model, long, 12)).unwrap());
    let (text, second) = collect(sched.submit(request(&model, long, 12)).unwrap());
    assert_eq!(first.cached_tokens, 0);
    let prompt = model.tokenizer.encode_with_specials(long).len();
    assert_eq!(second.cached_tokens, (prompt - 1) / 16 * 16, "whole blocks but the last token's");
    assert!(second.cached_tokens > 0);
    assert_eq!((text, second.ids), want);
}

#[test]
fn stop_strings_cancellation_and_refusals() {
    let model = model();
    let sched = start(&model, 2 * 512, SchedulerOptions { parallel: 2, queue: 3, ..Default::default() });
    let (full, _) = greedy(&model, PROMPTS[2], 24);
    // A stop string cuts the text where it starts.
    let word = full.split_whitespace().nth(3).unwrap().to_string();
    let req = Request { stop: vec![word.clone()], ..request(&model, PROMPTS[2], 24) };
    let (text, f) = collect(sched.submit(req).unwrap());
    assert_eq!(f.reason, StopReason::StopString);
    assert_eq!(text, full[..full.find(&word).unwrap()]);
    // A dropped stream is cancelled and its place is freed: later requests still run.
    let s = sched.submit(request(&model, PROMPTS[1], 400)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    drop(s);
    let (_, f) = collect(sched.submit(request(&model, PROMPTS[0], 4)).unwrap());
    assert_eq!(f.completion_tokens, 4);
    // Refusals.
    assert!(matches!(sched.submit(Request::new(vec![])), Err(SubmitError::Invalid(_))));
    assert!(matches!(sched.submit(Request::new(vec![1; 512])), Err(SubmitError::TooLong { .. })));
    assert!(matches!(sched.submit(Request::new(vec![u32::MAX])), Err(SubmitError::Invalid(_))));
    let mut bad = request(&model, PROMPTS[0], 4);
    bad.sampler.temperature = f32::NAN;
    assert!(matches!(sched.submit(bad), Err(SubmitError::Invalid(_))));
    // Shutdown cancels what is in flight within the grace and refuses the rest.
    let s = sched.submit(request(&model, PROMPTS[3], 400)).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let t = std::time::Instant::now();
    sched.shutdown(Duration::from_millis(300));
    assert!(t.elapsed() < Duration::from_secs(5));
    let (_, f) = collect(s);
    assert_eq!(f.reason, StopReason::Cancelled);
    assert!(matches!(sched.submit(request(&model, PROMPTS[0], 4)), Err(SubmitError::ShuttingDown)));
}
