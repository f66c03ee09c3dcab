// The model cache and the model sources. A model.omex/ directory served over HTTP is downloaded file by file
// (metadata.json first: it lists every other file with its size and SHA-256), each file's hash checked, and
// kept in the Cache API under its SHA-256 and read back to check the hash again; a model's manifest (its
// metadata.json, under the model's URL) is written only after every file is stored and checked, so a load that fails half-way leaves no model that looks
// complete. A later load of the same URL reads the manifest and the files from the cache, checks each hash
// again, and makes no request.

const CACHE_NAME = "omex-models-v1";
const ORIGIN = "https://omex.cache.invalid";
// metadata.json is read before its sizes are known: refuse anything larger than a metadata file can be.
const MAX_METADATA_BYTES = 16 << 20;
// A bound on what one metadata.json may list, checked before anything is downloaded.
const MAX_FILES = 100000;
const MAX_MODEL_BYTES = 2 ** 45;

export class OmexError extends Error {
  constructor(code, message) {
    super(message);
    this.name = "OmexError";
    this.code = code; // "quota" | "corrupt-cache" | "bad-model" | "network" | "bad-request" | ...
  }
}

const fileKey = (sha) => `${ORIGIN}/sha256/${sha}`;
const modelKey = (url) => `${ORIGIN}/model/${encodeURIComponent(url)}`;

function mib(n) {
  return `${(n / (1 << 20)).toFixed(1)} MiB`;
}

