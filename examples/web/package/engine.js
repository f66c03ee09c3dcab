// The engine on the current thread (the worker's, by default): the wasm module, a model on WebGPU or the
// CPU engine compiled to wasm, and the OpenAI-shaped calls over its generate(). WorkerEngine (index.js)
// forwards the same calls to an Engine inside a Web Worker.

import init, { ModelFiles, loadModel } from "./omex_web.js";
import { loadFromFiles, loadFromUrl, OmexError } from "./cache.js";
import { ChunkQueue } from "./stream.js";

let ready = null;
function initWasm() {
  if (!ready) ready = init();
  return ready;
}

/// "webgpu" when the browser gives a WebGPU adapter here, else "wasm".
export async function pickBackend(requested) {
  if (requested === "wasm") return "wasm";
  const gpu = globalThis.navigator && navigator.gpu;
  const adapter = gpu ? await gpu.requestAdapter({ powerPreference: "high-performance" }).catch(() => null) : null;
  if (adapter) return "webgpu";
  if (requested === "webgpu") {
    throw new OmexError("no-webgpu", gpu ? "WebGPU gave no adapter here (blocked for this GPU or driver): use { backend: 'wasm' }"
      : "this browser has no WebGPU (navigator.gpu is missing): use { backend: 'wasm' }");
  }
  return "wasm";
}

async function adapterFeatures() {
  const gpu = globalThis.navigator && navigator.gpu;
  const a = gpu ? await gpu.requestAdapter({ powerPreference: "high-performance" }).catch(() => null) : null;
  return a ? Array.from(a.features).sort() : [];
}

const FINISH = { max_tokens: "length", context_full: "length", end_of_sequence: "stop", stop_string: "stop", cancelled: "abort" };

function number(v, name, lo, hi, fallback) {
  if (v === undefined || v === null) return fallback;
  if (typeof v !== "number" || !Number.isFinite(v) || v < lo || v > hi) {
    throw new OmexError("bad-request", `${name} must be a number from ${lo} to ${hi}, not ${JSON.stringify(v)}`);
  }
  return v;
}

function whole(v, name, lo, hi, fallback) {
  const x = number(v, name, lo, hi, fallback);
  if (x !== undefined && !Number.isInteger(x)) throw new OmexError("bad-request", `${name} must be a whole number, not ${x}`);
  return x;
}

function stopList(stop) {
  if (stop === undefined || stop === null) return [];
  const list = typeof stop === "string" ? [stop] : stop;
  if (!Array.isArray(list) || list.length > 16 || !list.every((s) => typeof s === "string" && s.length > 0 && s.length <= 256)) {
    throw new OmexError("bad-request", "stop must be a non-empty string or a list of at most 16 of them");
  }
  return list;
}

let counter = 0;
const newId = (prefix) => `${prefix}-${Date.now().toString(36)}${(counter++).toString(36)}`;

export class Engine {
  /// Loads a model: `source` is the URL of a model.omex/ directory, or its files (a FileList from
  /// <input webkitdirectory>, or [{path, file}]). Options: backend ("auto", "webgpu", "wasm"), onProgress,
  /// cache (default true: URL loads are kept in the Cache API), context (KV cache length), activations (the
  /// wasm engine's matrix products: "int8", the default, or "f32", the reference-exact path; WebGPU runs f32).
  static async load(source, options = {}) {
    const t0 = performance.now();
    const onProgress = options.onProgress || (() => {});
    if (options.activations != null && !["int8", "f32"].includes(options.activations)) {
      throw new OmexError("bad-request", `activations must be "int8" or "f32", not ${JSON.stringify(options.activations)}`);
    }
    await initWasm();
    const backend = await pickBackend(options.backend || "auto");
    let name;
    let files;
    let got;
    if (typeof source === "string" || source instanceof URL) {
      const url = String(source);
      name = decodeURIComponent(url.replace(/\/+$/, "").split("/").pop() || "model");
      files = new ModelFiles(name);
      got = await loadFromUrl(url, (p, b) => files.add(p, b), onProgress, {
        useCache: options.cache !== false,
        maxCacheBytes: options.cacheMaxBytes,
      });
    } else {
      const entries = Array.from(source, (f) => (f instanceof File ? { path: f.webkitRelativePath || f.name, file: f } : f));
      const staged = [];
      got = await loadFromFiles(entries, (p, b) => staged.push([p, b]), onProgress);
      name = got.name;
      files = new ModelFiles(name);
      for (const [p, b] of staged.splice(0)) files.add(p, b);
    }
    const downloadMs = performance.now() - t0;
    onProgress({ phase: "init", file: "", loaded: got.bytes, total: got.bytes, fileLoaded: 0, fileTotal: 0, fromCache: got.fromCache });
    const model = await loadModel(files, {
      engine: backend === "webgpu" ? "gpu" : "cpu",
      context: options.context,
      activations: options.activations,
    });
    const features = backend === "webgpu" ? await adapterFeatures() : [];
    return new Engine(model, {
      backend,
      fromCache: got.fromCache,
      bytes: got.bytes,
      downloadMs,
      loadMs: performance.now() - t0,
      browserFeatures: features,
    });
  }

  constructor(model, loadInfo) {
    this.model = model;
    this.loadInfo = loadInfo;
    // Requests take turns on the one model and KV cache: each runs after those made before it have ended.
    this.turns = Promise.resolve();
    this.chat = { completions: { create: (req) => this.create("chat", req) } };
    this.completions = { create: (req) => this.create("text", req) };
  }

