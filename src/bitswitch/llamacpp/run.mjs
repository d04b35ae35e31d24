// The llama.cpp side of bitswitch's bridge (bridge.py): node-llama-cpp 3.21.1 on the CPU, driven by
// JSON lines. Each request on stdin is one line {"id", "op", ...}; each answer on stdout is one line
// {"id", "ok": true, "result"} or {"id", "ok": false, "error": "<one line>"}. Requests run one at a time.
//
//   node run.mjs <path of node-llama-cpp's dist/index.js>
//
// ops: load {gguf, threads, context, sequences, lora, lora_scale, kv_cache,
//     flash_attention} (first, once), tokenize {text, special},
// detokenize {tokens}, generate {prompts, max_new_tokens, min_new_tokens, greedy, seed, stop, eos},
// logprobs {tokens}, stats {}, close {}.
import {createInterface} from "node:readline";
import {pathToFileURL} from "node:url";

const writeOut = process.stdout.write.bind(process.stdout);
// stdout carries protocol lines only: anything the library prints goes to stderr
console.log = console.info = console.debug = console.warn = console.error;

const send = (obj) => writeOut(JSON.stringify(obj) + "\n");
const oneLine = (err) => String(err?.message ?? err).split(/\s+/).filter(Boolean).join(" ")
    .replace(/[\x00-\x1f\x7f]/g, "?") || "unknown error";

const moduleFile = process.argv[2];
const LOGPROB_CHUNK = 8;
let lib, llama, model, context, seqs, eogBias, noBias, current = null;

// an error thrown where no request awaits it (inside node-llama-cpp's batch dispatcher) would leave the
// request hanging: answer it with the error and end the process, whose state is then unknown
const fatal = (err) => { send({id: current, ok: false, error: `fatal: ${oneLine(err)}`}); process.exit(1); };
process.on("uncaughtException", fatal);
process.on("unhandledRejection", fatal);

async function load({gguf, threads, context: contextSize, sequences, lora, lora_scale, kv_cache = "F16",
                     flash_attention = null}) {
    lib = await import(pathToFileURL(moduleFile).href);
    llama = await lib.getLlama({
        gpu: false, build: "never", maxThreads: threads, logLevel: "error",
        logger: (level, message) => process.stderr.write(`[llama.cpp ${level}] ${message}\n`),
    });
    model = await llama.loadModel({modelPath: gguf});
    context = await model.createContext({
        contextSize, sequences, threads: {ideal: threads, min: threads},
        lora: lora ? {adapters: [{filePath: lora, scale: lora_scale}]} : undefined,
        experimentalKvCacheKeyType: kv_cache, experimentalKvCacheValueType: kv_cache,
        // null: node-llama-cpp's default ("auto")
        ...(flash_attention == null ? {} : {flashAttention: flash_attention}),
    });
    // every sequence taken once and reused (cleared before each use): a disposed sequence's id comes
    // back to the context asynchronously, so taking a fresh one right after can fail
    seqs = Array.from({length: sequences}, () => context.getSequence());
    // min_new_tokens forbids every end-of-generation token, as transformers' MinNewTokensLogitsProcessor
    // forbids EOS: found once by scanning the vocabulary
    eogBias = new lib.TokenBias(model.tokenizer);
    noBias = new lib.TokenBias(model.tokenizer);
    const vocab = vocabSize();
    for (let t = 0; t < vocab; t++)
        if (model.isEogToken(t)) eogBias.set(t, "never");
    return {
        n_vocab: vocab, bos: model.tokens.bos, eos: model.tokens.eos, context: context.contextSize,
        sequences: context.totalSequences, threads: context.idealThreads, lora: Boolean(lora), kv_cache,
        flash_attention: context.flashAttention,
    };
}

function vocabSize() {
    // the GGUF's tokenizer list is the vocabulary llama.cpp samples over
    return model.fileInfo.metadata.tokenizer.ggml.tokens.length;
}

