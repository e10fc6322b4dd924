// The dog-emotion demo: pick a photo, preprocess it as the export's metadata says, run the ONNX
// model with onnxruntime-web, show the class probabilities. The last outcome is kept as JSON in
// #result's data-json ({"file","label","probabilities","ms","model"} or {"file","error"}), the
// keys of `predict --json`, for tests and scripts.
"use strict";

const MODELS = { fp32: "models/dog_emotion.onnx", int8: "models/dog_emotion.int8.onnx" };
const METADATA = "models/dog_emotion.meta.json";   // written by `make export` from the ONNX metadata record
// the time shown is the median of these, after one warm-up run (?runs=N changes it: tests use 1)
const TIMED_RUNS = Number(new URLSearchParams(location.search).get("runs") || 5);

const $ = (id) => document.getElementById(id);
let meta = null;            // {classes: [...], preprocess: {...}, input_name, output_name}
const sessions = {};        // model key -> InferenceSession, created on first use
let latest = 0;             // a newer pick supersedes a classification still running

function show(outcome) {
  $("result").dataset.json = JSON.stringify(outcome);
  $("status").classList.toggle("error", "error" in outcome);
}

async function loadMetadata() {
  const raw = await (await fetch(METADATA)).json();
  return { classes: raw.classes, preprocess: raw.preprocess, input: raw.input_name, output: raw.output_name };
}

async function session(key) {
  if (!sessions[key]) {
    sessions[key] = await ort.InferenceSession.create(MODELS[key], { executionProviders: ["wasm"] });
  }
  return sessions[key];
}

// The export's preprocessing: shorter side to resize_shorter_side (bilinear, smoothed), centre
// crop, centre crop the input size, RGB scaled to [0, 1], normalised with mean/std, NCHW.
function toTensor(bitmap, p) {
  const size = p.center_crop_2;
  const scale = p.resize_shorter_side / Math.min(bitmap.width, bitmap.height);
  const w = Math.max(p.resize_shorter_side, Math.round(bitmap.width * scale));
  const h = Math.max(p.resize_shorter_side, Math.round(bitmap.height * scale));
  const left = Math.floor((w - p.center_crop_1) / 2) + Math.floor((p.center_crop_1 - size) / 2);
  const top = Math.floor((h - p.center_crop_1) / 2) + Math.floor((p.center_crop_1 - size) / 2);
  const canvas = new OffscreenCanvas(w, h);
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(bitmap, 0, 0, w, h);
  const rgba = ctx.getImageData(left, top, size, size).data;
  const x = new Float32Array(3 * size * size);
  for (let i = 0; i < size * size; i++) {
    for (let c = 0; c < 3; c++) {
      x[c * size * size + i] = (rgba[4 * i + c] / 255 - p.mean[c]) / p.std[c];
    }
  }
  const preview = $("preview").getContext("2d");
  preview.drawImage(canvas, left, top, size, size, 0, 0, $("preview").width, $("preview").height);
  return new ort.Tensor("float32", x, [1, 3, size, size]);
}

function softmax(logits) {
  const m = Math.max(...logits);
  const e = logits.map((v) => Math.exp(v - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

function drawBars(probabilities, label) {
  $("bars").replaceChildren(...Object.entries(probabilities).map(([name, p]) => {
    const li = document.createElement("li");
    li.className = name === label ? "top" : "";
    li.innerHTML = `<span>${name}</span><span class="bar"><span class="fill" style="width:${(100 * p).toFixed(1)}%"></span></span><span>${(100 * p).toFixed(1)}%</span>`;
    return li;
  }));
}

async function classify(file) {
  const key = $("model").value;
  const token = ++latest;
  $("status").textContent = `Reading ${file.name}...`;
  let bitmap;
  try {
    // imageOrientation "from-image" applies the EXIF orientation, as the Python loader does
    bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
  } catch (e) {
    $("bars").replaceChildren();
    $("status").textContent = `${file.name}: not an image this browser can decode`;
    show({ file: file.name, error: `${file.name}: not an image this browser can decode` });
    return;
  }
  try {
    const input = toTensor(bitmap, meta.preprocess);
    const sess = await session(key);
    const feeds = { [meta.input]: input };
    let out = await sess.run(feeds);                 // warm-up
    const times = [];
    for (let i = 0; i < TIMED_RUNS; i++) {
      const t0 = performance.now();
      out = await sess.run(feeds);
      times.push(performance.now() - t0);
    }
    if (token !== latest) return;                    // the user picked another photo meanwhile
    times.sort((a, b) => a - b);
    const ms = times[Math.floor(times.length / 2)];
    const probs = softmax(Array.from(out[meta.output].data));
    const probabilities = Object.fromEntries(meta.classes.map((c, i) => [c, Number(probs[i].toFixed(4))]));
    const label = meta.classes[probs.indexOf(Math.max(...probs))];
    drawBars(probabilities, label);
    $("status").textContent = `${label} (${key.toUpperCase()}, ${ms.toFixed(1)} ms, median of ${TIMED_RUNS} warm runs, ${ort.env.wasm.numThreads} thread(s))`;
    show({ file: file.name, label, probabilities, ms: Number(ms.toFixed(3)), model: key });
  } catch (e) {
    $("status").textContent = `${file.name}: ${e.message || e}`;
    show({ file: file.name, error: `${file.name}: ${e.message || e}` });
  } finally {
    bitmap.close();
  }
}

// For tests: the logits of the selected model for a tensor made elsewhere (Python's preprocessing),
// so the WebAssembly runtime can be compared with Python onnxruntime on the very same input.
window.logitsOf = async (values, key) => {
  const size = meta.preprocess.center_crop_2;
  const input = new ort.Tensor("float32", Float32Array.from(values), [1, 3, size, size]);
  const out = await (await session(key)).run({ [meta.input]: input });
  return Array.from(out[meta.output].data);
};

async function main() {
  // WebAssembly threads need cross-origin isolation (serve.py sends the headers); one thread otherwise
  ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
  ort.env.wasm.wasmPaths = new URL("node_modules/onnxruntime-web/dist/", location.href).href;
  try {
    meta = await loadMetadata();
    await session($("model").value);
    $("status").textContent = `Ready: ${meta.classes.join(" / ")}. Pick a photo.`;
    document.body.dataset.ready = "1";
  } catch (e) {
    $("status").textContent = `Could not load the model: ${e.message || e}. Run \`make demo\`.`;
    show({ file: "", error: `model not loaded: ${e.message || e}` });
    return;
  }
  $("file").addEventListener("change", () => { if ($("file").files[0]) classify($("file").files[0]); });
  $("model").addEventListener("change", () => { if ($("file").files[0]) classify($("file").files[0]); });
}

main();
