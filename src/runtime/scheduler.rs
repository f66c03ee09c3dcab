//! Continuous batching: many requests share one engine. A scheduler thread owns the engine; each step it runs
//! every active sequence's next tokens in one [`Engine::forward_batch`] pass (a decoding sequence its one new
//! token, a sequence still reading its prompt a chunk of it), samples each sequence that reached its end, and
//! streams the text to its caller. New requests join between steps; a prompt is read in chunks so a long one
//! does not stall the sequences decoding beside it.
//!
//! The KV cache is paged ([`BlockPool`]): a sequence takes blocks as it grows, a prompt that starts like an
//! earlier one takes that one's blocks instead of computing them, and when the blocks run out the youngest
//! sequence gives its blocks back and is computed again later (its text so far is kept, so the caller sees
//! nothing of it but a pause). A caller that drops its [`Stream`] cancels its request at the next step.
//!
//! ```no_run
//! # use omex::runtime::{Model, EngineOptions, scheduler::{Scheduler, SchedulerOptions, Request, Event}};
//! let model = Model::load("model.omex")?;
//! let tok = model.tokenizer.clone();
//! let opts = EngineOptions { kv_tokens: 4 * 4096, ..Default::default() };
//! let sched = Scheduler::start(move || model.engine(&opts), tok.clone(), SchedulerOptions::default())?;
//! let mut stream = sched.submit(Request::new(tok.encode_with_specials("Hello")))?;
//! while let Some(event) = futures::executor::block_on(futures::StreamExt::next(&mut stream)) {
//!     match event {
//!         Event::Text(t) => print!("{t}"),
//!         Event::Done(f) => println!("\n{:?}, {} tokens", f.reason, f.completion_tokens),
//!         Event::Error(e) => eprintln!("{e}"),
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use super::session::{find_stop, safe_prefix_len, StopReason};
use crate::backend::lora::ActiveAdapter;
use crate::backend::{Engine, KvBlocks, SeqChunk, KV_BLOCK_TOKENS};
use crate::error::{Error, Result};
use crate::memory::kv_blocks::BlockPool;
use crate::sampling::{Sampler, SamplerOptions};
use crate::tokenizer::{StreamDecoder, Tokenizer};
use futures::channel::mpsc;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How the scheduler shares its engine.
#[derive(Clone, Debug)]
pub struct SchedulerOptions {
    /// Sequences decoded together at most.
    pub parallel: usize,
    /// Requests waiting for a place at most; more are refused ([`SubmitError::QueueFull`]).
    pub queue: usize,
    /// Prompt tokens read per step at most (over all sequences), so decoding sequences wait at most one such
    /// chunk for their next token.
    pub prefill_chunk: usize,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions { parallel: 8, queue: 64, prefill_chunk: 256 }
    }
}

/// One generation request, prompt already tokenized.
#[derive(Clone, Debug)]
pub struct Request {
    pub prompt: Vec<u32>,
    /// Tokens to generate at most; `None`: until the context is full.
    pub max_tokens: Option<usize>,
    pub sampler: SamplerOptions,
    /// Generation stops when the text contains one of these (left out of the text).
    pub stop: Vec<String>,
    pub ignore_eos: bool,
    /// The LoRA adapters the request runs with (empty: the base). Requests with different sets share the
    /// engine by turns: each step runs the sequences of one set (round robin over the sets present).
    pub adapters: Vec<ActiveAdapter>,
}

impl Request {
    pub fn new(prompt: Vec<u32>) -> Request {
        Request {
            prompt,
            max_tokens: None,
            sampler: SamplerOptions::default(),
            stop: Vec::new(),
            ignore_eos: false,
            adapters: Vec::new(),
        }
    }
}

/// The prefix-cache space of an adapter set: 0 for the base, else a hash of the adapters' names and scales.
fn adapter_space(set: &[ActiveAdapter]) -> u64 {
    use std::hash::{Hash, Hasher};
    if set.is_empty() {
        return 0;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for a in set {
        (std::sync::Arc::as_ptr(&a.adapter) as usize, a.scale.to_bits()).hash(&mut h);
    }
    h.finish() | 1
}

/// What a request's stream carries: text pieces as they are decoded, then one `Done` (or one `Error`).
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Text(String),
    Done(Finish),
    Error(String),
}

