// The "Try it" page: controls, onnxruntime-web, and two 4 x 4 grids (x_t and x0_hat) redrawn at every step.
// The mathematics is in sampler.js; this file wires it to the page.
import { sample } from "./sampler.js";

const HERE = new URL("./", import.meta.url);
const MODELS = new URL("models/", HERE);
const ORT = new URL("../ort/", HERE);
const N = 16; // a 4 x 4 grid
const SCALE = 2; // canvas pixels per image pixel

const params = new URLSearchParams(window.location.search);
const root = document.getElementById("ddpm-try-it");
const $ = (id) => root.querySelector(`#${id}`);
const status = $("try-status");
const sessions = {};
let stopRequested = false;

function setStatus(text, state) {
  status.textContent = text;
  status.dataset.state = state;
  status.classList.toggle("try-error", state === "error");
}

function setRunning(running) {
  for (const el of root.querySelectorAll("select, input, #try-generate")) el.disabled = running;
  $("try-stop").disabled = !running;
  $("try-guidance").disabled = running || $("try-digit").value === "none";
}

function loadScript(url) {
  return new Promise((resolve, reject) => {
    const script = document.createElement("script");
    script.src = url;
    script.onload = resolve;
    script.onerror = () => reject(new Error(`could not load ${url}`));
    document.head.appendChild(script);
  });
}

async function runtime() {
  if (!window.ort) {
    await loadScript(new URL("ort.wasm.min.js", ORT).href);
    window.ort.env.wasm.wasmPaths = ORT.href; // served with the site: no CDN
    window.ort.env.wasm.numThreads = 1; // no SharedArrayBuffer, so no cross-origin isolation needed
    window.ort.env.wasm.proxy = false;
    if (params.get("simd") === "0") window.ort.env.wasm.simd = false; // the plain WebAssembly build
  }
  return window.ort;
}

async function model(name) {
  if (!sessions[name]) {
    const response = await fetch(new URL(`${name}.json`, MODELS));
    if (!response.ok) throw new Error(`no model tables at ${response.url} (${response.status})`);
    const tables = await response.json();
    const ort = await runtime();
    const session = await ort.InferenceSession.create(new URL(tables.onnx, MODELS).href, {
      executionProviders: ["wasm"],
    });
    sessions[name] = { tables, session };
  }
  return sessions[name];
}

function predictor(ort, session, conditional) {
  return async (x, t, labels, n) => {
    const feeds = {
      x: new ort.Tensor("float32", x, [n, 1, 28, 28]),
      t: new ort.Tensor("int64", BigInt64Array.from({ length: n }, () => BigInt(t)), [n]),
    };
    if (conditional) feeds.y = new ort.Tensor("int64", BigInt64Array.from(labels, (y) => BigInt(y)), [n]);
    const output = await session.run(feeds);
    return output.eps.data;
  };
}

function draw(canvas, images) {
  const side = 4 * 28;
  const context = canvas.getContext("2d");
  const picture = context.createImageData(side * SCALE, side * SCALE);
  for (let k = 0; k < N; k++) {
    const [row, col] = [Math.floor(k / 4), k % 4];
    for (let i = 0; i < 28; i++) {
      for (let j = 0; j < 28; j++) {
        const value = Math.min(1, Math.max(-1, images[k * 784 + i * 28 + j]));
        const grey = Math.round(((value + 1) / 2) * 255);
        for (let di = 0; di < SCALE; di++) {
          for (let dj = 0; dj < SCALE; dj++) {
            const y = (row * 28 + i) * SCALE + di;
            const x = (col * 28 + j) * SCALE + dj;
            const at = 4 * (y * side * SCALE + x);
            picture.data.set([grey, grey, grey, 255], at);
          }
        }
      }
    }
  }
  context.putImageData(picture, 0, 0);
}

async function generate() {
  stopRequested = false;
  setRunning(true);
  try {
    const digit = $("try-digit").value;
    const steps = Number($("try-steps").value);
    const seed = Number($("try-seed").value);
    const w = digit === "none" ? 0 : Number($("try-guidance").value);
    const sampler = $("try-sampler").value;
    if (!Number.isInteger(steps) || steps < 1 || steps > 1000) throw new Error("steps must be an integer in 1..1000");
    if (!Number.isInteger(seed) || seed < 0) throw new Error("the seed must be a non-negative integer");
    if (!Number.isFinite(w) || w < -1) throw new Error("guidance w must be a number >= -1");
    const name = digit === "none" ? "ddpm_mnist" : "ddpm_mnist_cond";
    setStatus(`loading ${name} ...`, "loading");
    const { tables, session } = await model(name);
    const ort = await runtime();
    const conditional = tables.num_classes !== null;
    const labels = conditional ? Array.from({ length: N }, () => Number(digit)) : null;
    const timings = [];
    const samples = await sample({
      predict: predictor(ort, session, conditional),
      tables,
      n: N,
      steps,
      sampler,
      w,
      labels,
      seed,
      onStep: async ({ step, steps: total, t, x, x0, ms }) => {
        timings.push(ms);
        draw($("try-xt"), x);
        draw($("try-x0"), x0);
        const calls = conditional && w !== 0 ? 2 * N : N;
        status.dataset.msPerEval = String(ms / calls);
        setStatus(`step ${step}/${total}, t = ${t}: ${ms.toFixed(0)} ms per step (${calls} network evaluations)`, "running");
        await new Promise((resolve) => setTimeout(resolve, 0)); // let the page repaint
      },
      shouldStop: () => stopRequested,
    });
    if (samples === null) {
      setStatus("stopped", "stopped");
    } else {
      draw($("try-xt"), samples);
      const mean = timings.reduce((a, b) => a + b, 0) / timings.length;
      setStatus(`done: ${steps} steps, ${mean.toFixed(0)} ms per step on average`, "done");
    }
  } catch (error) {
    setStatus(`failed: ${error.message}`, "error");
    console.error(error);
  } finally {
    setRunning(false);
  }
}

function setUp() {
  for (const [key, id] of [["digit", "try-digit"], ["guidance", "try-guidance"], ["sampler", "try-sampler"],
    ["steps", "try-steps"], ["seed", "try-seed"]]) {
    if (params.has(key)) $(id).value = params.get(key);
  }
  for (const id of ["try-xt", "try-x0"]) {
    const canvas = $(id);
    canvas.width = canvas.height = 4 * 28 * SCALE;
  }
  $("try-digit").addEventListener("change", () => setRunning(false));
  $("try-generate").addEventListener("click", generate);
  $("try-stop").addEventListener("click", () => {
    stopRequested = true;
  });
  setRunning(false);
  setStatus("ready", "idle");
  if (params.get("autorun") === "1") generate();
}

setUp();
