// Runs a wasm32-wasip1 program (a test binary or the kernel bench) under Node's WASI, the cargo runner of
// scripts/wasm-bench.sh and scripts/wasm-test.sh:
//
//   node --no-warnings benches/wasm/wasi-run.mjs PROGRAM.wasm [ARGS...]
//
// The program sees its arguments and the environment, the current directory preopened as `.` and the file
// system root as `/` (the kernel tests read their fixtures by absolute path); its exit status is this
// process's. Run only programs built from this repository.
import { readFile } from "node:fs/promises";
import { WASI } from "node:wasi";
import process from "node:process";

const [path, ...args] = process.argv.slice(2);
if (!path) {
  console.error("usage: node wasi-run.mjs PROGRAM.wasm [ARGS...]");
  process.exit(2);
}
const wasi = new WASI({ version: "preview1", args: [path, ...args], env: process.env, preopens: { ".": ".", "/": "/" },
  returnOnExit: true });
const module = await WebAssembly.compile(await readFile(path));
const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
process.exitCode = wasi.start(instance);
