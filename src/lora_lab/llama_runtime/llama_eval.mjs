// Evaluate token sequences with llama.cpp (through node-llama-cpp's prebuilt CPU build) and print
// the raw next-token logits as JSON. Written for lora_lab.experiments.export; run with: node llama_eval.mjs request.json
// Request: {n_vocab, threads?, context_size?,
//           jobs: [{model, lora?, lora_scale?, texts?: [str], runs: [{tokens: [int], n_generate: int}]}]}
// Reply:   {jobs: [{bos, eos, add_bos, tokenized: [[int]], runs: [{logits: [[float]], generated: [int]}]}]}
import fs from "node:fs";
import {getLlama, LlamaLogLevel} from "node-llama-cpp";

const req = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const llama = await getLlama({
    gpu: false, build: "never", usePrebuiltBinaries: true, skipDownload: true,
    logLevel: LlamaLogLevel.error, progressLogs: false,
});

function toArray(logitMap) {
    const out = new Array(req.n_vocab).fill(null);
    for (const [token, value] of logitMap) if (token < req.n_vocab) out[token] = value;
    return out;
}

function argmax(values) {
    let best = 0;
    for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
    return best;
}

const wantLogits = {generateNext: {logits: true}};

async function runJob(job) {
    const model = await llama.loadModel({modelPath: job.model, gpuLayers: 0});
    const contextOptions = {contextSize: req.context_size ?? 512, sequences: 1, threads: req.threads ?? 1};
    if (job.lora) contextOptions.lora = {adapters: [{filePath: job.lora, scale: job.lora_scale ?? 1}]};
    const context = await model.createContext(contextOptions);
    const sequence = context.getSequence();
    const runs = [];
    for (const run of job.runs) {
        await sequence.clearHistory();
        const input = run.tokens.map((t, i) => (i === run.tokens.length - 1 ? [t, wantLogits] : t));
        let out = await sequence.controlledEvaluate(input);
        let logits = toArray(out[input.length - 1].next.logits);
        const steps = [logits];
        const generated = [];
        for (let k = 0; k < (run.n_generate ?? 0); k++) {
            const token = argmax(logits);
            generated.push(token);
            if (k + 1 === run.n_generate) break;
            out = await sequence.controlledEvaluate([[token, wantLogits]]);
            logits = toArray(out[0].next.logits);
            steps.push(logits);
        }
        runs.push({logits: steps, generated});
    }
    const tokenized = (job.texts ?? []).map((text) => Array.from(model.tokenize(text, true)));
    const reply = {bos: model.tokens.bos, eos: model.tokens.eos, add_bos: model.tokens.shouldPrependBosToken,
                   tokenized, runs};
    await context.dispose();
    await model.dispose();
    return reply;
}

const jobs = [];
for (const job of req.jobs) jobs.push(await runJob(job));
process.stdout.write(JSON.stringify({jobs}));
await llama.dispose();