async function generate({prompts, max_new_tokens, min_new_tokens, greedy, seed, stop, eos}) {
    if (prompts.length > context.totalSequences)
        throw new Error(`${prompts.length} prompts need ${prompts.length} sequences and the context has ` +
                        `${context.totalSequences}: open it with sequences=${prompts.length}`);
    for (const seq of seqs) await seq.clearHistory();
    const t0 = performance.now();
    // one generator per sequence, run concurrently: node-llama-cpp queues the sequences' tokens into
    // one llama_decode per step when every sequence has queued (measured: 8 sequences x 32 steps took
    // 38 decodes), which is what batching means here
    const rows = await Promise.all(prompts.map((prompt, i) => generateOne(seqs[i], prompt, {
        max_new_tokens, min_new_tokens, greedy, seed: seed + i, stop, eos})));
    const firstAt = Math.max(...rows.map((r) => r.firstAt ?? t0));
    const endAt = Math.max(...rows.map((r) => r.endAt));
    return {
        tokens: rows.map((r) => r.tokens), texts: rows.map((r) => r.text),
        prompt_tokens: prompts.map((p) => p.length), new_tokens: rows.map((r) => r.tokens.length),
        prefill_s: (firstAt - t0) / 1000, decode_s: (endAt - firstAt) / 1000,
    };
}

async function generateOne(seq, prompt, {max_new_tokens, min_new_tokens, greedy, seed, stop, eos}) {
    const tokens = [];
    const sampling = greedy ? {temperature: 0} : {temperature: 1, topK: 0, topP: 1, minP: 0, seed};
    const it = seq.evaluate(prompt, {
        ...sampling, yieldEogToken: true,
        tokenBias: () => (tokens.length < min_new_tokens ? eogBias : noBias),
    });
    let firstAt, text = null;
    try {
        while (tokens.length < max_new_tokens) {
            const step = await it.next();
            if (step.done) break;
            tokens.push(step.value);
            if (tokens.length === 1) firstAt = performance.now();
            if (tokens.length < min_new_tokens) continue;
            if (eos && model.isEogToken(step.value)) break;
            if (stop.length) {
                const sofar = model.detokenize(tokens);
                const at = Math.min(...stop.map((s) => sofar.indexOf(s)).filter((i) => i >= 0));
                if (Number.isFinite(at)) { text = sofar.slice(0, at); break; }
            }
        }
    } finally {
        await it.return();
    }
    return {tokens, firstAt, endAt: performance.now(), text: text ?? model.detokenize(tokens)};
}

async function logprobs({tokens}) {
    // log p(tokens[i] | tokens[:i]) for i >= 1: the full next-token distribution at every position
    // (greedy sampler: a softmax of the raw logits over the whole vocabulary). Evaluated in chunks
    // that extend one sequence's state: a whole window's distributions at once (a JS Map of the
    // vocabulary each) would hold gigabytes.
    const seq = seqs[0];
    await seq.clearHistory();
    const inputs = tokens.slice(0, -1);
    const out = [];
    try {
        for (let start = 0; start < inputs.length; start += LOGPROB_CHUNK) {
            const chunk = inputs.slice(start, start + LOGPROB_CHUNK);
            const res = await seq.controlledEvaluate(chunk.map((t) => [t, {generateNext: {probabilities: true}}]));
            chunk.forEach((_, i) => {
                const p = res[i]?.next?.probabilities?.get(tokens[start + i + 1]);
                if (p == null) throw new Error(`no probability came back for position ${start + i + 1}`);
                out.push(Math.log(p));
            });
        }
        return out;
    } finally {
        await seq.clearHistory();
    }
}

const ops = {
    load,
    tokenize: ({text, special}) => Array.from(model.tokenize(text, special)),
    detokenize: ({tokens}) => model.detokenize(tokens),
    generate,
    logprobs,
    stats: () => ({max_rss_kib: process.resourceUsage().maxRSS}),
    close: async () => { await llama?.dispose(); return null; },
};

const lines = createInterface({input: process.stdin, crlfDelay: Infinity});
for await (const line of lines) {
    if (!line.trim()) continue;
    let id = null;
    try {
        const req = JSON.parse(line);
        id = current = req.id ?? null;
        const op = ops[req.op];
        if (!op) throw new Error(`unknown op ${JSON.stringify(req.op)}`);
        if (req.op !== "load" && req.op !== "close" && !model) throw new Error("load the model first");
        const result = await op(req);
        send({id, ok: true, result});
        if (req.op === "close") break;
    } catch (err) {
        send({id, ok: false, error: oneLine(err)});
    }
}
process.exit(0);
