//! The JavaScript API (wasm-bindgen). In the page:
//!
//! ```js
//! import init, { ModelFiles, loadModel } from "./pkg/omex_web.js";
//! await init();
//! const files = new ModelFiles("smollm2.omex");
//! files.add("metadata.json", bytes); /* ... every file metadata.json lists ... */
//! const model = await loadModel(files, { engine: "gpu" });       // or "cpu": the CPU engine in wasm
//! const out = await model.generate("The capital of France is", { maxTokens: 32 }, (t) => show(t.piece));
//! console.log(out.outputIds, out.decodeTokS);
//! ```

use crate::engine::{EngineConfig, EngineKind, WebEngine};
use crate::files::ModelFiles as Files;
use crate::generate::{Conversation, Host, Request, TokenEvent};
use crate::js::{self, error};
use omex::backend::Activations;
use omex::runtime::Model;
use omex::sampling::SamplerOptions;
use omex::tokenizer::ChatMessage;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use wasm_bindgen::prelude::*;

/// The page's KV cache length unless it asks for another: room for a conversation, little memory.
const DEFAULT_CONTEXT: usize = 2048;

#[wasm_bindgen(start)]
pub fn start() {
    std::panic::set_hook(Box::new(|info| web_sys::console::error_1(&format!("omex panicked: {info}").into())));
}

/// The files of one model directory, added one by one as they arrive.
#[wasm_bindgen]
pub struct ModelFiles(Files);

#[wasm_bindgen]
impl ModelFiles {
    #[wasm_bindgen(constructor)]
    pub fn new(name: &str) -> ModelFiles {
        ModelFiles(Files::new(name))
    }

    /// Adds a file by its path inside the model directory (`weights/layer_0.bin`); the bytes are copied.
    pub fn add(&mut self, path: &str, bytes: Vec<u8>) -> Result<(), JsError> {
        self.0.add(path, bytes).map_err(error)
    }

    #[wasm_bindgen(getter)]
    pub fn count(&self) -> usize {
        self.0.len()
    }

    #[wasm_bindgen(getter, js_name = totalBytes)]
    pub fn total_bytes(&self) -> f64 {
        self.0.total_bytes() as f64
    }

    /// The parsed metadata.json (which lists every other file with its size).
    pub fn metadata(&self) -> Result<JsValue, JsError> {
        Ok(js::to_js(&self.0.metadata().map_err(error)?))
    }

    /// Throws, naming every file, unless each file metadata.json lists is here with its size (and, with
    /// `checksums`, its SHA-256).
    pub fn check(&self, checksums: bool) -> Result<(), JsError> {
        self.0.check(checksums).map_err(error)
    }
}

/// Opens the model in `files` on an engine. Options: `engine` ("gpu", the default, or "cpu"), `context`
/// (KV cache length, default 2048), `activations` (the CPU engine's matrix products: "int8", the default as
/// in the native CLI, faster; or "f32", the reference-exact path; the GPU engine always runs f32),
/// `checksums` (verify every file's SHA-256 first, default false).
#[wasm_bindgen(js_name = loadModel)]
pub async fn load_model(files: ModelFiles, options: JsValue) -> Result<OmexModel, JsError> {
    let kind: EngineKind = js::opt_str(&options, "engine")?.as_deref().unwrap_or("gpu").parse().map_err(error)?;
    let activations: Activations = match js::opt_str(&options, "activations")? {
        Some(a) => a.parse().map_err(|e: String| JsError::new(&e))?,
        None => Activations::default(),
    };
    let context_length = js::opt_usize(&options, "context")?.unwrap_or(DEFAULT_CONTEXT);
    files.0.check(js::opt_bool(&options, "checksums")?.unwrap_or(false)).map_err(error)?;
    let model = files.0.open().map_err(error)?;
    let engine = WebEngine::load(&model, &EngineConfig { kind, context_length, activations }).await.map_err(error)?;
    log::info!("omex: {} on {}", model.dir.metadata.model_name, engine.describe());
    let state = State { model, engine, conversation: Conversation::default() };
    Ok(OmexModel { state: Rc::new(RefCell::new(state)), stop: Rc::new(Cell::new(false)) })
}

struct State {
    model: Model,
    engine: WebEngine,
    conversation: Conversation,
}

/// A loaded model on its engine, with the conversation its KV cache holds.
#[wasm_bindgen]
pub struct OmexModel {
    state: Rc<RefCell<State>>,
    stop: Rc<Cell<bool>>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Info<'a> {
    engine: &'static str,
    /// The kernel tier: "wasm" on the CPU engine, else the GPU tier ("portable", "f16", ...).
    tier: String,
    describe: &'a str,
    adapter: Option<&'a crate::engine::AdapterSummary>,
    name: &'a str,
    architecture: &'a str,
    parameters: &'a str,
    quantization: &'a str,
    layers: usize,
    hidden_size: u32,
    vocab_size: u32,
    model_context: u32,
    context: usize,
    has_chat_template: bool,
}

#[wasm_bindgen]
impl OmexModel {
    /// The engine (and adapter) and the model, as plain data.
    pub fn info(&self) -> Result<JsValue, JsError> {
        let st = self.state.try_borrow().map_err(|_| busy())?;
        let (m, c) = (&st.model.dir.metadata, &st.model.config);
        Ok(js::to_js(&Info {
            engine: st.engine.kind().name(),
            tier: st.engine.adapter().map_or_else(|| "wasm".to_string(), |a| a.kernels.clone()),
            describe: st.engine.describe(),
            adapter: st.engine.adapter(),
            name: &m.model_name,
            architecture: &m.model_architecture,
            parameters: &m.parameters,
            quantization: &m.quantization.kind,
            layers: c.blocks.len(),
            hidden_size: c.hidden_size,
            vocab_size: c.vocab_size,
            model_context: c.context_length,
            context: st.engine.context_length(),
            has_chat_template: st.model.tokenizer.chat_template().is_some(),
        }))
    }

