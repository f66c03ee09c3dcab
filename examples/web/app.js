// The page: finds WebGPU (or says plainly that there is none), loads a model.omex/ directory from a URL
// (kept in the browser's cache for the next visit) or a folder, and streams generated tokens with live
// tok/s. It uses the omex-web package (served at ./pkg/): the engine runs in a Web Worker, so this thread
// only paints. `window.omexState` mirrors what the page shows, for tests that drive it through WebDriver.
// URL parameters: model=URL engine=gpu|cpu prompt=TEXT n=TOKENS chat=1 autorun=1 (load, then generate).

import * as omex from "./pkg/index.js";
import { droppedFiles, pickedFiles } from "./loader.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const state = (window.omexState = {
  phase: "starting", // starting | idle | loading | ready | generating | done | error
  error: null,
  webgpu: null, // {available, reason, adapter}
  info: null, // the loaded model and engine
  loadMs: null,
  tokens: [], // the ids streamed so far
  text: "",
  tokS: null, // live decode tok/s
  result: null, // the last generation's figures (ids, timings) with its text and finish reason
  timer: { ticks: 0, maxGapMs: 0 }, // a main-thread timer during the last generation: the page stays live
});
let model = null;

function fail(where, e) {
  const msg = e && e.message ? e.message : String(e);
  console.error(where, e);
  state.phase = "error";
  state.error = `${where}: ${msg}`;
  const el = where === "generate" ? $("stats") : $("model-status");
  el.textContent = state.error;
  el.classList.add("error");
  setBusy(false);
}

function setBusy(busy) {
  $("load-url").disabled = busy;
  $("generate").disabled = busy || !model;
  $("stop").disabled = !busy || state.phase !== "generating";
}

function mib(bytes) {
  return (bytes / (1 << 20)).toFixed(1) + " MiB";
}

function showAdapter(rows) {
  const dl = $("adapter");
  dl.replaceChildren();
  for (const [k, v, cls] of rows) {
    if (v === undefined || v === null || v === "") continue;
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = v;
    if (cls) dd.className = cls;
    dl.append(dt, dd);
  }
  dl.hidden = false;
}

function browserAdapterName() {
  const a = state.webgpu && state.webgpu.adapter;
  return a ? [a.vendor, a.architecture, a.device, a.description].filter(Boolean).join(" ") : "";
}

// The adapter as the browser describes it (wgpu's WebGPU backend reports no name), with omex's choices once
// a model is loaded on it.
function adapterRows(probe, engine) {
  const rows = [];
  const a = probe && probe.adapter;
  const jsName = a ? [a.vendor, a.architecture, a.device, a.description].filter(Boolean).join(" · ") : "";
  rows.push(["adapter", (engine && engine.name) || jsName || "(the browser hides its name)"]);
  const kind = a && a.fallback ? "software (fallback adapter)" : "hardware";
  rows.push(["backend", `WebGPU${engine ? " (wgpu " + engine.backend + ")" : ""} · ${kind}`]);
  if (engine) rows.push(["omex kernels", `${engine.kernels} (subgroups: not through wgpu 30's WebGPU backend)`]);
  if (a) rows.push(["features", a.features.length ? a.features.join(", ") : "none beyond the core", "small"]);
  const binding = engine ? engine.maxStorageBindingMib : a && a.maxStorageBinding / (1 << 20);
  if (binding) rows.push(["largest binding", `${Math.round(binding)} MiB`]);
  return rows;
}

// WebGPU as the browser offers it, before any model: the adapter's name and features.
async function probeWebGpu() {
  if (!("gpu" in navigator) || !navigator.gpu) {
    return { available: false, reason: window.isSecureContext ? "(navigator.gpu is missing)" : "(this page is not a secure context: open it on localhost or https)" };
  }
  let adapter = null;
  try {
    adapter = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
  } catch (e) {
    return { available: false, reason: `(requestAdapter failed: ${e.message})` };
  }
  if (!adapter) return { available: false, reason: "(navigator.gpu gave no adapter: WebGPU may be blocked for this GPU or driver)" };
  const info = adapter.info || (adapter.requestAdapterInfo ? await adapter.requestAdapterInfo() : {});
  return {
    available: true,
    adapter: {
      vendor: info.vendor || "",
      architecture: info.architecture || "",
      device: info.device || "",
      description: info.description || "",
      fallback: Boolean(adapter.isFallbackAdapter || info.isFallbackAdapter),
      features: Array.from(adapter.features).sort(),
      maxStorageBinding: adapter.limits.maxStorageBufferBindingSize,
      maxBuffer: adapter.limits.maxBufferSize,
    },
  };
}