export async function sha256Hex(bytes) {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

function cachesApi() {
  return typeof caches !== "undefined" ? caches : null;
}

/// The files metadata.json lists, each checked: a path inside the directory, a whole byte count, a SHA-256.
export function checkedFileList(meta, where) {
  if (!meta || !Array.isArray(meta.files)) throw new OmexError("bad-model", `${where}: no "files" list; convert the model again`);
  if (meta.files.length > MAX_FILES) throw new OmexError("bad-model", `${where}: lists ${meta.files.length} files (at most ${MAX_FILES})`);
  let total = 0;
  const files = meta.files.map((f, i) => {
    const path = f && f.path;
    const ok = typeof path === "string" && path !== "" && !path.startsWith("/") && !path.includes("\\") &&
      path.split("/").every((p) => p !== "" && p !== "." && p !== "..");
    if (!ok) throw new OmexError("bad-model", `${where}: files[${i}].path ${JSON.stringify(path)} is not a path inside the model`);
    if (!Number.isSafeInteger(f.bytes) || f.bytes < 0 || f.bytes > MAX_MODEL_BYTES) {
      throw new OmexError("bad-model", `${where}: files[${i}].bytes (${f.bytes}) is not a byte count`);
    }
    if (typeof f.sha256 !== "string" || !/^[0-9a-fA-F]{64}$/.test(f.sha256)) {
      throw new OmexError("bad-model", `${where}: files[${i}].sha256 is not a SHA-256 (convert the model again)`);
    }
    total += f.bytes;
    return { path, bytes: f.bytes, sha256: f.sha256.toLowerCase() };
  });
  if (total > MAX_MODEL_BYTES) throw new OmexError("bad-model", `${where}: the files add up to ${total} bytes`);
  return { files, total };
}

async function fetchBytes(url, limit, onBytes) {
  let resp;
  try {
    resp = await fetch(url, { cache: "no-store" });
  } catch (e) {
    throw new OmexError("network", `${url}: ${e.message}`);
  }
  if (!resp.ok) throw new OmexError("network", `${url}: HTTP ${resp.status} ${resp.statusText}`);
  const chunks = [];
  let len = 0;
  const reader = resp.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    len += value.length;
    if (len > limit) {
      await reader.cancel();
      throw new OmexError("bad-model", `${url}: more than ${limit} bytes`);
    }
    chunks.push(value);
    onBytes(value.length);
  }
  const out = new Uint8Array(len);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

function isQuotaError(e) {
  return e && (e.name === "QuotaExceededError" || e.code === 22 || /quota/i.test(String(e.message)));
}

async function quotaMessage(what, bytes, why) {
  let est = "";
  try {
    const q = await navigator.storage.estimate();
    est = `; the browser allows this site ${mib(q.quota)} and ${mib(q.usage)} is used`;
  } catch {
    /* no estimate in this browser */
  }
  return `the browser's storage quota is exceeded while caching ${what} (${mib(bytes)}: ${why})${est}. Nothing of this ` +
    `model was kept. Free space with omex.cache.delete(), or load with { cache: false } to run without caching`;
}

/// A Cache API store, or a stand-in whose writes fail (tests pass `maxBytes` to simulate a small quota).
class Store {
  constructor(cache, maxBytes) {
    this.cache = cache;
    this.maxBytes = maxBytes;
    this.written = [];
  }

  async put(key, bytes) {
    if (this.maxBytes !== undefined) {
      const used = (await this.usage()) + bytes.length;
      if (used > this.maxBytes) throw new DOMException(`cache limit of ${this.maxBytes} bytes`, "QuotaExceededError");
    }
    await this.cache.put(key, new Response(bytes, { headers: { "content-length": String(bytes.length) } }));
    this.written.push(key);
  }

  async usage() {
    let n = 0;
    for (const req of await this.cache.keys()) {
      if (req.url.startsWith(`${ORIGIN}/sha256/`)) n += Number((await this.cache.match(req)).headers.get("content-length")) || 0;
    }
    return n;
  }

  /// Removes what this load wrote (a failed load leaves nothing behind).
  async rollback() {
    for (const key of this.written) await this.cache.delete(key);
    this.written = [];
  }
}

/// Loads the files of the model at `url` (a model.omex/ directory) into `add(path, bytes)`, from the cache
/// when a complete copy is there, else over the network (and then into the cache, unless `useCache` is
/// false). `onProgress({phase, file, loaded, total, fileLoaded, fileTotal, fromCache})`. Returns
/// `{fromCache, bytes, files}`.
export async function loadFromUrl(url, add, onProgress, { useCache = true, maxCacheBytes } = {}) {
  const base = new URL(url.endsWith("/") ? url : url + "/", globalThis.location ? globalThis.location.href : undefined).href;
  const api = useCache ? cachesApi() : null;
  const cache = api ? await api.open(CACHE_NAME) : null;
  if (cache) {
    const manifest = await cache.match(modelKey(base));
    if (manifest) return readCached(cache, base, new Uint8Array(await manifest.arrayBuffer()), add, onProgress);
  }
  const metaUrl = new URL("metadata.json", base).href;
  const metaBytes = await fetchBytes(metaUrl, MAX_METADATA_BYTES, () => {});
  let meta;
  try {
    meta = JSON.parse(new TextDecoder().decode(metaBytes));
  } catch (e) {
    throw new OmexError("bad-model", `${metaUrl} is not an omex metadata.json (${e.message}): is ${base} a model.omex/ directory?`);
  }
  const { files, total } = checkedFileList(meta, metaUrl);
  const store = cache ? new Store(cache, maxCacheBytes) : null;
  let loaded = 0;
  try {
    for (const f of files) {
      const fileUrl = new URL(f.path.split("/").map(encodeURIComponent).join("/"), base).href;
      let fileLoaded = 0;
      const report = (phase) => onProgress({ phase, file: f.path, loaded, total, fileLoaded, fileTotal: f.bytes, fromCache: false });
      const bytes = await fetchBytes(fileUrl, f.bytes, (n) => {
        loaded += n;
        fileLoaded += n;
        report("download");
      });
      if (bytes.length !== f.bytes) {
        throw new OmexError("bad-model", `${fileUrl}: ${bytes.length} bytes, metadata.json says ${f.bytes}`);
      }
      report("verify");
      if ((await sha256Hex(bytes)) !== f.sha256) {
        throw new OmexError("bad-model", `${fileUrl}: its SHA-256 differs from metadata.json's (a damaged or mixed download)`);
      }
      if (store && !(await cache.match(fileKey(f.sha256)))) {
        report("cache");
        await store.put(fileKey(f.sha256), bytes);
        // Read back what was written: a model counts as cached only when every stored copy hashes right.
        const back = await cache.match(fileKey(f.sha256));
        if (!back || (await sha256Hex(new Uint8Array(await back.arrayBuffer()))) !== f.sha256) {
          throw new OmexError("corrupt-cache", `${f.path}: the copy written to the cache reads back wrong; nothing of ${base} was kept`);
        }
      }
      add(f.path, bytes);
    }
    // Every file is stored and was checked: only now does the model count as cached.
    if (store) await store.put(modelKey(base), metaBytes);
  } catch (e) {
    if (store) await store.rollback().catch(() => {});
    if (isQuotaError(e)) throw new OmexError("quota", await quotaMessage(base, total, e.message));
    throw e;
  }
  add("metadata.json", metaBytes);
  return { fromCache: false, bytes: total, files: files.length };
}

async function readCached(cache, base, metaBytes, add, onProgress) {
  const { files, total } = checkedFileList(JSON.parse(new TextDecoder().decode(metaBytes)), `the cached metadata.json of ${base}`);
  let loaded = 0;
  const damaged = [];
  for (const f of files) {
    const hit = await cache.match(fileKey(f.sha256));
    const bytes = hit ? new Uint8Array(await hit.arrayBuffer()) : null;
    if (!bytes || bytes.length !== f.bytes || (await sha256Hex(bytes)) !== f.sha256) {
      damaged.push(`${f.path} (${bytes ? "its SHA-256 no longer matches" : "missing"})`);
      await cache.delete(fileKey(f.sha256));
      continue;
    }
    loaded += bytes.length;
    onProgress({ phase: "cache", file: f.path, loaded, total, fileLoaded: bytes.length, fileTotal: f.bytes, fromCache: true });
    add(f.path, bytes);
  }
  if (damaged.length) {
    await cache.delete(modelKey(base));
    throw new OmexError("corrupt-cache", `the cached copy of ${base} is damaged: ${damaged.join(", ")}. The damaged ` +
      "entries were removed from the cache; load again to download them");
  }
  add("metadata.json", metaBytes);
  return { fromCache: true, bytes: total, files: files.length };
}

/// The models in the cache: [{url, name, files, bytes}].
export async function list() {
  const api = cachesApi();
  if (!api || !(await api.has(CACHE_NAME))) return [];
  const cache = await api.open(CACHE_NAME);
  const out = [];
  for (const req of await cache.keys()) {
    if (!req.url.startsWith(`${ORIGIN}/model/`)) continue;
    const url = decodeURIComponent(req.url.slice(`${ORIGIN}/model/`.length));
    const meta = JSON.parse(await (await cache.match(req)).text());
    const { files, total } = checkedFileList(meta, `the cached metadata.json of ${url}`);
    out.push({ url, name: meta.model_name || "", files: files.length, bytes: total });
  }
  return out;
}

/// Deletes the cached model at `url` (as list() gives it), or every cached model when `url` is omitted.
/// Files another cached model still uses are kept. Returns the number of models deleted.
export async function remove(url) {
  const api = cachesApi();
  if (!api || !(await api.has(CACHE_NAME))) return 0;
  if (url === undefined) {
    const n = (await list()).length;
    await api.delete(CACHE_NAME);
    return n;
  }
  const cache = await api.open(CACHE_NAME);
  const base = new URL(url.endsWith("/") ? url : url + "/", globalThis.location ? globalThis.location.href : undefined).href;
  const manifest = await cache.match(modelKey(base));
  if (!manifest) return 0;
  const { files } = checkedFileList(JSON.parse(await manifest.text()), `the cached metadata.json of ${base}`);
  await cache.delete(modelKey(base));
  const kept = new Set();
  for (const m of await list()) {
    const other = JSON.parse(await (await cache.match(modelKey(m.url))).text());
    for (const f of other.files) kept.add(String(f.sha256).toLowerCase());
  }
  for (const f of files) if (!kept.has(f.sha256)) await cache.delete(fileKey(f.sha256));
  return 1;
}

/// Local files ([{path, file}], as picked or dropped; the model folder found among them) into `add`,
/// each checked against metadata.json's size and SHA-256.
export async function loadFromFiles(entries, add, onProgress) {
  const metas = entries.filter((f) => f.path === "metadata.json" || f.path.endsWith("/metadata.json"));
  if (!metas.length) throw new OmexError("bad-model", "no metadata.json among these files: pick the model.omex folder itself");
  metas.sort((a, b) => a.path.split("/").length - b.path.split("/").length);
  const prefix = metas[0].path.slice(0, -"metadata.json".length);
  const byPath = new Map(entries.filter((f) => f.path.startsWith(prefix)).map((f) => [f.path.slice(prefix.length), f.file]));
  const metaBytes = new Uint8Array(await byPath.get("metadata.json").arrayBuffer());
  const { files, total } = checkedFileList(JSON.parse(new TextDecoder().decode(metaBytes)), `${prefix}metadata.json`);
  let loaded = 0;
  for (const f of files) {
    const file = byPath.get(f.path);
    if (!file) throw new OmexError("bad-model", `${prefix}${f.path}: missing (metadata.json lists it)`);
    if (file.size !== f.bytes) throw new OmexError("bad-model", `${prefix}${f.path}: ${file.size} bytes, metadata.json says ${f.bytes}`);
    const bytes = new Uint8Array(await file.arrayBuffer());
    if ((await sha256Hex(bytes)) !== f.sha256) throw new OmexError("bad-model", `${prefix}${f.path}: its SHA-256 differs from metadata.json's`);
    loaded += bytes.length;
    onProgress({ phase: "read", file: f.path, loaded, total, fileLoaded: bytes.length, fileTotal: f.bytes, fromCache: false });
    add(f.path, bytes);
  }
  add("metadata.json", metaBytes);
  return { fromCache: false, bytes: total, files: files.length, name: prefix.replace(/\/$/, "").split("/").pop() || "model" };
}