    /// The token ids of `text` as a prompt (special tokens recognised, BOS as the tokenizer config says).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, JsError> {
        let st = self.state.try_borrow().map_err(|_| busy())?;
        Ok(st.model.tokenizer.encode_with_specials(text))
    }

    /// `text` wrapped in the model's chat template as one user turn (after an optional system message).
    #[wasm_bindgen(js_name = chatPrompt)]
    pub fn chat_prompt(&self, text: &str, system: Option<String>) -> Result<String, JsError> {
        let st = self.state.try_borrow().map_err(|_| busy())?;
        let mut messages = Vec::new();
        if let Some(s) = system.filter(|s| !s.is_empty()) {
            messages.push(ChatMessage::system(s));
        }
        messages.push(ChatMessage::user(text));
        st.model.tokenizer.apply_chat_template(&messages, true).map_err(error)
    }

    /// A whole conversation (`[{role, content}, ...]`, as OpenAI's `messages`) in the model's chat template,
    /// ending with the assistant's turn opened. Throws naming the message at fault.
    #[wasm_bindgen(js_name = chatTemplate)]
    pub fn chat_template(&self, messages: JsValue) -> Result<String, JsError> {
        let st = self.state.try_borrow().map_err(|_| busy())?;
        let messages = js::chat_messages(&messages)?;
        st.model.tokenizer.apply_chat_template(&messages, true).map_err(error)
    }

    /// Generates a continuation of `prompt`, calling `onToken({id, piece, index, promptMs, decodeMs,
    /// decodeSteps})` for every token as it comes (return `false` from it to stop). Options: `maxTokens`
    /// (default 128), `temperature` (0, the default, is greedy), `topK`, `topP`, `minP`, `repeatPenalty`,
    /// `seed`, `ignoreEos`. Resolves to `{promptIds, outputIds, text, stop, promptTokens, promptMs,
    /// decodeSteps, decodeMs, promptTokS, decodeTokS}`.
    #[allow(clippy::await_holding_refcell_ref)] // on purpose: see the borrow below
    pub fn generate(&self, prompt: String, options: JsValue, on_token: js_sys::Function) -> js_sys::Promise {
        let state = self.state.clone();
        let stop = self.stop.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let req = request(&options)?;
            // One generation at a time: the state stays borrowed across the awaits below, so a second call
            // while one runs fails here instead of touching the engine.
            let mut st = state.try_borrow_mut().map_err(|_| busy())?;
            stop.set(false);
            let tokenizer = st.model.tokenizer.clone();
            let ids = tokenizer.encode_with_specials(&prompt);
            let State { engine, conversation, .. } = &mut *st;
            let mut host = PageHost { on_token, stop };
            let out = conversation.generate(engine, &tokenizer, ids, &req, &mut host).await.map_err(error)?;
            Ok(js::to_js(&out))
        })
    }

    /// Asks a running generation to stop after the token in flight.
    pub fn stop(&self) {
        self.stop.set(true);
    }

    /// Forgets the conversation (the next prompt runs from position 0).
    pub fn reset(&self) -> Result<(), JsError> {
        self.state.try_borrow_mut().map_err(|_| busy())?.conversation.tokens.clear();
        Ok(())
    }
}

fn busy() -> JsError {
    JsError::new("the model is busy generating: stop it first")
}

fn request(o: &JsValue) -> Result<Request, JsError> {
    let d = SamplerOptions::default();
    let sampler = SamplerOptions {
        temperature: js::opt_f64(o, "temperature")?.map_or(d.temperature, |x| x as f32),
        top_k: js::opt_usize(o, "topK")?.unwrap_or(d.top_k),
        top_p: js::opt_f64(o, "topP")?.map_or(d.top_p, |x| x as f32),
        min_p: js::opt_f64(o, "minP")?.map_or(d.min_p, |x| x as f32),
        repetition_penalty: js::opt_f64(o, "repeatPenalty")?.map_or(d.repetition_penalty, |x| x as f32),
        repeat_last_n: d.repeat_last_n,
        seed: js::opt_usize(o, "seed")?.map_or(d.seed, |x| x as u64),
    };
    sampler.check().map_err(|e| JsError::new(&e))?;
    Ok(Request {
        max_tokens: js::opt_usize(o, "maxTokens")?.unwrap_or(128),
        sampler,
        ignore_eos: js::opt_bool(o, "ignoreEos")?.unwrap_or(false),
    })
}

struct PageHost {
    on_token: js_sys::Function,
    stop: Rc<Cell<bool>>,
}

impl Host for PageHost {
    fn now_ms(&self) -> f64 {
        js::now_ms()
    }

    async fn pause(&self) {
        js::next_macrotask().await
    }

    fn on_token(&mut self, token: &TokenEvent) -> bool {
        match self.on_token.call1(&JsValue::NULL, &js::to_js(token)) {
            Ok(r) => r.as_bool() != Some(false) && !self.stop.get(),
            Err(e) => {
                web_sys::console::error_2(&"omex: onToken threw; generation stops:".into(), &e);
                false
            }
        }
    }

    fn cancelled(&self) -> bool {
        self.stop.get()
    }
}