async function setupDevice() {
  const g = (state.webgpu = await probeWebGpu());
  if (g.available) {
    $("gpu-status").textContent = `WebGPU is available${g.adapter.fallback ? " (a software fallback adapter)" : ""}.`;
    showAdapter(adapterRows(g, null));
  } else {
    $("gpu-status").textContent = "No WebGPU.";
    $("no-webgpu-why").textContent = g.reason;
    $("no-webgpu").hidden = false;
    $("engine").value = "cpu";
    $("engine").querySelector('option[value="gpu"]').disabled = true;
  }
}

async function loadFrom(source, name) {
  setBusy(true);
  state.phase = "loading";
  state.error = null;
  state.info = null;
  $("model-status").classList.remove("error");
  $("model-status").textContent = "";
  $("progress-row").hidden = false;
  if (model) {
    await model.unload();
    model = null;
  }
  const t0 = performance.now();
  const engine = $("engine").value;
  try {
    const onProgress = ({ phase, loaded, total, file, fromCache }) => {
      $("progress").value = total ? loaded / total : 0;
      if (phase === "init") {
        $("progress-text").textContent = engine === "gpu" ? "uploading to the GPU, compiling kernels…" : "preparing the CPU engine…";
      } else {
        const verb = fromCache ? "from the cache" : phase === "read" ? "read" : "downloaded";
        $("progress-text").textContent = `${mib(loaded)} of ${mib(total)} ${verb}${file ? " · " + file : ""}`;
      }
    };
    // `?activations=f32` picks the wasm engine's reference-exact path (the default is int8).
    const activations = params.get("activations") || undefined;
    model = await omex.load(source, { backend: engine === "gpu" ? "webgpu" : "wasm", onProgress, activations });
    state.loadMs = performance.now() - t0;
    state.info = model.info();
    const i = state.info;
    $("model-status").textContent =
      `${i.name} (${i.architecture}, ${i.parameters} parameters, ${i.quantization}) loaded ${i.fromCache ? "from the cache " : ""}` +
      `in ${(state.loadMs / 1000).toFixed(1)} s on ${i.describe.replace("WebGPU adapter", browserAdapterName() || "WebGPU adapter")}; ` +
      `context ${i.context} tokens.`;
    showCache();
    if (i.adapter) showAdapter(adapterRows(state.webgpu, i.adapter));
    $("chat-mode").checked = $("chat-mode").checked && i.hasChatTemplate;
    $("chat-mode").disabled = !i.hasChatTemplate;
    state.phase = "ready";
  } catch (e) {
    model = null;
    fail("load", e);
    return false;
  } finally {
    if (state.phase !== "error") $("progress-row").hidden = true;
    setBusy(false);
  }
  return true;
}

function loadUrl(url) {
  return loadFrom(new URL(url, location.href).href);
}

function loadLocal(files) {
  return loadFrom(files);
}

async function showCache() {
  try {
    const models = await omex.cache.list();
    const bytes = models.reduce((s, m) => s + m.bytes, 0);
    $("cache-status").textContent = models.length
      ? `Cached in this browser: ${models.map((m) => m.name || m.url).join(", ")} (${mib(bytes)}).`
      : "No model is cached in this browser yet.";
    $("clear-cache").hidden = !models.length;
  } catch (e) {
    $("cache-status").textContent = `The cache is not available here (${e.message}).`;
  }
}

