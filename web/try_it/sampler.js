// The samplers of chapters 06 and 08, in JavaScript, for the book's "Try it" page.
//
// The network runs in onnxruntime-web (page.js); everything else happens here, in plain numbers, with
// the formulas of ddpm_lib: the schedule's alpha_bar comes from the JSON that `python -m ddpm_lib
// export-onnx` writes (float64, exactly the numbers ddpm_lib.sampling.posterior_step uses), and
// tests/test_export.py runs these functions under Node.js against the Python samplers.
//
// Images are Float32Arrays of n * 784 pixels (n digits of 1 x 28 x 28), in [-1, 1] at the clean end.

/** abar_t, with abar_{-1} = 1: the clean end of the chain. */
function alphaBar(abar, t) {
  return t < 0 ? 1.0 : abar[t];
}

/** Round half to even, as numpy.round does. */
function roundHalfEven(value) {
  const floor = Math.floor(value);
  const diff = value - floor;
  if (diff > 0.5) return floor + 1;
  if (diff < 0.5) return floor;
  return floor % 2 === 0 ? floor : floor + 1;
}

/**
 * The `steps` timesteps a chain visits, descending: "trailing" spacing (chapter 08, timesteps_for), computed as
 * numpy does it there: round(arange(T, 0, -T / steps)) - 1, where arange adds k times (its second value minus
 * its first), and round sends halves to even.
 */
export function trailingTimesteps(T, steps) {
  const delta = T + -T / steps - T;
  const out = [];
  for (let k = 0; k < steps; k++) out.push(roundHalfEven(T + k * delta) - 1);
  return out;
}

/** Classifier-free guidance (chapter 10): (1 + w) eps_cond - w eps_uncond. */
export function guide(epsCond, epsUncond, w) {
  const out = new Float32Array(epsCond.length);
  for (let i = 0; i < out.length; i++) out[i] = (1 + w) * epsCond[i] - w * epsUncond[i];
  return out;
}

/** x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), clamped to [-1, 1] when `clip` (chapter 06). */
export function predictX0(abar, t, eps, xt, clip) {
  const a = alphaBar(abar, t);
  const out = new Float32Array(xt.length);
  for (let i = 0; i < out.length; i++) {
    const x0 = (xt[i] - Math.sqrt(1 - a) * eps[i]) / Math.sqrt(a);
    out[i] = clip ? Math.min(1, Math.max(-1, x0)) : x0;
  }
  return out;
}

/**
 * One reverse step t -> s through the posterior q(x_s | x_t, x0 = x0_hat) (chapter 06, posterior_step):
 * with beta = 1 - abar_t / abar_s, mean = sqrt(abar_s) beta / (1 - abar_t) x0 + sqrt(1 - beta) (1 - abar_s) /
 * (1 - abar_t) x_t, variance (1 - abar_s) / (1 - abar_t) beta; `z` ~ N(0, I) is used only when s >= 0.
 */
export function posteriorStep(abar, t, s, x0, xt, z) {
  const a = alphaBar(abar, t);
  const aPrev = alphaBar(abar, s);
  const beta = 1 - a / aPrev;
  const cx0 = (Math.sqrt(aPrev) * beta) / (1 - a);
  const cxt = (Math.sqrt(1 - beta) * (1 - aPrev)) / (1 - a);
  const std = s < 0 ? 0 : Math.sqrt(((1 - aPrev) / (1 - a)) * beta);
  const out = new Float32Array(xt.length);
  for (let i = 0; i < out.length; i++) out[i] = cx0 * x0[i] + cxt * xt[i] + (std > 0 ? std * z[i] : 0);
  return out;
}

/** Deterministic DDIM (eta = 0) from t to s (chapter 08, ddim_step): sqrt(abar_s) x0 + sqrt(1 - abar_s) eps. */
export function ddimStep(abar, t, s, x0, eps) {
  const aPrev = alphaBar(abar, s);
  const out = new Float32Array(x0.length);
  for (let i = 0; i < out.length; i++) out[i] = Math.sqrt(aPrev) * x0[i] + Math.sqrt(1 - aPrev) * eps[i];
  return out;
}

/** Standard normal numbers from a seed: mulberry32 uniforms, Box-Muller pairs. (Not torch's generator.) */
export function normals(seed) {
  let state = seed >>> 0;
  const uniform = () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let r = Math.imul(state ^ (state >>> 15), 1 | state);
    r = (r + Math.imul(r ^ (r >>> 7), 61 | r)) ^ r;
    return ((r ^ (r >>> 14)) >>> 0) / 4294967296;
  };
  return (count) => {
    const out = new Float32Array(count);
    for (let i = 0; i < count; i += 2) {
      const u1 = 1 - uniform(); // in (0, 1]
      const u2 = uniform();
      const radius = Math.sqrt(-2 * Math.log(u1));
      out[i] = radius * Math.cos(2 * Math.PI * u2);
      if (i + 1 < count) out[i + 1] = radius * Math.sin(2 * Math.PI * u2);
    }
    return out;
  };
}

/** The noise estimate for a batch: the network, guided when a class-conditional model has labels and w != 0. */
export async function predictEps(predict, x, t, labels, w, n) {
  if (labels === null) return predict(x, t, null, n);
  if (w === 0) return predict(x, t, labels, n);
  const both = new Float32Array(2 * x.length); // [x; x] with labels [y; -1]: one network call
  both.set(x);
  both.set(x, x.length);
  const bothLabels = [...labels, ...labels.map(() => -1)];
  const eps = await predict(both, t, bothLabels, 2 * n);
  return guide(eps.subarray(0, x.length), eps.subarray(x.length), w);
}

/**
 * One reverse step of a whole chain: the network, x0_hat, then the sampler's update.
 * sampler: "clip" (DDPM with a clipped x0_hat: sample_clip) or "ddim" (deterministic DDIM).
 */
export async function reverseStep({ predict, abar, t, s, x, labels, w, n, sampler, z }) {
  const eps = await predictEps(predict, x, t, labels, w, n);
  const x0 = predictX0(abar, t, eps, x, sampler === "clip");
  const next = sampler === "ddim" ? ddimStep(abar, t, s, x0, eps) : posteriorStep(abar, t, s, x0, x, z);
  return { next, x0 };
}

/**
 * Sample n digits: x_T from the seed, then `steps` reverse steps on trailing timesteps. `onStep(info)` sees each
 * step's x_t and x0_hat; `shouldStop()` is asked after each step. Returns the samples clamped to [-1, 1], or
 * null when stopped.
 */
export async function sample({ predict, tables, n, steps, sampler, w, labels, seed, onStep, shouldStop }) {
  const abar = tables.alpha_bars;
  const draw = normals(seed);
  const size = tables.image_shape.reduce((a, b) => a * b, 1);
  let x = draw(n * size);
  const timesteps = trailingTimesteps(tables.num_timesteps, steps);
  for (let i = 0; i < timesteps.length; i++) {
    const t = timesteps[i];
    const s = i + 1 < timesteps.length ? timesteps[i + 1] : -1;
    const started = performance.now();
    const z = sampler === "clip" && s >= 0 ? draw(n * size) : null;
    const { next, x0 } = await reverseStep({ predict, abar, t, s, x, labels, w, n, sampler, z });
    x = next;
    if (onStep) await onStep({ step: i + 1, steps: timesteps.length, t, x, x0, ms: performance.now() - started });
    if (shouldStop && shouldStop()) return null;
  }
  return x.map((v) => Math.min(1, Math.max(-1, v)));
}