/// How a request ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Finish {
    pub reason: StopReason,
    pub prompt_tokens: usize,
    /// Prompt tokens whose cache came from an earlier request with the same start.
    pub cached_tokens: usize,
    pub completion_tokens: usize,
    /// The generated token ids (without an end-of-sequence token; a stop string's tokens included).
    pub ids: Vec<u32>,
}

/// Why a request was not taken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("{0}")]
    Invalid(String),
    #[error("the prompt has {prompt} tokens and the context holds {context}: shorten it")]
    TooLong { prompt: usize, context: usize },
    #[error("the server is busy: {0} requests are already waiting")]
    QueueFull(usize),
    #[error("the server is shutting down")]
    ShuttingDown,
}

/// A request's events; dropping it cancels the request.
pub type Stream = mpsc::UnboundedReceiver<Event>;

/// Counters for `/metrics`, updated by the scheduler thread.
#[derive(Debug, Default)]
pub struct Metrics {
    pub requests: AtomicU64,
    pub finished: AtomicU64,
    pub cancelled: AtomicU64,
    pub failed: AtomicU64,
    pub rejected: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub cached_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    pub steps: AtomicU64,
    /// Sum of the sequences of every step (the mean batch is this over `steps`).
    pub step_sequences: AtomicU64,
    pub preempted: AtomicU64,
    pub queued: AtomicU64,
    pub active: AtomicU64,
    pub last_batch: AtomicU64,
    pub kv_blocks_used: AtomicU64,
    pub kv_blocks_total: AtomicU64,
    /// Time to first token, as a histogram of [`TTFT_BUCKETS_MS`] (cumulative counts are computed when read).
    pub ttft: Mutex<Histogram>,
}

/// Upper bounds (ms) of the time-to-first-token histogram's buckets.
pub const TTFT_BUCKETS_MS: [f64; 12] =
    [5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0];

#[derive(Clone, Debug, Default)]
pub struct Histogram {
    /// Observations per bucket of [`TTFT_BUCKETS_MS`], plus one past the last.
    pub counts: [u64; TTFT_BUCKETS_MS.len() + 1],
    pub sum_ms: f64,
    pub count: u64,
}

impl Histogram {
    fn observe(&mut self, ms: f64) {
        let i = TTFT_BUCKETS_MS.iter().position(|&b| ms <= b).unwrap_or(TTFT_BUCKETS_MS.len());
        self.counts[i] += 1;
        self.sum_ms += ms;
        self.count += 1;
    }

    /// The smallest bucket bound under which a fraction `q` of the observations fall (`None`: no data, or
    /// past the last bucket).
    pub fn quantile_bound_ms(&self, q: f64) -> Option<f64> {
        let want = (q * self.count as f64).ceil() as u64;
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= want.max(1) && self.count > 0 {
                return TTFT_BUCKETS_MS.get(i).copied();
            }
        }
        None
    }
}

enum Msg {
    Submit(Box<Pending>),
    Shutdown(Instant),
}

struct Pending {
    req: Request,
    tx: mpsc::UnboundedSender<Event>,
    at: Instant,
}

