// llama.cpp peer for tests/bench/peers.py, through the npm package node-llama-cpp (pinned in
// package.json / package-lock.json beside this file; installed OUTSIDE the repo by
// tests/bench/setup_llamacpp.sh).
//
//   node tests/bench/llamacpp/bench.mjs --modules /work/node-peers --model FILE.gguf \
//       [--threads 2] [--iters 10] [--warmup 2] [--seq-len 128] [--decode-tokens 64]
//
// Each repetition: seq.clearHistory(), then seq.evaluate(prompt, {temperature: 0}) (greedy);
// the time to the first sampled token is the prefill of the prompt, the next --decode-tokens
// sampled tokens are decode. CPU only (getLlama({gpu: false, build: "never"}), gpuLayers 0).
// stdout: one JSON object with the raw per-repetition seconds (prefill_s, decode_s) and the
// set-up; peers.py turns them into the usual row. Progress and llama.cpp's log go to stderr.
import { createRequire } from "node:module";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { readFileSync } from "node:fs";
import { performance } from "node:perf_hooks";
import { parseArgs } from "node:util";

const { values: opt } = parseArgs({
    options: {
        modules: { type: "string", default: process.env.KILN_LLAMACPP_DIR || "/work/node-peers" },
        model: { type: "string" },
        threads: { type: "string", default: "2" },
        iters: { type: "string", default: "10" },
        warmup: { type: "string", default: "2" },
        "seq-len": { type: "string", default: "128" },
        "decode-tokens": { type: "string", default: "64" },
        "context-size": { type: "string", default: "512" },
        "batch-size": { type: "string", default: "512" },
    },
});
const int = (k) => {
    const v = Number.parseInt(opt[k], 10);
    if (!Number.isFinite(v) || v < 0) throw new Error(`--${k}: not a count: ${opt[k]}`);
    return v;
};
if (!opt.model) throw new Error("--model FILE.gguf is required");
const threads = int("threads"), iters = int("iters"), warmup = int("warmup");
const seqLen = int("seq-len"), decodeTokens = int("decode-tokens");
const contextSize = int("context-size"), batchSize = int("batch-size");
if (seqLen + decodeTokens + 1 > contextSize) throw new Error("seq-len + decode-tokens + 1 exceeds --context-size");

// Resolve node-llama-cpp from the install folder, not from this script's folder (the repo has no node_modules).
const modules = resolve(opt.modules);
const req = createRequire(join(modules, "package.json"));
const entry = req.resolve("node-llama-cpp");
const pkgVersion = JSON.parse(readFileSync(join(modules, "node_modules", "node-llama-cpp", "package.json"), "utf8")).version;
const { getLlama, LlamaLogLevel } = await import(pathToFileURL(entry).href);

const log = (...a) => console.error("[llama.cpp]", ...a);
const llama = await getLlama({ gpu: false, build: "never", maxThreads: threads, logLevel: LlamaLogLevel.warn });
let t0 = performance.now();
const model = await llama.loadModel({ modelPath: resolve(opt.model), gpuLayers: 0 });
const loadMs = performance.now() - t0;
t0 = performance.now();
const context = await model.createContext({
    contextSize, batchSize, sequences: 1, threads: { ideal: threads, min: threads },
});
const contextMs = performance.now() - t0;
const seq = context.getSequence();

// The prompt: a fixed English text tokenised and repeated/cut to exactly seqLen ids (no BOS).
const TEXT = "The quick brown fox jumps over the lazy dog. A compiler turns a description of a model into " +
    "machine code, and a benchmark measures how long that code takes to run on a given machine. ";
const base = model.tokenize(TEXT);
const prompt = [];
while (prompt.length < seqLen) prompt.push(...base);
prompt.length = seqLen;

const prefill = [], decode = [];
let generated = null;
for (let i = 0; i < warmup + iters; i++) {
    await seq.clearHistory();
    const out = [];
    const ts = performance.now();
    let tFirst = 0;
    for await (const tok of seq.evaluate(prompt, { temperature: 0 })) {
        out.push(tok);
        if (out.length === 1) tFirst = performance.now();
        if (out.length === decodeTokens + 1) break;
    }
    const tEnd = performance.now();
    if (out.length !== decodeTokens + 1) throw new Error(`evaluate stopped after ${out.length} tokens`);
    if (i >= warmup) {
        prefill.push((tFirst - ts) / 1e3);
        decode.push((tEnd - tFirst) / 1e3);
    }
    if (generated === null) generated = out;
    else if (out.some((t, j) => t !== generated[j])) log(`warning: repetition ${i} generated different tokens`);
    log(`rep ${i}${i < warmup ? " (warmup)" : ""}: prefill ${(tFirst - ts).toFixed(1)} ms, decode ${(decodeTokens / ((tEnd - tFirst) / 1e3)).toFixed(1)} tok/s`);
}

const release = llama.llamaCppRelease;
console.log(JSON.stringify({
    node_llama_cpp: pkgVersion,
    llama_cpp_release: release ? `${release.repo}@${release.release}` : null,
    build_type: llama.buildType,
    gpu: llama.gpu,
    system_info: llama.systemInfo,
    model_path: resolve(opt.model),
    model_size_bytes: model.size,
    threads: context.idealThreads ?? threads,
    context_size: context.contextSize,
    batch_size: context.batchSize,
    flash_attention: context.flashAttention,
    seq_len: seqLen,
    decode_tokens: decodeTokens,
    load_ms: Math.round(loadMs * 10) / 10,
    context_ms: Math.round(contextMs * 10) / 10,
    prompt_head: prompt.slice(0, 8),
    generated_head: generated ? generated.slice(0, 16) : null,
    prefill_s: prefill,
    decode_s: decode,
}));
await context.dispose();
await model.dispose();
await llama.dispose();
