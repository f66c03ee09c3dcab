// omex-web: a model.omex/ directory in the browser, on WebGPU or WebAssembly, behind an OpenAI-shaped API.
//
//   import * as omex from "omex-web";
//   const engine = await omex.load("/models/smollm2.omex/", { backend: "auto", onProgress: (p) => show(p) });
//   const reply = await engine.chat.completions.create({ messages: [{ role: "user", content: "Hi" }] });
//   for await (const chunk of await engine.chat.completions.create({ messages, stream: true })) { ... }
//   engine.interrupt(); await engine.unload();
//
// By default the engine runs in a Web Worker (WorkerEngine): the page's thread only passes messages, so it
// never stalls while the model loads or generates. { worker: false } runs it on the calling thread.

import { Engine } from "./engine.js";
import { list, remove, OmexError } from "./cache.js";
import { ChunkQueue } from "./stream.js";

export { Engine, OmexError };

function toError(v) {
  return new OmexError(v.code || "error", v.message);
}

/// The same API as Engine, with the Engine inside a Web Worker.
export class WorkerEngine {
  constructor(worker) {
    this.worker = worker;
    this.pending = new Map();
    this.next = 1;
    this.loaded = null;
    this.chat = { completions: { create: (req) => this.create("chat", req) } };
    this.completions = { create: (req) => this.create("text", req) };
    worker.onmessage = (ev) => {
      const { id, type, value } = ev.data;
      const p = this.pending.get(id);
      if (!p) return;
      if (type === "progress") p.onProgress && p.onProgress(value);
      else if (type === "chunk") p.onChunk && p.onChunk(value);
      else {
        this.pending.delete(id);
        if (type === "result") p.resolve(value);
        else p.reject(toError(value));
      }
    };
    worker.onerror = (ev) => {
      const e = new OmexError("worker", `the omex worker failed: ${ev.message || "script error"}`);
      for (const p of this.pending.values()) p.reject(e);
      this.pending.clear();
    };
  }

  call(op, args = {}, hooks = {}) {
    if (!this.worker) return Promise.reject(new OmexError("unloaded", "the engine was unloaded"));
    const id = this.next++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, ...hooks });
      this.worker.postMessage({ id, op, args });
    });
  }

  async load(source, options = {}) {
    const { onProgress, ...rest } = options;
    this.loaded = await this.call("load", { source, options: rest }, { onProgress });
    return this;
  }

  /// The model, backend, kernel tier and load figures (a snapshot taken when the model loaded).
  info() {
    return this.loaded;
  }

  create(kind, req) {
    if (!req || typeof req !== "object") throw new OmexError("bad-request", "create() takes a request object");
    if (!req.stream) return this.call("create", { kind, request: req });
    const queue = new ChunkQueue(() => this.interrupt());
    this.call("create", { kind, request: req }, { onChunk: (c) => queue.push(c) }).then(() => queue.end(), (e) => queue.end(e));
    return Promise.resolve(queue);
  }

  interrupt() {
    if (this.worker) this.worker.postMessage({ op: "interrupt" });
  }

  resetChat() {
    return this.call("reset");
  }

  /// Frees the model and ends the worker.
  async unload() {
    if (!this.worker) return;
    await this.call("unload").catch(() => {});
    this.worker.terminate();
    this.worker = null;
  }
}

/// Loads a model: `source` is the URL of a model.omex/ directory or its files (a FileList from
/// <input type=file webkitdirectory>, or [{path, file}]). Options: backend ("auto" | "webgpu" | "wasm"),
/// onProgress({phase, file, loaded, total, fileLoaded, fileTotal, fromCache}), cache (default true),
/// context (KV cache length), activations ("int8", the default, or "f32": the wasm engine's matrix products;
/// WebGPU always runs f32), worker (default true).
export async function load(source, options = {}) {
  if (options.worker === false) return Engine.load(source, options);
  const worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module", name: "omex" });
  const src = typeof source === "string" || source instanceof URL ? String(source)
    : Array.from(source, (f) => (f instanceof File ? { path: f.webkitRelativePath || f.name, file: f } : f));
  const abs = typeof src === "string" ? new URL(src, location.href).href : src;
  const engine = new WorkerEngine(worker);
  try {
    return await engine.load(abs, options);
  } catch (e) {
    worker.terminate();
    throw e;
  }
}

/// The model cache (Cache API, entries keyed by SHA-256): list() -> [{url, name, files, bytes}],
/// delete(url?) -> how many models were deleted (all of them without a url).
export const cache = { list, delete: remove };