  /// The model, the backend and its kernel tier, and how the load went.
  info() {
    const i = this.model.info();
    const webgpu = this.loadInfo.backend === "webgpu";
    return {
      ...i,
      backend: this.loadInfo.backend,
      tier: i.tier,
      shaderF16: webgpu && this.loadInfo.browserFeatures.includes("shader-f16"),
      subgroups: false,
      subgroupsOffered: webgpu && this.loadInfo.browserFeatures.includes("subgroups"),
      fromCache: this.loadInfo.fromCache,
      bytes: this.loadInfo.bytes,
      downloadMs: this.loadInfo.downloadMs,
      loadMs: this.loadInfo.loadMs,
    };
  }

  /// Stops a running generation after the token in flight; its result ends with finish_reason "abort".
  interrupt() {
    if (this.model) this.model.stop();
  }

  /// Frees the model (and, on WebGPU, its buffers).
  unload() {
    if (this.model) this.model.free();
    this.model = null;
  }

  /// Forgets the conversation held in the KV cache (the next request starts from position 0).
  resetChat() {
    this.model.reset();
  }

  /// chat.completions.create / completions.create: a Promise of the completion, or (stream: true) an async
  /// iterator of chunks.
  create(kind, req) {
    if (!req || typeof req !== "object") return Promise.reject(new OmexError("bad-request", "create() takes a request object"));
    if (!req.stream) return this.run(kind, req, () => {});
    const queue = new ChunkQueue(() => this.interrupt());
    this.run(kind, req, (chunk) => queue.push(chunk)).then(() => queue.end(), (e) => queue.end(e));
    return Promise.resolve(queue);
  }

  /// Runs one request after the requests made before it, calling emit(chunk) as text comes; resolves to the
  /// whole completion.
  run(kind, req, emit) {
    const turn = this.turns.then(() => this.runNow(kind, req, emit));
    this.turns = turn.catch(() => {});
    return turn;
  }

  async runNow(kind, req, emit) {
    if (!this.model) throw new OmexError("unloaded", "the engine was unloaded");
    const stops = stopList(req.stop);
    const options = {
      maxTokens: whole(req.max_tokens ?? req.max_completion_tokens, "max_tokens", 1, 1 << 20, 1 << 20),
      temperature: number(req.temperature, "temperature", 0, 2, 1),
      topP: number(req.top_p, "top_p", 0, 1, 1),
      seed: whole(req.seed, "seed", 0, 2 ** 32 - 1, undefined),
      ignoreEos: Boolean(req.ignore_eos),
    };
    if (options.topP === 0) throw new OmexError("bad-request", "top_p must be above 0");
    let prompt;
    if (kind === "chat") {
      if (!Array.isArray(req.messages)) throw new OmexError("bad-request", "messages must be a list of {role, content}");
      prompt = this.model.chatTemplate(req.messages);
    } else {
      if (typeof req.prompt !== "string") throw new OmexError("bad-request", "prompt must be a string");
      prompt = req.prompt;
    }
    const id = newId(kind === "chat" ? "chatcmpl" : "cmpl");
    const created = Math.floor(Date.now() / 1000);
    const modelName = this.model.info().name;
    const chunk = (delta, finish) =>
      kind === "chat"
        ? { id, object: "chat.completion.chunk", created, model: modelName,
            choices: [{ index: 0, delta, finish_reason: finish, logprobs: null }] }
        : { id, object: "text_completion", created, model: modelName,
            choices: [{ index: 0, text: delta.content ?? "", finish_reason: finish, logprobs: null }] };

    // Text is held back while it could still be the start of a stop string, so no part of one is streamed.
    const hold = stops.reduce((m, s) => Math.max(m, s.length - 1), 0);
    let text = "";
    let sent = 0;
    let stopped = false;
    const ids = [];
    if (kind === "chat") emit(chunk({ role: "assistant", content: "" }, null));
    const out = await this.model.generate(prompt, options, (t) => {
      if (t.id !== null) ids.push(t.id);
      text += t.piece;
      let cut = -1;
      for (const s of stops) {
        const at = text.indexOf(s, Math.max(0, text.length - t.piece.length - s.length));
        if (at >= 0 && (cut < 0 || at < cut)) cut = at;
      }
      if (cut >= 0) {
        text = text.slice(0, cut);
        stopped = true;
      }
      const upto = stopped ? text.length : Math.max(sent, text.length - hold);
      if (upto > sent) {
        emit(chunk({ content: text.slice(sent, upto) }, null));
        sent = upto;
      }
      return !stopped;
    });
    if (!stopped && out.text.length >= text.length) text = out.text;
    if (text.length > sent) emit(chunk({ content: text.slice(sent) }, null));
    const finish = stopped ? "stop" : FINISH[out.stop] || "stop";
    const usage = { prompt_tokens: out.promptIds.length, completion_tokens: out.outputIds.length, total_tokens: out.promptIds.length + out.outputIds.length };
    const omex = { promptIds: out.promptIds, outputIds: out.outputIds, promptTokens: out.promptTokens, promptMs: out.promptMs,
      decodeSteps: out.decodeSteps, decodeMs: out.decodeMs, promptTokS: out.promptTokS, decodeTokS: out.decodeTokS };
    emit({ ...chunk({}, finish), usage, omex });
    const choice = kind === "chat"
      ? { index: 0, message: { role: "assistant", content: text }, finish_reason: finish, logprobs: null }
      : { index: 0, text, finish_reason: finish, logprobs: null };
    return { id, object: kind === "chat" ? "chat.completion" : "text_completion", created, model: modelName, choices: [choice], usage, omex };
  }
}
