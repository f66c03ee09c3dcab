// Types of omex-web (index.js).

export type Backend = "auto" | "webgpu" | "wasm";

export interface Progress {
  /** download | verify | cache (written to or read from the cache) | read (local files) | init (engine start) */
  phase: "download" | "verify" | "cache" | "read" | "init";
  /** The file of the model directory in flight ("" for init). */
  file: string;
  loaded: number;
  total: number;
  fileLoaded: number;
  fileTotal: number;
  fromCache: boolean;
}

export interface LoadOptions {
  backend?: Backend;
  onProgress?: (p: Progress) => void;
  /** Keep a URL's files in the Cache API and read them from there next time (default true). */
  cache?: boolean;
  /** Refuse to let the cache grow past this many bytes (a quota error, as the browser's own). */
  cacheMaxBytes?: number;
  /** KV cache length in tokens (default 2048, capped at the model's context). */
  context?: number;
  /**
   * The wasm (CPU) engine's matrix-product activations: "int8" (the default, as in the native CLI: faster)
   * or "f32" (the reference-exact path). Ignored on WebGPU, which always runs f32.
   */
  activations?: "int8" | "f32";
  /** Run in a Web Worker (default true). */
  worker?: boolean;
}

export interface ChatMessage {
  role: "system" | "user" | "assistant" | string;
  content: string;
}

interface Sampling {
  max_tokens?: number;
  temperature?: number;
  top_p?: number;
  stop?: string | string[];
  seed?: number;
  ignore_eos?: boolean;
}

export interface ChatRequest extends Sampling {
  messages: ChatMessage[];
  stream?: boolean;
}

export interface CompletionRequest extends Sampling {
  prompt: string;
  stream?: boolean;
}

export type FinishReason = "stop" | "length" | "abort";

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

/** omex's own figures, on a completion and on the last chunk of a stream. */
export interface OmexStats {
  promptIds: number[];
  outputIds: number[];
  promptTokens: number;
  promptMs: number;
  decodeSteps: number;
  decodeMs: number;
  promptTokS: number;
  decodeTokS: number;
}

export interface ChatCompletion {
  id: string;
  object: "chat.completion";
  created: number;
  model: string;
  choices: { index: number; message: { role: "assistant"; content: string }; finish_reason: FinishReason; logprobs: null }[];
  usage: Usage;
  omex: OmexStats;
}

export interface ChatCompletionChunk {
  id: string;
  object: "chat.completion.chunk";
  created: number;
  model: string;
  choices: { index: number; delta: { role?: "assistant"; content?: string }; finish_reason: FinishReason | null; logprobs: null }[];
  usage?: Usage;
  omex?: OmexStats;
}

export interface Completion {
  id: string;
  object: "text_completion";
  created: number;
  model: string;
  choices: { index: number; text: string; finish_reason: FinishReason | null; logprobs: null }[];
  usage?: Usage;
  omex?: OmexStats;
}

export interface EngineInfo {
  backend: "webgpu" | "wasm";
  /** "wasm" on the CPU engine; the GPU kernel tier otherwise ("portable", "f16"). */
  tier: string;
  shaderF16: boolean;
  /** Always false: wgpu 30's WebGPU backend does not pass the browser's subgroups feature on. */
  subgroups: boolean;
  subgroupsOffered: boolean;
  describe: string;
  name: string;
  architecture: string;
  parameters: string;
  quantization: string;
  layers: number;
  context: number;
  hasChatTemplate: boolean;
  fromCache: boolean;
  bytes: number;
  downloadMs: number;
  loadMs: number;
}

export interface Chat {
  completions: {
    create(req: ChatRequest & { stream: true }): Promise<AsyncIterable<ChatCompletionChunk>>;
    create(req: ChatRequest & { stream?: false }): Promise<ChatCompletion>;
  };
}

export interface Completions {
  create(req: CompletionRequest & { stream: true }): Promise<AsyncIterable<Completion>>;
  create(req: CompletionRequest & { stream?: false }): Promise<Completion>;
}

export interface MLEngine {
  chat: Chat;
  completions: Completions;
  info(): EngineInfo;
  /** Stops the running generation after the token in flight (finish_reason "abort"). */
  interrupt(): void;
  /** Forgets the conversation in the KV cache. */
  resetChat(): void | Promise<void>;
  unload(): void | Promise<void>;
}

export type ModelSource = string | URL | FileList | File[] | { path: string; file: File }[];

export declare function load(source: ModelSource, options?: LoadOptions): Promise<MLEngine>;

export declare class OmexError extends Error {
  /** "quota" | "corrupt-cache" | "bad-model" | "network" | "no-webgpu" | "bad-request" | "unloaded" | ... */
  code: string;
}

export declare const cache: {
  list(): Promise<{ url: string; name: string; files: number; bytes: number }[]>;
  /** Deletes one cached model, or all of them; resolves to how many were deleted. */
  delete(url?: string): Promise<number>;
};
