// The dog-emotion demo: pick a photo, resize and crop it as the export's metadata says, hand the
// crop's RGB bytes to the app form of the model (dog_emotion.app.onnx: uint8 NHWC in, calibrated
// probabilities out; normalisation is in the graph) with onnxruntime-web, show the probabilities.
// The last outcome is kept as JSON in #result's data-json ({"file","label","probabilities","ms",
// "model"} or {"file","error"}), the keys of `predict --json`, for tests and scripts.
"use strict";

const MODELS = { fp32: "models/dog_emotion.app.onnx", int8: "models/dog_emotion.app.int8.onnx" };
const METADATA = "models/dog_emotion.meta.json";   // written by `make export`: the labels and the resize/crop rule
// the time shown is the median of these, after one warm-up run (?runs=N changes it: tests use 1)
const TIMED_RUNS = Number(new URLSearchParams(location.search).get("runs") || 5);

const $ = (id) => document.getElementById(id);
let meta = null;            // {classes: [...], preprocess: {...}}
const sessions = {};        // model key -> InferenceSession, created on first use
let latest = 0;             // a newer pick supersedes a classification still running

function show(outcome) {
  $("result").dataset.json = JSON.stringify(outcome);
  $("status").classList.toggle("error", "error" in outcome);
}

async function loadMetadata() {
  const raw = await (await fetch(METADATA)).json();
  return { classes: raw.classes, preprocess: raw.preprocess };
}

async function session(key) {
  if (!sessions[key]) {
    sessions[key] = await ort.InferenceSession.create(MODELS[key], { executionProviders: ["wasm"] });
  }
  return sessions[key];
}

// The export's framing (bilinear, smoothed): "squash" scales the whole photo to the input size,
// aspect not kept (as MediaPipe does); "crop" resizes the shorter side to resize_shorter_side, then
// takes the centre input-size square. Those RGB bytes, NHWC, are what the app form takes.
function toInput(bitmap, p) {
  const size = p.input_size ?? p.center_crop_2;   // exports before the framing record name it center_crop_2
  const squash = p.framing === "squash";
  const scale = squash ? 0 : p.resize_shorter_side / Math.min(bitmap.width, bitmap.height);
  const w = squash ? size : Math.max(p.resize_shorter_side, Math.round(bitmap.width * scale));
  const h = squash ? size : Math.max(p.resize_shorter_side, Math.round(bitmap.height * scale));
  const left = squash ? 0 : Math.floor((w - p.center_crop_1) / 2) + Math.floor((p.center_crop_1 - size) / 2);
  const top = squash ? 0 : Math.floor((h - p.center_crop_1) / 2) + Math.floor((p.center_crop_1 - size) / 2);
  const canvas = new OffscreenCanvas(w, h);
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(bitmap, 0, 0, w, h);
  const rgba = ctx.getImageData(left, top, size, size).data;
  const rgb = new Uint8Array(3 * size * size);
  for (let i = 0; i < size * size; i++) {
    rgb.set(rgba.subarray(4 * i, 4 * i + 3), 3 * i);      // drop alpha
  }
  const preview = $("preview").getContext("2d");
  preview.drawImage(canvas, left, top, size, size, 0, 0, $("preview").width, $("preview").height);
  return rgb;
}

// The app form's probabilities for a crop's RGB bytes (NHWC)
async function runModel(rgb, key) {
  const size = meta.preprocess.input_size ?? meta.preprocess.center_crop_2;
  const sess = await session(key);
  const out = await sess.run({ [sess.inputNames[0]]: new ort.Tensor("uint8", rgb, [1, size, size, 3]) });
  return Array.from(out[sess.outputNames[0]].data);
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
    const rgb = toInput(bitmap, meta.preprocess);
    let probs = await runModel(rgb, key);     // warm-up
    const times = [];
    for (let i = 0; i < TIMED_RUNS; i++) {
      const t0 = performance.now();
      probs = await runModel(rgb, key);
      times.push(performance.now() - t0);
    }
    if (token !== latest) return;                    // the user picked another photo meanwhile
    times.sort((a, b) => a - b);
    const ms = times[Math.floor(times.length / 2)];
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

// For tests: the probabilities of the selected model for crop bytes made elsewhere (Python's resize
// and crop), so the WebAssembly runtime can be compared with Python onnxruntime on the very same input.
window.probabilitiesOf = async (values, key) => runModel(Uint8Array.from(values), key);

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
