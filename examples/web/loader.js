// Getting the files of a model.omex/ directory into the page: over HTTP (metadata.json first: it lists every
// other file and its size, so progress is exact), or from a folder a person picked or dropped.

/// Fetches `url` into one Uint8Array, calling onBytes(n) as chunks arrive.
async function fetchBytes(url, expected, onBytes) {
  const resp = await fetch(url);
  if (!resp.ok) throw new Error(`${url}: HTTP ${resp.status} ${resp.statusText}`);
  if (!resp.body) {
    const buf = new Uint8Array(await resp.arrayBuffer());
    onBytes(buf.length);
    return buf;
  }
  const reader = resp.body.getReader();
  let buf = new Uint8Array(expected > 0 ? expected : 1 << 16);
  let len = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (len + value.length > buf.length) {
      const bigger = new Uint8Array(Math.max(buf.length * 2, len + value.length));
      bigger.set(buf.subarray(0, len));
      buf = bigger;
    }
    buf.set(value, len);
    len += value.length;
    onBytes(value.length);
  }
  return len === buf.length ? buf : buf.slice(0, len);
}

/// A model served over HTTP at `base` (a URL ending in the model directory). Calls
/// onProgress({done, total, file}) and add(path, bytes) for every file; returns the metadata.
export async function fetchModel(base, add, onProgress) {
  if (!base.endsWith("/")) base += "/";
  const metaUrl = new URL("metadata.json", new URL(base, location.href));
  const metaBytes = await fetchBytes(metaUrl.href, 0, () => {});
  let meta;
  try {
    meta = JSON.parse(new TextDecoder().decode(metaBytes));
  } catch (e) {
    throw new Error(`${metaUrl.href} is not an omex metadata.json (${e.message}): is this a model.omex/ directory?`);
  }
  if (!Array.isArray(meta.files)) throw new Error(`${metaUrl.href}: no "files" list; convert the model again`);
  add("metadata.json", metaBytes);
  const total = meta.files.reduce((s, f) => s + f.bytes, 0);
  let done = 0;
  // Two requests at a time: the server and the page overlap, and memory stays one file or two ahead.
  const queue = meta.files.slice();
  async function worker() {
    while (queue.length) {
      const f = queue.shift();
      const url = new URL(f.path.split("/").map(encodeURIComponent).join("/"), metaUrl).href;
      const bytes = await fetchBytes(url, f.bytes, (n) => {
        done += n;
        onProgress({ done, total, file: f.path });
      });
      add(f.path, bytes);
    }
  }
  await Promise.all([worker(), worker()]);
  onProgress({ done: total, total, file: "" });
  return meta;
}

/// The model directory among `files` ([{path, file}], paths with "/"): the shallowest folder holding a
/// metadata.json. Returns {name, files: [{path (inside the model), file}]}.
export function findModelRoot(files) {
  const metas = files.filter((f) => f.path === "metadata.json" || f.path.endsWith("/metadata.json"));
  if (!metas.length) throw new Error("no metadata.json among these files: pick or drop the model.omex folder itself");
  metas.sort((a, b) => a.path.split("/").length - b.path.split("/").length);
  const prefix = metas[0].path.slice(0, -"metadata.json".length);
  const name = prefix.replace(/\/$/, "").split("/").pop() || "model";
  const inside = files.filter((f) => f.path.startsWith(prefix)).map((f) => ({ path: f.path.slice(prefix.length), file: f.file }));
  return { name, files: inside };
}

/// Files from an <input type=file webkitdirectory>.
export function pickedFiles(fileList) {
  return Array.from(fileList).map((file) => ({ path: file.webkitRelativePath || file.name, file }));
}

/// Files from a drop: folders are walked (DataTransferItem.webkitGetAsEntry), loose files kept as they are.
export async function droppedFiles(dataTransfer) {
  const entries = Array.from(dataTransfer.items || [])
    .map((item) => (item.webkitGetAsEntry ? item.webkitGetAsEntry() : null))
    .filter(Boolean);
  if (!entries.length) return Array.from(dataTransfer.files).map((file) => ({ path: file.name, file }));
  const out = [];
  async function walk(entry, path) {
    if (entry.isFile) {
      const file = await new Promise((res, rej) => entry.file(res, rej));
      out.push({ path: path + entry.name, file });
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((res, rej) => reader.readEntries(res, rej));
        if (!batch.length) break;
        for (const e of batch) await walk(e, path + entry.name + "/");
      }
    }
  }
  for (const e of entries) await walk(e, "");
  return out;
}

/// Reads local files ([{path, file}]) with progress, calling add(path, bytes) for each.
export async function readLocal(files, add, onProgress) {
  const total = files.reduce((s, f) => s + f.file.size, 0);
  let done = 0;
  for (const f of files) {
    add(f.path, new Uint8Array(await f.file.arrayBuffer()));
    done += f.file.size;
    onProgress({ done, total, file: f.path });
  }
}