async function generate() {
  if (!model) return;
  const raw = $("prompt").value;
  const chat = $("chat-mode").checked;
  const maxTokens = Math.max(1, parseInt($("max-tokens").value, 10) || 64);
  const temperature = Math.max(0, parseFloat($("temperature").value) || 0);
  state.phase = "generating";
  state.tokens = [];
  state.text = "";
  state.tokS = null;
  state.result = null;
  $("stats").classList.remove("error");
  $("out-prompt").textContent = raw;
  $("out-text").textContent = "";
  $("cursor").hidden = false;
  $("stats").textContent = "reading the prompt…";
  $("output").scrollIntoView({ block: "nearest" });
  setBusy(true);
  // A main-thread timer: with the engine in its worker it keeps firing while tokens are generated.
  state.timer = { ticks: 0, maxGapMs: 0 };
  let last = performance.now();
  const timer = setInterval(() => {
    const now = performance.now();
    state.timer.ticks += 1;
    state.timer.maxGapMs = Math.max(state.timer.maxGapMs, now - last);
    last = now;
  }, 20);
  try {
    const req = { max_tokens: maxTokens, temperature, seed: Date.now() % 1e9, stream: true };
    const stream = chat
      ? await model.chat.completions.create({ ...req, messages: [{ role: "user", content: raw }] })
      : await model.completions.create({ ...req, prompt: raw });
    const t0 = performance.now();
    let r = null;
    let finish = null;
    for await (const chunk of stream) {
      const c = chunk.choices[0];
      const piece = chat ? c.delta.content || "" : c.text;
      if (piece) {
        state.tokens.push(state.tokens.length);
        state.text += piece;
        $("out-text").textContent = state.text;
        const s = (performance.now() - t0) / 1000;
        state.tokS = state.tokens.length > 1 && s > 0 ? state.tokens.length / s : null;
        $("stats").textContent = `${state.tokens.length} pieces${state.tokS ? ` · ${state.tokS.toFixed(2)} tok/s` : ""}`;
      }
      if (c.finish_reason) finish = c.finish_reason;
      if (chunk.omex) r = chunk.omex;
    }
    state.tokens = r.outputIds;
    state.result = { ...r, text: state.text, stop: finish };
    $("stats").textContent =
      `${r.outputIds.length} tokens (${finish}) · prompt: ${r.promptTokens} tokens in ${r.promptMs.toFixed(0)} ms ` +
      `(${r.promptTokS.toFixed(1)} tok/s) · generation: ${r.decodeTokS.toFixed(2)} tok/s`;
    state.phase = "done";
  } catch (e) {
    fail("generate", e);
  } finally {
    clearInterval(timer);
    $("cursor").hidden = true;
    setBusy(false);
  }
}

async function listServedModels() {
  try {
    const resp = await fetch("models.json");
    if (!resp.ok) return [];
    const names = await resp.json();
    for (const n of names) {
      const o = document.createElement("option");
      o.value = `models/${n}/`;
      $("served-models").append(o);
    }
    return names;
  } catch {
    return [];
  }
}

function wire() {
  $("url-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const url = $("model-url").value.trim();
    if (url) loadUrl(url);
  });
  $("pick").addEventListener("change", (ev) => loadLocal(pickedFiles(ev.target.files)));
  const drop = $("drop");
  drop.addEventListener("dragover", (ev) => {
    ev.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", async (ev) => {
    ev.preventDefault();
    drop.classList.remove("over");
    try {
      loadLocal(await droppedFiles(ev.dataTransfer));
    } catch (e) {
      fail("load", e);
    }
  });
  $("generate").addEventListener("click", generate);
  $("stop").addEventListener("click", () => model && model.interrupt());
  $("clear-cache").addEventListener("click", async () => {
    await omex.cache.delete();
    showCache();
  });
  $("prompt").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey) && !$("generate").disabled) generate();
  });
  $("use-cpu").addEventListener("click", () => {
    $("engine").value = "cpu";
    $("no-webgpu").querySelector("p").append(" The CPU engine is selected: load a model below.");
    $("use-cpu").disabled = true;
    $("model-url").focus();
  });
}

async function main() {
  wire();
  await setupDevice();
  showCache();
  const served = await listServedModels();
  if (params.get("engine")) $("engine").value = params.get("engine");
  if (params.get("prompt") !== null) $("prompt").value = params.get("prompt");
  if (params.get("n")) $("max-tokens").value = params.get("n");
  if (params.get("chat") === "1") $("chat-mode").checked = true;
  const url = params.get("model") || (served.length ? `models/${served[0]}/` : "");
  $("model-url").value = url;
  state.phase = "idle";
  setBusy(false);
  if (params.get("autorun") === "1" && url) {
    if (await loadUrl(url)) await generate();
  }
}

main();
