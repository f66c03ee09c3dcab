// The scratch page's side of scripts/browser_test.py's package tests: each function is called through
// WebDriver's async script and resolves to plain data the test checks (errors come back as {error, code}).

import * as omex from "omex-web";

let engine = null;

// A main-thread timer that runs all the time: a generation in the worker must not stop it.
const timer = { ticks: 0, maxGapMs: 0, last: performance.now() };
setInterval(() => {
  const now = performance.now();
  timer.ticks += 1;
  timer.maxGapMs = Math.max(timer.maxGapMs, now - timer.last);
  timer.last = now;
}, 20);
function timerReset() {
  timer.ticks = 0;
  timer.maxGapMs = 0;
  timer.last = performance.now();
}

function failure(e) {
  return { error: String((e && e.message) || e), code: (e && e.code) || "", name: (e && e.name) || "" };
}

async function guarded(fn) {
  try {
    return await fn();
  } catch (e) {
    return failure(e);
  }
}

window.omexTests = {
  async load(url, options) {
    return guarded(async () => {
      if (engine) await engine.unload();
      engine = null;
      const progress = [];
      const t0 = performance.now();
      engine = await omex.load(url, { ...options, onProgress: (p) => progress.push(p) });
      const ms = performance.now() - t0;
      const files = [...new Set(progress.filter((p) => p.file).map((p) => p.file))];
      const phases = [...new Set(progress.map((p) => p.phase))];
      const last = progress.filter((p) => p.phase !== "init").pop() || null;
      return { ms, info: engine.info(), files, phases, last, events: progress.length, worker: !(engine instanceof omex.Engine) };
    });
  },

  async completion(request) {
    return guarded(async () => {
      timerReset();
      const r = await engine.completions.create(request);
      return { result: r, timer: { ...timer } };
    });
  },

  // Several completions made at once (they take turns on the engine).
  async concurrent(requests) {
    return guarded(() => Promise.all(requests.map((r) => engine.completions.create(r))));
  },

  async chat(request) {
    return guarded(() => engine.chat.completions.create(request));
  },

  async chatStream(request, interruptAfter) {
    return guarded(async () => {
      const chunks = [];
      timerReset();
      for await (const c of await engine.chat.completions.create({ ...request, stream: true })) {
        chunks.push(c);
        if (interruptAfter && chunks.length === interruptAfter) engine.interrupt();
      }
      return { chunks, timer: { ...timer } };
    });
  },

  async cacheList() {
    return guarded(() => omex.cache.list());
  },

  async cacheDelete(url) {
    return guarded(() => omex.cache.delete(url));
  },

  // Damages one cached file in place (as a disk error would): its bytes change, its key stays.
  async corruptCache() {
    return guarded(async () => {
      const cache = await caches.open("omex-models-v1");
      const keys = (await cache.keys()).filter((r) => r.url.includes("/sha256/"));
      let biggest = null;
      for (const k of keys) {
        const bytes = new Uint8Array(await (await cache.match(k)).arrayBuffer());
        if (!biggest || bytes.length > biggest.bytes.length) biggest = { k, bytes };
      }
      biggest.bytes[biggest.bytes.length >> 1] ^= 0x5a;
      await cache.put(biggest.k, new Response(biggest.bytes, { headers: { "content-length": String(biggest.bytes.length) } }));
      return { key: biggest.k.url, bytes: biggest.bytes.length };
    });
  },

  async cacheEntries() {
    return guarded(async () => {
      if (!(await caches.has("omex-models-v1"))) return 0;
      return (await (await caches.open("omex-models-v1")).keys()).length;
    });
  },

  async unload() {
    return guarded(async () => {
      if (engine) await engine.unload();
      engine = null;
      return true;
    });
  },
};

document.getElementById("status").textContent = "ready";
window.omexTestsReady = true;
