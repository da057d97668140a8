// The browser calculator: lora_lab's own estimator (lora_lab.figures.widgets.calculator_answer) under Pyodide.
// Python does every number; this file only reads the controls, fetches a Hub config when asked, and draws.
"use strict";

const PARTS = { weights: "#4c72b0", gradients: "#dd8452", optimizer_states: "#55a868", activations: "#c44e52",
                transient: "#8172b3", overhead: "#937860" };
const GIB = 2 ** 30;
const FIELDS = ["model", "custom", "method", "rank", "targets", "batch_size", "seq_len", "gradient_checkpointing",
                "optimizer", "precision", "gpu", "config"];
const $ = (id) => document.getElementById(id);
let answerFor = null;
let choices = null;
let lastHubConfig = { id: null, text: null };
let generation = 0;

async function start() {
  const started = performance.now();
  const pyodide = await loadPyodide({ indexURL: "pyodide/" });
  const zip = await (await fetch("lora_lab.zip")).arrayBuffer();
  pyodide.unpackArchive(zip, "zip", { extractDir: "/home/pyodide/lora_lab_src" });
  pyodide.runPython("import sys; sys.path.insert(0, '/home/pyodide/lora_lab_src')");
  const answer = pyodide.runPython(
    "import json\nfrom lora_lab.figures import widgets\n" +
    "def answer_json(text):\n    return json.dumps(widgets.calculator_answer(json.loads(text)))\nanswer_json");
  answerFor = (state) => JSON.parse(answer(JSON.stringify(state)));
  choices = JSON.parse(pyodide.runPython("json.dumps(widgets.calculator_choices())"));
  buildControls();
  $("controls").classList.remove("hidden");
  const seconds = (performance.now() - started) / 1000;
  $("status").textContent = `Python ready in ${seconds.toFixed(1)} s (Pyodide, from this site).`;
  document.body.dataset.loadSeconds = seconds.toFixed(2);
  await update();
  document.body.dataset.ready = "1";
}

function buildControls() {
  for (const name of ["model", "method", "targets", "optimizer", "precision", "gpu"]) {
    for (const option of choices[name]) $(name).add(new Option(option, option));
  }
  const defaults = choices.defaults;
  for (const name of FIELDS) {
    const el = $(name);
    if (el.type === "checkbox") el.checked = defaults[name];
    else el.value = defaults[name];
    el.addEventListener("change", update);
  }
}

function readState() {
  const state = {};
  for (const name of FIELDS) {
    const el = $(name);
    if (el.type === "checkbox") state[name] = el.checked;
    else if (el.type === "number") state[name] = el.value.trim() === "" || isNaN(Number(el.value)) ? el.value : Number(el.value);
    else state[name] = el.value;
  }
  return state;
}

const HUB_ID = /^[A-Za-z0-9][\w.-]*\/[\w.-]+$/;

async function hubConfig(id) {
  // One request to the Hub, from the browser; the estimator never touches the network itself.
  if (lastHubConfig.id === id) return lastHubConfig.text;
  let response;
  try {
    response = await fetch(`https://huggingface.co/${id}/resolve/main/config.json`);
  } catch (err) {
    throw new Error(`cannot reach the Hugging Face Hub for ${id} from this browser (offline?): paste its config.json instead.`);
  }
  if (!response.ok) {
    throw new Error(`the Hub answered ${response.status} for ${id}'s config.json (misspelled, private or gated): ` +
                    "paste its config.json instead.");
  }
  const text = await response.text();
  lastHubConfig = { id, text };
  return text;
}

async function update() {
  const mine = ++generation;
  const state = readState();
  $("custom-row").classList.toggle("hidden", state.model !== choices.model.at(-2));
  $("config-row").classList.toggle("hidden", state.model !== choices.model.at(-1));
  let answer;
  const custom = state.custom.trim();
  if (state.model === choices.model.at(-2) && HUB_ID.test(custom) && !choices.model.includes(custom)) {
    try {
      const text = await hubConfig(custom);
      answer = answerFor({ ...state, model: choices.model.at(-1), config: text });
    } catch (err) {
      answer = { error: err.message };
    }
  } else {
    answer = answerFor(state);
  }
  if (mine === generation) show(answer);
}

function show(answer) {
  const verdict = $("verdict");
  verdict.classList.toggle("error", "error" in answer);
  verdict.textContent = answer.error ?? answer.verdict;
  document.body.dataset.total = answer.error ? "" : String(answer.total);
  draw(answer);
}

function draw(answer) {
  const svg = $("chart");
  const table = $("breakdown");
  svg.replaceChildren();
  table.replaceChildren();
  if (answer.error) {
    svg.setAttribute("aria-label", "no estimate: " + answer.error);
    return;
  }
  const width = 900, left = 20, barY = 30, barH = 46;
  const scale = (width - left) / (Math.max(answer.total, answer.gpu_bytes) * 1.05);
  const ns = "http://www.w3.org/2000/svg";
  const add = (tag, attrs, text) => {
    const el = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (text) el.textContent = text;
    svg.appendChild(el);
  };
  let x = left;
  for (const [part, bytes] of Object.entries(answer.breakdown)) {
    add("rect", { x, y: barY, width: bytes * scale, height: barH, fill: PARTS[part] });
    x += bytes * scale;
  }
  const gpuX = left + answer.gpu_bytes * scale;
  add("line", { x1: gpuX, x2: gpuX, y1: 12, y2: barY + barH + 14, stroke: "#000", "stroke-dasharray": "4 3" });
  add("text", { x: Math.min(gpuX, width - 230), y: 10, "font-size": 12 },
      `${$("gpu").value}: ${(answer.gpu_bytes / GIB).toFixed(1)} GiB usable`);
  add("text", { x: left, y: barY + barH + 30, "font-size": 12 }, `needs ${(answer.total / GIB).toFixed(2)} GiB`);
  svg.setAttribute("aria-label", `stacked bar: ${(answer.total / GIB).toFixed(2)} GiB needed against ` +
                   `${(answer.gpu_bytes / GIB).toFixed(1)} GiB usable`);
  const head = table.insertRow();
  for (const h of ["part", "GiB", "bytes"]) head.appendChild(Object.assign(document.createElement("th"), { textContent: h }));
  const row = (label, bytes, color, id) => {
    const tr = table.insertRow();
    tr.dataset.bytes = String(bytes);
    if (id) tr.id = id;
    const name = tr.insertCell();
    if (color) name.appendChild(Object.assign(document.createElement("span"), { className: "swatch", style: `background:${color}` }));
    name.appendChild(document.createTextNode(label));
    tr.insertCell().textContent = (bytes / GIB).toFixed(2);
    tr.insertCell().textContent = bytes.toLocaleString("en-US");
  };
  for (const [part, bytes] of Object.entries(answer.breakdown)) row(part.replace("_", " "), bytes, PARTS[part], `part-${part}`);
  row("total", answer.total, null, "total");
}

start().catch((err) => {
  $("status").textContent = `The calculator could not start: ${err.message}. Reload the page; the notebook 01 calculator does the same offline.`;
  document.body.dataset.ready = "failed";
});
