// The Web Worker side of WorkerEngine: one Engine, driven by messages from the page. Every request carries
// an id; replies are {id, type: "progress" | "chunk" | "result" | "error", ...}. "interrupt" has no reply.

import { Engine } from "./engine.js";
import { list, remove } from "./cache.js";

let engine = null;

function reply(id, type, value) {
  self.postMessage({ id, type, value });
}

function errorValue(e) {
  return { name: (e && e.name) || "Error", code: (e && e.code) || "", message: (e && e.message) || String(e) };
}

async function handle(msg) {
  const { id, op, args } = msg;
  switch (op) {
    case "load": {
      if (engine) engine.unload();
      engine = null;
      engine = await Engine.load(args.source, { ...args.options, onProgress: (p) => reply(id, "progress", p) });
      return engine.info();
    }
    case "create": {
      if (!engine) throw Object.assign(new Error("no model is loaded"), { code: "unloaded" });
      return engine.run(args.kind, args.request, (chunk) => reply(id, "chunk", chunk));
    }
    case "info":
      return engine ? engine.info() : null;
    case "reset":
      if (engine) engine.resetChat();
      return null;
    case "unload":
      if (engine) engine.unload();
      engine = null;
      return null;
    case "cache.list":
      return list();
    case "cache.delete":
      return remove(args.url);
    default:
      throw new Error(`unknown request ${op}`);
  }
}

self.onmessage = (ev) => {
  const msg = ev.data;
  if (msg.op === "interrupt") {
    if (engine) engine.interrupt();
    return;
  }
  handle(msg).then((value) => reply(msg.id, "result", value), (e) => reply(msg.id, "error", errorValue(e)));
};