/// The handle to the scheduler thread. Dropping it shuts the thread down (in-flight requests are cancelled).
pub struct Scheduler {
    tx: Mutex<std::sync::mpsc::Sender<Msg>>,
    metrics: Arc<Metrics>,
    closing: Arc<AtomicBool>,
    context: usize,
    vocab: u32,
    queue: usize,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Scheduler {
    /// Starts the scheduler thread: `make_engine` runs on it (engines need not be `Send`) and must give an
    /// engine with a paged cache ([`Engine::kv_blocks`]). Returns once the engine is loaded, or its error.
    pub fn start<F>(make_engine: F, tokenizer: Arc<Tokenizer>, opts: SchedulerOptions) -> Result<Scheduler>
    where
        F: FnOnce() -> Result<Box<dyn Engine>> + Send + 'static,
    {
        if opts.parallel == 0 || opts.prefill_chunk == 0 {
            return Err(Error::Usage("--parallel and the prefill chunk must be at least 1".into()));
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let metrics = Arc::new(Metrics::default());
        let closing = Arc::new(AtomicBool::new(false));
        let (m, o) = (metrics.clone(), opts.clone());
        let tokenizer_vocab = tokenizer.vocab_size() as u32;
        let thread = std::thread::Builder::new()
            .name("omex-scheduler".into())
            .spawn(move || {
                let engine = match make_engine() {
                    Ok(e) => e,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let Some(kv) = engine.kv_blocks() else {
                    let msg = format!("{} cannot batch sequences", engine.describe());
                    let _ = ready_tx.send(Err(Error::Unsupported(msg)));
                    return;
                };
                let context = engine.context_length();
                let _ = ready_tx.send(Ok((context, engine.describe())));
                Loop::new(engine, kv, &tokenizer, o, m).run(rx);
            })
            .map_err(|e| Error::Usage(format!("cannot start the scheduler thread: {e}")))?;
        let (context, describe) = match ready_rx.recv() {
            Ok(r) => r?,
            Err(_) => return Err(Error::Unsupported("the scheduler thread stopped while loading".into())),
        };
        log::info!("scheduler: {describe}, {} sequences at once, context {context}", opts.parallel);
        let vocab = tokenizer_vocab;
        Ok(Scheduler {
            tx: Mutex::new(tx),
            metrics,
            closing,
            context,
            vocab,
            queue: opts.queue,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Tokens one sequence's cache holds.
    pub fn context_length(&self) -> usize {
        self.context
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Queues a request; its events arrive on the returned stream.
    pub fn submit(&self, req: Request) -> std::result::Result<Stream, SubmitError> {
        let refuse = |e: SubmitError| {
            self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
            Err(e)
        };
        if self.closing.load(Ordering::SeqCst) {
            return refuse(SubmitError::ShuttingDown);
        }
        if req.prompt.is_empty() {
            return refuse(SubmitError::Invalid("the prompt is empty (no tokens)".into()));
        }
        if let Some(&id) = req.prompt.iter().find(|&&id| id >= self.vocab) {
            return refuse(SubmitError::Invalid(format!("token id {id} is outside the vocabulary")));
        }
        if req.prompt.len() >= self.context {
            return refuse(SubmitError::TooLong { prompt: req.prompt.len(), context: self.context });
        }
        if let Err(e) = req.sampler.check() {
            return refuse(SubmitError::Invalid(e));
        }
        // Check and count in one step: two callers at once cannot both take the last place.
        let queue = self.queue as u64;
        let taken =
            self.metrics.queued.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |q| (q < queue).then_some(q + 1));
        if taken.is_err() {
            return refuse(SubmitError::QueueFull(self.queue));
        }
        let (tx, rx) = mpsc::unbounded();
        let sent = self.tx.lock().expect("scheduler sender").send(Msg::Submit(Box::new(Pending {
            req,
            tx,
            at: Instant::now(),
        })));
        if sent.is_err() {
            self.metrics.queued.fetch_sub(1, Ordering::SeqCst);
            return refuse(SubmitError::ShuttingDown);
        }
        self.metrics.requests.fetch_add(1, Ordering::Relaxed);
        Ok(rx)
    }

    /// Stops taking requests, lets the ones in flight run for at most `grace`, cancels the rest (their
    /// streams end with `Done` and [`StopReason::Cancelled`]) and waits for the thread.
    pub fn shutdown(&self, grace: Duration) {
        self.closing.store(true, Ordering::SeqCst);
        let _ = self.tx.lock().expect("scheduler sender").send(Msg::Shutdown(Instant::now() + grace));
        if let Some(t) = self.thread.lock().expect("scheduler thread").take() {
            let _ = t.join();
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.shutdown(Duration::ZERO);
    }
}

/// A request on its way through the scheduler.
struct Seq<'t> {
    req: Request,
    tx: mpsc::UnboundedSender<Event>,
    at: Instant,
    /// Admission order (the youngest is preempted first).
    admitted: u64,
    /// Prompt then generated tokens.
    tokens: Vec<u32>,
    /// Positions whose keys and values the cache holds.
    computed: usize,
    /// Cache blocks (empty while waiting).
    blocks: Vec<u32>,
    /// Whole blocks published so far.
    published: usize,
    cached: usize,
    max_tokens: usize,
    sampler: Sampler,
    decoder: StreamDecoder<'t>,
    text: String,
    /// Bytes of `text` sent.
    sent: usize,
    first_token: bool,
}

impl Seq<'_> {
    fn generated(&self) -> usize {
        self.tokens.len() - self.req.prompt.len()
    }

    /// Ends the request: the rest of the text, then `Done`.
    fn finish(mut self, reason: StopReason, pool: &mut BlockPool, m: &Metrics) {
        pool.release(&self.blocks);
        if reason != StopReason::StopString && reason != StopReason::Cancelled {
            self.text.extend(self.decoder.finish());
            if self.sent < self.text.len() {
                let _ = self.tx.unbounded_send(Event::Text(self.text[self.sent..].to_string()));
            }
        }
        let counter = match reason {
            StopReason::Cancelled => &m.cancelled,
            _ => &m.finished,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let prompt = self.req.prompt.len();
        let ids = self.tokens[prompt..].to_vec();
        let f = Finish { reason, prompt_tokens: prompt, cached_tokens: self.cached, completion_tokens: ids.len(), ids };
        let _ = self.tx.unbounded_send(Event::Done(f));
    }
}

struct Loop<'t> {
    engine: Box<dyn Engine>,
    kv: KvBlocks,
    tok: &'t Tokenizer,
    opts: SchedulerOptions,
    m: Arc<Metrics>,
    pool: BlockPool,
    waiting: VecDeque<Seq<'t>>,
    active: Vec<Seq<'t>>,
    admitted: u64,
    deadline: Option<Instant>,
    /// The engine's active adapter set, and the round-robin turn over the sets of the active sequences.
    adapters: Vec<ActiveAdapter>,
    turn: usize,
}

impl<'t> Loop<'t> {
    fn new(engine: Box<dyn Engine>, kv: KvBlocks, tok: &'t Tokenizer, opts: SchedulerOptions, m: Arc<Metrics>) -> Self {
        m.kv_blocks_total.store(kv.blocks as u64, Ordering::Relaxed);
        Loop {
            engine,
            kv,
            tok,
            opts,
            m,
            pool: BlockPool::new(kv.blocks, KV_BLOCK_TOKENS),
            waiting: VecDeque::new(),
            active: Vec::new(),
            admitted: 0,
            deadline: None,
            adapters: Vec::new(),
            turn: 0,
        }
    }

    fn run(mut self, rx: std::sync::mpsc::Receiver<Msg>) {
        loop {
            let idle = self.active.is_empty() && self.waiting.is_empty();
            if idle && self.deadline.is_some() {
                return;
            }
            // Wait for work when there is none; otherwise take what has arrived and go on.
            let first = match idle {
                true => match rx.recv() {
                    Ok(m) => Some(m),
                    Err(_) => return,
                },
                false => None,
            };
            for msg in first.into_iter().chain(std::iter::from_fn(|| rx.try_recv().ok())) {
                match msg {
                    Msg::Submit(p) => self.intake(*p),
                    Msg::Shutdown(at) => self.deadline = Some(at),
                }
            }
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                for s in self.active.drain(..).chain(self.waiting.drain(..)) {
                    s.finish(StopReason::Cancelled, &mut self.pool, &self.m);
                }
                self.publish_gauges();
                return;
            }
            self.drop_cancelled();
            self.admit();
            self.publish_gauges();
            if let Err(e) = self.step() {
                // The engine failed: every request in the step gets the error; the scheduler keeps going.
                log::error!("forward pass failed: {e}");
                for s in self.active.drain(..) {
                    self.pool.release(&s.blocks);
                    self.m.failed.fetch_add(1, Ordering::Relaxed);
                    let _ = s.tx.unbounded_send(Event::Error(e.to_string()));
                }
            }
            self.publish_gauges();
        }
    }

    fn intake(&mut self, p: Pending) {
        let ctx = self.engine.context_length();
        let room = ctx - p.req.prompt.len();
        let max_tokens = p.req.max_tokens.unwrap_or(room).min(room);
        let seq = Seq {
            sampler: Sampler::new(p.req.sampler.clone()),
            tokens: p.req.prompt.clone(),
            req: p.req,
            tx: p.tx,
            at: p.at,
            admitted: 0,
            computed: 0,
            blocks: Vec::new(),
            published: 0,
            cached: 0,
            max_tokens,
            decoder: self.tok.stream_decoder(true),
            text: String::new(),
            sent: 0,
            first_token: false,
        };
        self.waiting.push_back(seq);
    }

    fn publish_gauges(&self) {
        let m = &self.m;
        m.queued.store(self.waiting.len() as u64, Ordering::SeqCst);
        m.active.store(self.active.len() as u64, Ordering::Relaxed);
        m.kv_blocks_used.store((self.pool.total() - self.pool.free()) as u64, Ordering::Relaxed);
    }

    /// Frees the sequences whose caller went away.
    fn drop_cancelled(&mut self) {
        let (gone, kept): (Vec<_>, Vec<_>) = self.active.drain(..).partition(|s| s.tx.is_closed());
        self.active = kept;
        let (gone_w, kept_w): (Vec<_>, Vec<_>) = self.waiting.drain(..).partition(|s| s.tx.is_closed());
        self.waiting = kept_w.into();
        for s in gone.into_iter().chain(gone_w) {
            s.finish(StopReason::Cancelled, &mut self.pool, &self.m);
        }
    }

    /// Moves waiting sequences into the batch while there are places and blocks for their prompts.
    fn admit(&mut self) {
        let bt = KV_BLOCK_TOKENS;
        while self.active.len() < self.opts.parallel {
            let Some(mut s) = self.waiting.pop_front() else { break };
            // Whole blocks of an earlier identical start are taken as they are; the last token is always
            // computed (its logits are needed).
            let shared =
                self.pool.share_prefix_in(adapter_space(&s.req.adapters), &s.tokens, (s.tokens.len() - 1) / bt);
            let need = self.pool.blocks_for(s.tokens.len() + 1) - shared.len();
            if need > self.pool.free() && !self.active.is_empty() {
                self.pool.release(&shared);
                self.waiting.push_front(s);
                break;
            }
            s.computed = shared.len() * bt;
            if s.admitted == 0 {
                s.cached = s.computed.min(s.req.prompt.len());
                self.m.cached_tokens.fetch_add(s.cached as u64, Ordering::Relaxed);
                self.m.prompt_tokens.fetch_add(s.req.prompt.len() as u64, Ordering::Relaxed);
            }
            s.published = shared.len();
            s.blocks = shared;
            self.admitted += 1;
            s.admitted = self.admitted;
            self.active.push(s);
        }
    }

    /// Gives sequence `i` blocks for `upto` positions, taking them from the youngest other sequences when
    /// the pool is empty. `false`: sequence `i` itself was the youngest and went back to the queue.
    fn grow(&mut self, i: usize, upto: usize) -> bool {
        let need = self.pool.blocks_for(upto);
        while self.active[i].blocks.len() < need {
            if let Some(b) = self.pool.allocate() {
                self.active[i].blocks.push(b);
                continue;
            }
            let youngest = (0..self.active.len()).max_by_key(|&j| self.active[j].admitted).expect("active");
            self.preempt(youngest);
            if youngest == i {
                return false;
            }
        }
        true
    }

    /// Gives a sequence's blocks back and queues it first, to be computed again from its tokens so far.
    fn preempt(&mut self, j: usize) {
        let mut s = self.active.remove(j);
        self.pool.release(&s.blocks);
        s.blocks.clear();
        s.computed = 0;
        s.published = 0;
        self.m.preempted.fetch_add(1, Ordering::Relaxed);
        self.waiting.push_front(s);
    }

    /// One forward pass over the active sequences, then sampling.
    fn step(&mut self) -> Result<()> {
        // Decoding sequences first (one token each), then prompt chunks within the step's budgets.
        self.active.sort_by_key(|s| (s.tokens.len() - s.computed > 1, s.admitted));
        // One adapter set per step, the sets present taking turns.
        let mut sets: Vec<&Vec<ActiveAdapter>> = Vec::new();
        for s in &self.active {
            if !sets.contains(&&s.req.adapters) {
                sets.push(&s.req.adapters);
            }
        }
        let Some(set) = sets.get(self.turn % sets.len().max(1)).map(|s| (*s).clone()) else { return Ok(()) };
        self.turn = self.turn.wrapping_add(1);
        if set != self.adapters {
            if let Err(e) = self.engine.set_adapters(&set) {
                // An engine that cannot apply these adapters fails their requests only.
                log::error!("adapters refused: {e}");
                let (failed, kept): (Vec<_>, Vec<_>) = self.active.drain(..).partition(|s| s.req.adapters == set);
                self.active = kept;
                for s in failed {
                    self.pool.release(&s.blocks);
                    self.m.failed.fetch_add(1, Ordering::Relaxed);
                    let _ = s.tx.unbounded_send(Event::Error(e.to_string()));
                }
                return Ok(());
            }
            self.adapters = set.clone();
        }
        let space = adapter_space(&set);
        let mut budget = self.kv.max_batch;
        let mut prefill = self.opts.prefill_chunk;
        let mut plan: Vec<(u64, usize)> = Vec::new(); // (admitted, tokens) per sequence in the pass
        let mut i = 0;
        while i < self.active.len() && budget > 0 {
            if self.active[i].req.adapters != set {
                i += 1;
                continue;
            }
            let left = self.active[i].tokens.len() - self.active[i].computed;
            let take = match left {
                1 => 1,
                _ => left.min(budget).min(prefill),
            };
            if take == 0 {
                break;
            }
            let id = self.active[i].admitted;
            let upto = self.active[i].computed + take;
            if !self.grow(i, upto) {
                continue; // it went back to the queue
            }
            // Growing may have preempted sequences before this one: find it again.
            i = self.active.iter().position(|s| s.admitted == id).expect("still active");
            plan.retain(|(a, _)| self.active.iter().any(|s| s.admitted == *a));
            plan.push((id, take));
            budget -= take;
            if left > 1 {
                prefill -= take;
            }
            i += 1;
        }
        if plan.is_empty() {
            return Ok(());
        }
        let idx: Vec<usize> =
            plan.iter().map(|(a, _)| self.active.iter().position(|s| s.admitted == *a).expect("planned")).collect();
        let chunks: Vec<SeqChunk> = idx
            .iter()
            .zip(&plan)
            .map(|(&i, &(_, take))| {
                let s = &self.active[i];
                let end = s.computed + take;
                SeqChunk {
                    ids: &s.tokens[s.computed..end],
                    pos: s.computed,
                    blocks: &s.blocks,
                    logits: end == s.tokens.len(),
                }
            })
            .collect();
        let wants: Vec<bool> = chunks.iter().map(|c| c.logits).collect();
        let mut logits = self.engine.forward_batch(&chunks)?;
        drop(chunks);
        self.m.steps.fetch_add(1, Ordering::Relaxed);
        self.m.step_sequences.fetch_add(plan.len() as u64, Ordering::Relaxed);
        self.m.last_batch.store(plan.len() as u64, Ordering::Relaxed);
        let vocab = logits.len() / wants.iter().filter(|&&w| w).count().max(1);
        let mut rows = logits.chunks_exact_mut(vocab.max(1));
        let mut done = Vec::new();
        for (&i, (&(_, take), &want)) in idx.iter().zip(plan.iter().zip(&wants)) {
            let s = &mut self.active[i];
            s.computed += take;
            let whole = s.computed / KV_BLOCK_TOKENS;
            if whole > s.published {
                self.pool.publish_in(space, &s.tokens[..s.computed], &s.blocks);
                s.published = whole;
            }
            if !want {
                continue;
            }
            let row = rows.next().expect("a logits row per sequence that asked");
            let id = s.sampler.sample(row, &s.tokens);
            if !s.first_token {
                s.first_token = true;
                let ms = s.at.elapsed().as_secs_f64() * 1e3;
                self.m.ttft.lock().expect("metrics").observe(ms);
            }
            if let Some(reason) = self.accept(i, id) {
                done.push((i, reason));
            }
        }
        done.sort_by_key(|&(i, _)| std::cmp::Reverse(i));
        for (i, reason) in done {
            let s = self.active.remove(i);
            s.finish(reason, &mut self.pool, &self.m);
        }
        Ok(())
    }

    /// Takes sampled token `id` into sequence `i`: streams its text and says whether the request ends.
    fn accept(&mut self, i: usize, id: u32) -> Option<StopReason> {
        let s = &mut self.active[i];
        if !s.req.ignore_eos && self.tok.is_stop(id) {
            return Some(StopReason::EndOfSequence);
        }
        s.tokens.push(id);
        self.m.completion_tokens.fetch_add(1, Ordering::Relaxed);
        let checked = s.text.len();
        if let Some(piece) = s.decoder.push(id) {
            s.text.push_str(&piece);
        }
        if let Some(at) = find_stop(&s.text, &s.req.stop, checked) {
            s.text.truncate(at);
            if s.sent < at {
                let _ = s.tx.unbounded_send(Event::Text(s.text[s.sent..at].to_string()));
                s.sent = at;
            }
            return Some(StopReason::StopString);
        }
        let safe = safe_prefix_len(&s.text, &s.req.stop).max(s.sent);
        if safe > s.sent {
            if s.tx.unbounded_send(Event::Text(s.text[s.sent..safe].to_string())).is_err() {
                return Some(StopReason::Cancelled);
            }
            s.sent = safe;
        }
        if s.generated() >= s.max_tokens {
            return Some(StopReason::MaxTokens);
        }
        if s.tokens.len() >= self.engine.context_length() {
            return Some(StopReason::ContextFull);
        }
        None
    }
}
