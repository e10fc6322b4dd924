import ast
import copy
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from benchmark import bench, inference, training_layouts
from export import export as exporter
from export.profile import profile
from export.runtimes import FORMATS, METADATA_SIDECAR, batched_logits, file_metadata, make_runner, model_inputs, ort_session
from mobile_model import build_model, count_parameters
from export.calibration import fold_temperature
from train.checkpoint import load_for_export, load_weights, state_digest
from train import dog_emotion
from train.common import ARTIFACTS, REPO_ROOT, SHIPPED_WEIGHTS
from train.data import DataError, load_for_model, preprocess_spec
from conftest import litert_installed, write_split_root


def test_profile_agrees_with_flopcounter_and_count_parameters():
    model = build_model("micro14").eval()
    keys = list(model.state_dict())
    before = copy.deepcopy(model.state_dict())
    p = profile(model)
    assert list(model.state_dict()) == keys, "thop must not add total_ops/total_params to the model"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert p["params_thop"] == p["params_count_parameters"] == count_parameters(model)
    assert p["flops_flopcounter"] == 2 * p["macs_conv_linear_thop"]
    # the documented difference: thop also charges BatchNorm and pooling, FlopCounterMode does not
    assert p["macs_thop"] - p["flops_flopcounter"] // 2 == p["bn_ops_thop"] + p["other_ops_thop"]
    assert sum(r["params"] for r in p["layers"]) == count_parameters(model)


@pytest.mark.slow
def test_fp32_exports_agree_with_eager_on_random_and_real_inputs(exported):
    out, rows, info = exported
    model, ckpt = load_weights(SHIPPED_WEIGHTS)
    # every format carries the calibrated logits: the shipped model's divided by the temperature
    model = fold_temperature(model, info["calibration"]["temperature"])
    assert load_weights(out / exporter.CALIBRATED_WEIGHTS)[1]["metrics"]["temperature"] == info["calibration"]["temperature"]
    by_fmt = {r["format"]: r for r in rows}
    fp32_formats = ("torchscript", "onnx_fp32", "ort_fp32", "pte_fp32") + (("tflite_fp32",) if litert_installed() else ())
    for fmt in fp32_formats:
        assert by_fmt[fmt]["top-1 agreement (%)"] == 100 and by_fmt[fmt]["max abs logit diff"] <= 1e-4
    size = model.config.input_size
    for batch in (1, 7, 32):  # the dynamic batch axis (the .pte programs take 1..32; a .tflite, 1 a call)
        x = np.random.default_rng(batch).standard_normal((batch, 3, size, size)).astype(np.float32)
        ref = make_runner("eager", model=model)(x)
        for fmt in fp32_formats:
            got = make_runner(fmt, out / FORMATS[fmt].file)(x)
            assert got.shape == (batch, 4)
            np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
    meta = {p.key: p.value for p in onnx.load(str(out / "dog_emotion.onnx")).metadata_props}
    assert json.loads(meta["classes"]) == ckpt["classes"]
    assert json.loads(meta["preprocess"])["input_size"] == size
    assert json.loads(meta["preprocess"]) == preprocess_spec(size, model.config.framing)
    # the sidecar holds the same record as the ONNX file
    sidecar = json.loads((out / exporter.METADATA_SIDECAR).read_text())   # plain JSON: lists and objects
    assert {k: v if isinstance(v, str) else json.dumps(v) for k, v in sidecar.items()} == meta
    assert sidecar["classes"] == ckpt["classes"] and sidecar["params"] == ckpt["params"]
    # and every file holds it too, read back by the format's own runtime
    written = [f for f in exporter.FORMAT_TABLE if (out / f.file).is_file()]
    assert len(written) >= (11 if litert_installed() else 9)   # two .tflite files need the LiteRT converter
    for f in written:
        record = file_metadata(f.name, out / f.file)
        assert record["classes"] == ckpt["classes"] and record["preprocess"] == preprocess_spec(size, model.config.framing), f.name
        assert record["weights_sha256"] == sidecar["weights_sha256"], f.name
        assert (record["input_layout"] == "NHWC") if f.app else ("input_layout" not in record), f.name
    assert not list(out.glob(".*.tmp")), "temporary files left behind"


@pytest.mark.slow
def test_the_app_forms_take_a_bitmaps_bytes_and_give_eagers_probabilities_with_their_labels_inside(exported, real_data):
    out, rows, info = exported
    model, ckpt = load_weights(SHIPPED_WEIGHTS)
    model = fold_temperature(model, info["calibration"]["temperature"])
    by_fmt = {r["format"]: r for r in rows}
    test = load_for_model(real_data / "test", ckpt["classes"], model.config)
    eager = torch.softmax(torch.from_numpy(batched_logits(make_runner("eager", model=model), test.images, 112)), 1).numpy()
    apps = [f.name for f in exporter.FORMAT_TABLE if f.app and (f.environment != exporter.LITERT_ENV or litert_installed())]
    for fmt in apps:
        if FORMATS[fmt].precision == "fp32":
            # the export's own check: on every test photo, from the same uint8 crops, the same label and
            # every probability within 1e-4 of eager's softmax
            assert by_fmt[fmt]["top-1 agreement (%)"] == 100 and by_fmt[fmt]["max abs logit diff"] <= 1e-4, fmt
        elif (out / FORMATS[fmt].file).is_file():    # INT8: kept by the INT8 rule (test_int8_runs_and_agrees_with_fp32)
            assert by_fmt[fmt]["kept"] == "yes" and by_fmt[fmt]["top-1 agreement (%)"] >= 95, fmt
    assert {"onnx_app", "ort_app", "pte_app"} <= set(apps)
    crops = next(model_inputs("onnx_app", test.images, 112, len(test.images)))
    assert crops.dtype == np.uint8 and crops.shape == (len(test.images), 112, 112, 3)
    for fmt in ("onnx_app", "ort_app"):
        session = ort_session(out / FORMATS[fmt].file, ort_format=fmt.startswith("ort"))
        (inp,) = session.get_inputs()
        assert inp.type == "tensor(uint8)" and inp.shape[1:] == [112, 112, 3]
        probs = session.run(None, {inp.name: crops})[0]
        np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
        assert np.abs(probs - eager).max() <= 1e-4


def test_mediapipe_loads_the_shipped_app_tflite_names_its_classes_and_evaluate_predicts_it(exported):
    """The client an app runs a .tflite in is the judge: MediaPipe Tasks' ImageClassifier with its
    default options, on the test photo files (the export ran it: export.export.client_check), names
    the classes from the file's standard LiteRT metadata, and gives eager's label, framed as it
    frames (`evaluate --framing squash`), on nearly every photo: that is the number to trust for it."""
    if not litert_installed():
        pytest.skip("the LiteRT converter is not installed (make venv-litert)")
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb
    from export.client_metadata import TFLITE_METADATA, read_labels
    from ai_edge_litert import schema_py_generated as schema
    out, rows, _ = exported
    by_fmt = {r["format"]: r for r in rows}
    app = by_fmt["tflite_app"]   # the export refuses a file MediaPipe cannot load or name the classes of
    assert app["same label as eager framed alike (%)"] >= 94
    assert abs(app["MediaPipe accuracy (%)"] - app["eager framed as MediaPipe (%)"]) <= 2 * exporter.CLIENT_MAX_GAP
    # an app that passes the model's own centre crop as region_of_interest reads what evaluate reads
    assert abs(app["MediaPipe, centre-crop region (%)"] - by_fmt["eager"]["accuracy (%)"]) <= exporter.CLIENT_MAX_GAP
    path = out / FORMATS["tflite_app"].file
    classes = load_weights(SHIPPED_WEIGHTS)[1]["classes"]
    assert read_labels(path) == classes
    model = schema.Model.GetRootAs(path.read_bytes(), 0)
    entry = next(model.Metadata(i) for i in range(model.MetadataLength()) if model.Metadata(i).Name() == TFLITE_METADATA.encode())
    md = fb.ModelMetadata.GetRootAs(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes(), 0)
    assert md.License() == b"MIT" and md.Name() and md.Description() and md.Version()
    image, output = md.SubgraphMetadata(0).InputTensorMetadata(0), md.SubgraphMetadata(0).OutputTensorMetadata(0)
    assert image.Content().ContentPropertiesType() == fb.ContentProperties.ImageProperties
    labels = output.AssociatedFiles(0)
    assert labels.Name() == b"labels.txt" and labels.Type() == fb.AssociatedFileType.TENSOR_AXIS_LABELS


@pytest.mark.slow
def test_onnx_initializers_hold_exactly_the_shipped_parameter_count(exported):
    out, _, _ = exported
    model, ckpt = load_weights(SHIPPED_WEIGHTS)
    graph = onnx.load(str(out / "dog_emotion.onnx")).graph
    inits = {i.name: int(np.prod(i.dims)) for i in graph.initializer}
    used = {name for node in graph.node if node.op_type in ("Conv", "Gemm", "MatMul") for name in node.input[1:]}
    assert sum(n for name, n in inits.items() if name in used) == ckpt["params"] == count_parameters(model)


@pytest.mark.slow
def test_int8_runs_and_agrees_with_fp32(exported):
    out, rows, info = exported
    # one setting, the same on every x86 CPU (7-bit weights cannot saturate without VNNI)
    (int8,) = [r for r in rows if r["format"] == "onnx_int8"]
    assert int8["int8 setting"] == exporter.ONNX_INT8.name and exporter.ONNX_INT8.reduce_range
    assert info["int8_kept"] == (exporter.ONNX_INT8.name if int8["kept"] == "yes" else "no: it failed the INT8 rule")
    # every INT8 file, by the task's rule: written (and kept) only if within 1 point of FP32's
    # accuracy with FP32's label on >= 95% of test
    pairs = [("onnx_int8", "onnx_fp32"), ("pte_int8", "pte_fp32"), ("onnx_app_int8", "onnx_app"), ("pte_app_int8", "pte_app")]
    pairs += [("tflite_int8", "tflite_fp32"), ("tflite_app_int8", "tflite_app")] if litert_installed() else []
    for int8_fmt, fp32_fmt in pairs:
        int8_row = next(r for r in rows if r["format"] == int8_fmt)
        fp32_row = next(r for r in rows if r["format"] == fp32_fmt)
        passes = int8_row["top-1 agreement (%)"] >= 95 and fp32_row["accuracy (%)"] - int8_row["accuracy (%)"] <= 1.0
        assert (int8_row["kept"] == "yes") == passes == (out / FORMATS[int8_fmt].file).is_file(), int8_fmt
    assert "aten.flip.default" in info["pte_ops_outside_xnnpack"]["pte_fp32"]   # the mirror of flip averaging
    assert (out / "dog_emotion.int8.onnx").stat().st_size < (out / "dog_emotion.onnx").stat().st_size


def test_export_bad_input(tmp_path):
    with pytest.raises(SystemExit, match="weights file not found"):
        exporter.main(["--weights", str(tmp_path / "none.pkl"), "--out", str(tmp_path / "o")])
    ckpt = torch.load(SHIPPED_WEIGHTS, weights_only=True)
    ckpt["state_dict"] = build_model("nano").state_dict()  # weights of another network under this config
    torch.save(ckpt, tmp_path / "mismatched.pkl")
    with pytest.raises(SystemExit, match="do not fit"):
        exporter.main(["--weights", str(tmp_path / "mismatched.pkl"), "--out", str(tmp_path / "o")])
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(exporter.ExportError, match="not writable"):
        exporter.run_export(str(SHIPPED_WEIGHTS), str(tmp_path), tmp_path / "a_file" / "out", 8, 0)
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_bench_refuses_missing_formats_and_an_export_of_other_weights(tmp_path, capsys):
    with pytest.raises(SystemExit, match="run `make export` first"):
        bench.main(["--export-dir", str(tmp_path), "--out", str(tmp_path / "b"), "--quick", "--train-epochs", "0"])
    (tmp_path / METADATA_SIDECAR).write_text('{"weights_sha256": "0123456789abcdef"}')
    with pytest.raises(SystemExit):
        bench.main(["--export-dir", str(tmp_path), "--out", str(tmp_path / "b"), "--quick", "--train-epochs", "0"])
    assert "exported from other weights (sha256 0123456789ab" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_formats_bring_the_rows_they_start_from_in_the_tables_order():
    from export.formats import FORMAT_TABLE, with_needs
    assert with_needs(["onnx_app_int8"]) == ["onnx_app", "onnx_app_int8"]
    assert with_needs(["ort_fp32", "pte_int8"]) == ["onnx_fp32", "ort_fp32", "pte_int8"]
    assert with_needs(FORMATS) == [f.name for f in FORMAT_TABLE]
    for i, f in enumerate(FORMAT_TABLE):   # a writer's needs are written before it
        assert set(f.needs) <= {g.name for g in FORMAT_TABLE[:i]}, f.name
    with pytest.raises(ValueError, match="no format 'onnx'"):
        with_needs(["onnx"])
    with pytest.raises(SystemExit):   # the command line names the choices
        exporter.main(["--formats", "onnx"])


def test_bench_refuses_a_missing_recipe_before_timing_anything(tmp_path):
    with pytest.raises(SystemExit, match="recipe .*nope.toml: No such file"):
        bench.main(["--export-dir", str(tmp_path), "--out", str(tmp_path / "b"), "--recipe", str(tmp_path / "nope.toml"),
                    "--train-epochs", "2"])
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_bench_quick_end_to_end(exported, tmp_path):
    out, export_rows, _ = exported
    bench.main(["--export-dir", str(out), "--out", str(tmp_path / "b"), "--quick", "--threads", "1"])
    saved = json.loads((tmp_path / "b" / "bench.json").read_text())
    rows = {r["format"]: r for r in saved["inference"]}
    assert list(rows) == [f for f in inference.ROW_FORMATS if f == "eager" or (out / FORMATS[f].file).is_file()]
    assert set(inference.ROW_FORMATS) - set(rows) <= set(inference.OPTIONAL_FORMATS)
    # the benchmark runs the same files as the export's parity check: the same accuracy on test
    parity = {r["format"]: r["accuracy (%)"] for r in export_rows if r.get("kept", "yes") == "yes"}
    for fmt, r in rows.items():
        assert r["test_acc"] == pytest.approx(parity[fmt], abs=0.01), fmt
        if fmt != "eager":
            assert r["size_kb"] == pytest.approx((out / FORMATS[fmt].file).stat().st_size / 1000, abs=0.1), fmt
    assert rows["eager"]["p50_vs_eager"] == 1.0 and rows["onnx_fp32"]["p50_vs_eager"] == pytest.approx(
        rows["onnx_fp32"]["p50_ms"] / rows["eager"]["p50_ms"])
    # every key snake_case; units only in the Markdown titles; part 4 (training) only when asked for
    assert saved["training"] == [] and "training epoch" not in (tmp_path / "b" / "bench.md").read_text().lower()
    keys = set(rows["eager"]) | set(saved["input_pipeline"]) | set(saved["mnist"])
    assert all(k.replace("_", "").isalnum() and k.islower() for k in keys), keys
    md = (tmp_path / "b" / "bench.md").read_text()
    assert "| p50 (ms) |" in md and all(f"| {fmt} | 1 |" in md for fmt in rows)
    assert set(saved["contention"]) == {"steal_pct", "other_processes_pct", "noisy"} and "CPU contention" in md
    # the export's speed, as that export clocked it: every format it wrote, then the whole export
    timed = json.loads((out / "parity.json").read_text())
    assert [r["format"] for r in saved["export"][:-1]] == list(timed["seconds"])
    assert set(rows) - {"eager"} <= set(timed["seconds"]) <= set(timed["formats"])
    assert saved["export"][-1]["seconds"] == timed["total_seconds"] >= sum(timed["seconds"].values()) > 0
    assert "## Export" in md
    # the model card's speed table reads the same run: every row's two numbers
    from export import model_card
    card_rows, source = model_card.speed_rows(tmp_path / "b" / "bench.json", saved["weights_sha256"])
    assert model_card.speed_rows(tmp_path / "b" / "bench.json", "other weights")[0] == [], "another model's timings"
    assert [r["format"] for r in card_rows] == list(rows) and "(QUICK)" in source
    assert all(float(r["batch 1 p50 (ms)"]) > 0 and float(r["batch 32 (img/s)"]) > 0 for r in card_rows)


@pytest.mark.slow
def test_the_training_layouts_each_run_a_real_epoch(tmp_path):
    # bench part 4 (--train-epochs N): three layouts, each a real run (torchrun; DDP for 2 processes),
    # the same images per step
    data = write_split_root(tmp_path / "d", per_class=32)   # 128 train photos: two steps of 64
    training = training_layouts.bench_training("", str(data), 1, quick=True)
    assert [(r["processes"], r["threads"]) for r in training] == list(training_layouts.LAYOUTS)
    assert all(r["batch_per_process"] * r["processes"] == 64 and r["epoch_s"] > 0 for r in training)
    assert training[0]["speed_up"] == 1.0
    assert all(k.replace("_", "").isalnum() and k.islower() for k in training[0]), training[0]


def test_contention_counts_other_processes_and_steal_but_not_the_benchmarks_own_time():
    from benchmark import contention
    # counters of a run: 10 s of 2 CPUs, 1 s stolen, 12 s busy of which 8 s were the benchmark's own
    before = {"total": 100.0, "steal": 5.0, "busy": 50.0, "own": 2.0}
    after = {"total": 120.0, "steal": 6.0, "busy": 62.0, "own": 10.0}
    assert contention.contention(before, after) == {"steal_pct": 5.0, "other_processes_pct": 20.0, "noisy": True}
    assert contention.contention(before, {**after, "steal": 5.5, "busy": 59.0})["noisy"] is False
    assert contention.contention(None, after)["noisy"] is None
    # on this machine: a process burning a core that the benchmark did not start shows as other processes
    if contention.snapshot() is None:
        pytest.skip("no /proc/stat here")
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)                      # let it start before the window opens
        start = contention.snapshot()
        time.sleep(1.5)
        measured = contention.contention(start, contention.snapshot())
    finally:
        busy.kill()
        busy.wait()
    assert measured["other_processes_pct"] >= 0.6 * 100 / os.cpu_count(), measured   # one core of os.cpu_count()
    # and the benchmark's own work does not: a busy loop in this process counts as own time
    start = contention.snapshot()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 1.0:
        pass
    own = contention.contention(start, contention.snapshot())
    assert own["other_processes_pct"] < measured["other_processes_pct"], (own, measured)


def checksums(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.slow
def test_a_failed_export_leaves_the_previous_set_as_it_was(real_data, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("conversion crashed")

    earlier = tmp_path / "out"   # an earlier export's set (its record marks it as one)
    earlier.mkdir()
    (earlier / exporter.METADATA_SIDECAR).write_text('{"weights_sha256": "earlier"}')
    (earlier / "dog_emotion.int8.pte").write_bytes(b"the earlier model")
    before = checksums(earlier)
    monkeypatch.setattr(exporter, "convert_to_ort", broken)   # the third format: two are written in the staging folder
    with pytest.raises(RuntimeError, match="conversion crashed"):
        exporter.run_export(str(SHIPPED_WEIGHTS), str(real_data), earlier, 8, 0)
    assert checksums(earlier) == before, "no file of the new model beside the earlier set's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "the staging folder is removed"


def test_an_export_refuses_a_folder_that_is_not_an_export(nano_weights, split_root, tmp_path):
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "keep.jpg").write_bytes(b"a user's file")
    with pytest.raises(exporter.ExportError, match="not an earlier export"):
        exporter.run_export(str(nano_weights), str(split_root), mine, 16, 0)
    assert checksums(mine) == {"keep.jpg": hashlib.sha256(b"a user's file").hexdigest()}
    (tmp_path / "file").write_text("x")
    with pytest.raises(exporter.ExportError, match="is a file"):
        exporter.run_export(str(nano_weights), str(split_root), tmp_path / "file", 16, 0)


@pytest.fixture
def nano_weights(tmp_path):
    """A small generated model (random BatchNorm statistics) saved as a weights file."""
    from dataclasses import replace

    from mobile_model import MobileCNN, get_config
    from test_training_parts import randomize_batchnorm
    from train.checkpoint import save_weights
    torch.manual_seed(0)
    model = randomize_batchnorm(MobileCNN(replace(get_config("nano"), input_size=32))).eval()
    return save_weights(model, ["angry", "happy", "relaxed", "sad"], tmp_path / "nano.pkl")


@pytest.mark.slow
def test_pte_and_tflite_of_a_small_generated_model_and_a_failed_check(nano_weights, split_root, tmp_path, monkeypatch):
    monkeypatch.setattr(exporter, "INT8_MIN_AGREEMENT", 101.0)   # no INT8 program can pass this check
    (tmp_path / "out").mkdir()   # an earlier export of another model, with the INT8 files this one refuses
    (tmp_path / "out" / exporter.METADATA_SIDECAR).write_text('{"weights_sha256": "earlier"}')
    for name in ("dog_emotion.int8.pte", "dog_emotion.int8.tflite", "stale.txt"):
        (tmp_path / "out" / name).write_bytes(b"the earlier model")
    fp32, int8 = ["pte_fp32", "pte_app"], ["pte_int8", "pte_app_int8", "onnx_app_int8"]
    if litert_installed():
        fp32, int8 = fp32 + ["tflite_fp32"], int8 + ["tflite_int8", "tflite_app_int8"]
    rows, info = exporter.run_export(str(nano_weights), str(split_root), tmp_path / "out", 16, 0, temperature=False,
                                     formats=fp32 + int8)   # the rows checked here and those they start from
    assert not (tmp_path / "out" / "stale.txt").exists(), "the new set replaces the earlier one whole"
    meta = json.loads((tmp_path / "out" / exporter.METADATA_SIDECAR).read_text())
    assert meta["weights_sha256"] == load_weights(nano_weights)[1]["sha256"]
    card = (tmp_path / "out" / exporter.MODEL_CARD).read_text()   # the card of this model, not the shipped one's
    assert "Kaggle" not in card and "docs/runs.jsonl" not in card and str(tmp_path) not in card
    assert "`nano.pkl`" in card and "4 classes (angry, happy, relaxed, sad)" in card
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == []
    by_fmt = {r["format"]: r for r in rows}
    if not litert_installed():
        assert "tflite_fp32" not in by_fmt and "make venv-litert" in info["tflite"]
    for fmt in fp32:   # kept: it matches eager
        assert by_fmt[fmt]["max abs logit diff"] <= 1e-4 and by_fmt[fmt]["top-1 agreement (%)"] == 100
        assert (tmp_path / "out" / FORMATS[fmt].file).is_file()
    for fmt in int8:   # refused by the rule: not written
        assert by_fmt[fmt]["kept"] == "no" and not (tmp_path / "out" / FORMATS[fmt].file).exists()
    assert not list((tmp_path / "out").glob(".*.tmp"))
    # the FP32 programs run through their runtimes like eager, batch 1 and batch 32
    # the app form takes its own size only: the runtime would resize its input to any other and answer
    from executorch.runtime import Runtime
    app = Runtime.get().load_program(str(tmp_path / "out" / FORMATS["pte_app"].file)).load_method("forward")
    assert app.execute([torch.zeros(1, 32, 32, 3, dtype=torch.uint8)])[0].shape == (1, 4)
    for n in (16, 48):
        with pytest.raises(RuntimeError):
            app.execute([torch.zeros(1, n, n, 3, dtype=torch.uint8)])
    for batch in (1, 32):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32)).astype(np.float32)
        for fmt in (f for f in fp32 if f != "pte_app"):
            np.testing.assert_allclose(make_runner(fmt, tmp_path / "out" / FORMATS[fmt].file)(x),
                                       make_runner("eager", model=load_weights(nano_weights)[0])(x), atol=1e-4)
    (tmp_path / "bad.pte").write_bytes(b"not a program")
    with pytest.raises(DataError, match="bad.pte: not a loadable ExecuTorch program"):
        make_runner("pte_fp32", tmp_path / "bad.pte")
    (tmp_path / "bad.tflite").write_bytes(b"not a model")
    with pytest.raises(DataError, match="bad.tflite: not a loadable LiteRT model"):
        make_runner("tflite_fp32", tmp_path / "bad.tflite")


@pytest.mark.slow
def test_a_tflite_file_that_differs_from_eager_is_refused_and_not_written(nano_weights, split_root, tmp_path,
                                                                          monkeypatch):
    if not litert_installed():
        pytest.skip("the LiteRT converter is not installed (make venv-litert)")
    real_save = exporter.save_weights

    def converter_gets_another_model(model, classes, path, metrics=None):   # what the converter reads
        wrong = copy.deepcopy(model)
        wrong.classifier.bias.data += 0.01
        return real_save(wrong, classes, path, metrics)

    monkeypatch.setattr(exporter, "save_weights", converter_gets_another_model)
    with pytest.raises(exporter.ExportError, match="tflite_fp32: differs from eager .max diff 1.00e-02"):
        exporter.run_export(str(nano_weights), str(split_root), tmp_path / "out", 16, 0, temperature=False,
                            formats=["tflite_fp32"])
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*")), "nothing written, no staging left"


@pytest.mark.slow
def test_export_without_flip_averaging(nano_weights, split_root, tmp_path):
    ckpt = torch.load(nano_weights, weights_only=True)
    ckpt["state_dict"]["classifier.weight"] *= 100  # logits that visibly depend on the input (a random net's barely do)
    ckpt["sha256"] = state_digest(ckpt["state_dict"])
    torch.save(ckpt, nano_weights)
    fp32 = ("torchscript", "onnx_fp32", "ort_fp32", "pte_fp32")   # one program per runtime: the .tflite converter
    rows, info = exporter.run_export(str(nano_weights), str(split_root), tmp_path / "out", 16, 0, flip_average=False,
                                     temperature=False, formats=list(fp32))   # is checked on its own above
    assert info["flip_average"] is False
    # no mirror image in any program: nothing of it left for portable kernels
    assert "aten.flip.default" not in info["pte_ops_outside_xnnpack"]["pte_fp32"]
    meta = json.loads((tmp_path / "out" / exporter.METADATA_SIDECAR).read_text())
    assert meta["config"]["flip_average"] is False
    # every FP32 file computes the single pass, not the shipped flip average
    single, _ = load_for_export(str(nano_weights), flip_average=False)
    averaged, _ = load_weights(nano_weights)
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    ref = make_runner("eager", model=single)(x)
    assert np.abs(ref - make_runner("eager", model=averaged)(x)).max() > 1e-3
    for fmt in fp32:
        np.testing.assert_allclose(make_runner(fmt, tmp_path / "out" / FORMATS[fmt].file)(x), ref, atol=1e-4)


def readme_snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO_ROOT / "README.md").read_text(), re.S)


@pytest.mark.slow
def test_the_readme_snippets_run_as_written_and_agree_with_predict(exported, real_data, tmp_path):
    out, _, _ = exported
    photo = sorted((real_data / "test" / "sad").iterdir())[0]
    snippets = readme_snippets()
    assert len(snippets) == 3, "README has the one-call snippets (weights, ONNX) and the app-side onnxruntime one"
    printed = []
    for code in snippets:
        code = code.replace("photo.jpg", str(photo)).replace("artifacts/export/", f"{out}/")
        done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        printed.append(ast.literal_eval(done.stdout.strip().splitlines()[-1]))
    # the weights file (its recorded temperature applied) and the calibrated export say the same
    for probs, weights in zip(printed, (SHIPPED_WEIGHTS, out / exporter.CALIBRATED_WEIGHTS, out / exporter.CALIBRATED_WEIGHTS)):
        ref = dog_emotion_predict(photo, weights)
        assert list(probs) == list(ref) and max(abs(probs[c] - ref[c]) for c in ref) < 2e-3, (probs, ref)


def dog_emotion_predict(photo, weights) -> dict:
    return dog_emotion.cmd_predict(dog_emotion.parse_args(["predict", str(photo), "--weights", str(weights)]))[0]["probabilities"]


def test_the_temperature_folds_into_the_classifier_and_is_recovered():
    from export.calibration import calibration_report, fit_temperature
    from mobile_model import get_config, MobileCNN
    from test_training_parts import randomize_batchnorm
    torch.manual_seed(0)
    model = randomize_batchnorm(MobileCNN(get_config("nano"))).eval()     # flip averaging on: a mean of two passes
    x = torch.randn(6, 3, 112, 112)
    with torch.no_grad():
        ref, folded = model(x), fold_temperature(model, 2.5)(x)
    assert model.config.flip_average and torch.allclose(folded, ref / 2.5, atol=1e-6, rtol=0)
    # labels drawn from softmax(z): the logits 3 z are too confident by T = 3, and the fit finds it
    g = torch.Generator().manual_seed(1)
    z = torch.randn(20_000, 4, generator=g) * 2
    labels = torch.multinomial(z.softmax(1), 1, generator=g).squeeze(1)
    assert abs(fit_temperature(3 * z, labels) - 3.0) < 0.1
    from export.calibration import CalibrationError   # right on every photo: the NLL falls as T -> 0, never held
    with pytest.raises(CalibrationError, match="fit T = .* outside \\[0.05, 100\\]: sure of every val photo"):
        fit_temperature(1e-3 * z, z.argmax(1), "val")
    before, after = calibration_report(3 * z, labels), calibration_report(z, labels)
    assert after["ece"] < 0.02 < before["ece"] and after["nll"] < before["nll"]
    assert before["accuracy"] == after["accuracy"] and sum(b["n"] for b in before["bins"]) == 20_000


@pytest.mark.slow
def test_a_siblings_temperature_is_recorded_and_folded_at_export(real_data, tmp_path):
    from export import calibration
    from train.checkpoint import save_weights
    weights = tmp_path / "shipped.pkl"
    weights.write_bytes(SHIPPED_WEIGHTS.read_bytes())
    model, ckpt = load_weights(weights)
    # the sibling: another set of weights of the same network (every tensor moved by 5% noise, far
    # from a near copy); the record must hold the fit on its val logits, not on the weights' own
    sibling = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in sibling.parameters():
            p.mul_(1 + 0.05 * torch.randn(p.shape, generator=g))
    sibling_path = save_weights(sibling, ckpt["classes"], tmp_path / "sibling.pkl")
    calibration.main(["--weights", str(weights), "--sibling", str(sibling_path), "--data", str(real_data)])
    model, recorded_ckpt = load_weights(weights)
    assert recorded_ckpt["sha256"] == ckpt["sha256"] and recorded_ckpt["metrics"] == ckpt["metrics"]
    size = model.config.input_size
    val, test = (load_for_model(real_data / s, ckpt["classes"], model.config, ARTIFACTS / "cache") for s in ("val", "test"))
    fit = {name: calibration.fit_temperature(torch.from_numpy(batched_logits(make_runner("eager", model=m), val.images,
                                                                              size)), val.labels)
           for name, m in (("own", model), ("sibling", sibling))}
    recorded = recorded_ckpt["calibration"]
    assert abs(recorded["temperature"] - fit["sibling"]) < 1e-4 * fit["sibling"]
    assert abs(fit["sibling"] - fit["own"]) > 1e-3, "the two fits must differ for the check to mean anything"
    assert recorded["fitted_with"] == str(sibling_path) and recorded["val_images"] == len(val) == 400
    calibrated, info = exporter.calibrate(model, recorded_ckpt, val, test, str(weights))   # what make export folds
    assert info["temperature"] == recorded["temperature"] and info["fitted_with"] == str(sibling_path)
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        assert torch.allclose(calibrated(x), model(x) / recorded["temperature"], atol=1e-5, rtol=0)


def test_a_sibling_temperature_is_refused_when_it_cannot_hold(nano_weights, split_root, tmp_path):
    from dataclasses import replace

    from export import calibration
    from mobile_model import MobileCNN, get_config
    from test_training_parts import randomize_batchnorm
    from train.checkpoint import CheckpointError, save_weights
    classes = ["angry", "happy", "relaxed", "sad"]

    def record(sibling):
        calibration.main(["--weights", str(nano_weights), "--sibling", str(sibling), "--data", str(split_root)])
    before = nano_weights.read_bytes()
    with pytest.raises(SystemExit, match="the same weights"):
        record(nano_weights)
    model, ckpt = load_weights(nano_weights)   # a near copy: every weight moved by a thousandth
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.001)
    with pytest.raises(SystemExit, match="or a near copy"):
        record(save_weights(model, classes, tmp_path / "near.pkl"))
    with pytest.raises(SystemExit, match="a run of the same recipe"):
        record(save_weights(MobileCNN(replace(get_config("nano"), input_size=48)).eval(), classes, tmp_path / "other.pkl"))
    torch.manual_seed(1)   # an untrained network of the same config: its logits know nothing of these photos
    untrained = randomize_batchnorm(MobileCNN(replace(get_config("nano"), input_size=32))).eval()
    with pytest.raises(SystemExit, match="outside \\[0.05, 100\\]: the logits say nothing of val"):
        record(save_weights(untrained, classes, tmp_path / "untrained.pkl"))
    with torch.no_grad():   # finite weights whose logits overflow float32
        untrained.classifier.weight.fill_(3e38)
    with pytest.raises(SystemExit, match="val logits are not finite numbers"):
        record(save_weights(untrained, classes, tmp_path / "inf.pkl"))
    assert nano_weights.read_bytes() == before   # nothing was recorded
    for bad in ({"temperature": -1.0, "fitted_with": "x"}, {"temperature": "0.9", "fitted_with": "x"},
                {"temperature": 5.2e-7, "fitted_with": "x"},
                {"temperature": float("nan"), "fitted_with": "x"}, 0.9):
        torch.save({**torch.load(nano_weights, weights_only=True), "calibration": bad}, tmp_path / "bad.pkl")
        with pytest.raises(CheckpointError, match="'calibration' must record a temperature"):
            load_weights(tmp_path / "bad.pkl")


@pytest.mark.slow
def test_the_model_card_is_written_from_the_measurements(exported, tmp_path):
    from export import model_card
    out, rows, info = exported
    model, ckpt = load_for_export(str(SHIPPED_WEIGHTS))
    model = fold_temperature(model, info["calibration"]["temperature"])
    test = load_for_model(REPO_ROOT / "data" / "dog_emotion" / "test", ckpt["classes"], model.config)
    logits = batched_logits(make_runner("eager", model=model), test.images, 112)
    card = model_card.render(model, ckpt, rows, info, logits, test.labels.numpy(), str(SHIPPED_WEIGHTS),
                             bench_json=tmp_path / "none.json")
    for heading in ("## Model details", "## Intended use", "## Out-of-scope use", "## Training data", "## Evaluation",
                    "## Calibration", "## Formats", "## Limitations and known failure modes", "## How to reproduce"):
        assert heading in card
    acc = 100 * float((logits.argmax(1) == test.labels.numpy()).mean())
    assert f"**{acc:.2f}%** on 400 photos" in card and f"**{ckpt['params']:,} parameters**" in card
    assert f"T = {info['calibration']['temperature']:.3f}" in card and "a person (matplotlib's grace_hopper.jpg)" in card
    assert "not measured yet: run `make bench`" in card and "| onnx_fp32 | dog_emotion.onnx |" in card


def test_weights_that_trained_on_val_are_not_calibrated_on_it(nano_weights, split_root, tmp_path, capsys):
    from train.checkpoint import save_weights
    model, ckpt = load_weights(nano_weights)
    on_val = save_weights(model, ckpt["classes"], tmp_path / "tv.pkl", {"train_on": "train+val"})
    job = exporter.prepare_job(str(on_val), str(split_root), tmp_path / "out", 8, 0, True)
    assert job.calibration == {} and job.meta["temperature"] == 1.0
    assert "NOTE: not calibrated: " + str(on_val) + " trained on val" in capsys.readouterr().out
    # weights whose val logits hold no temperature (an untrained network) export uncalibrated, saying why
    train_only = save_weights(model, ckpt["classes"], tmp_path / "t.pkl", {"train_on": "train"})
    job = exporter.prepare_job(str(train_only), str(split_root), tmp_path / "out2", 8, 0, True)
    assert job.calibration == {} and "NOTE: not calibrated: " in capsys.readouterr().out
    assert not (tmp_path / "out2" / "dog_emotion.pkl").exists()


def test_only_an_export_of_the_shipped_weights_becomes_the_projects_model_card(tmp_path, capsys):
    from export import model_card
    shipped = torch.load(SHIPPED_WEIGHTS, weights_only=True)["sha256"]
    export_dir, dest = tmp_path / "export", tmp_path / "MODEL_CARD.md"
    export_dir.mkdir()
    (export_dir / "MODEL_CARD.md").write_text("# a card\nSpeed (not measured yet: run `make bench`)\n")
    (export_dir / METADATA_SIDECAR).write_text(json.dumps({"weights_sha256": "f" * 64}))
    with pytest.raises(DataError, match="exported from other weights .sha256 ffffffffffff"):
        model_card.publish(export_dir, dest)
    assert not dest.exists()
    (export_dir / METADATA_SIDECAR).write_text(json.dumps({"weights_sha256": shipped}))
    assert model_card.publish(export_dir, dest).read_text() == (export_dir / "MODEL_CARD.md").read_text()
    assert "no speed table" in capsys.readouterr().out
    (export_dir / "MODEL_CARD.md").unlink()
    with pytest.raises(DataError, match="not a complete export"):
        model_card.publish(export_dir, dest)


def test_one_classifier_for_every_exported_file_gives_the_weights_probabilities(exported, real_data, tmp_path):
    """train.classifier.Classifier, the one Python entry for inference, takes every FP32 file the
    export wrote (each in its own runtime, app forms included) and gives what the weights give; a
    damaged file of any kind is one error naming it."""
    from train.classifier import Classifier
    out, _, _ = exported
    photo = sorted((real_data / "test" / "happy").iterdir())[0]
    reference = Classifier(out / exporter.CALIBRATED_WEIGHTS).predict(photo)[0]["probabilities"]
    files = [f.file for f in exporter.FORMAT_TABLE if f.precision == "fp32" and f.file.endswith((".onnx", ".ort", ".pte", ".tflite"))
             and (out / f.file).is_file()]
    assert {"dog_emotion.onnx", "dog_emotion.app.pte"} <= set(files)
    for name in files:
        got = Classifier(out / name).predict(photo)[0]["probabilities"]
        assert list(got) == list(reference) and max(abs(got[c] - reference[c]) for c in got) < 1e-3, name
    for suffix in (".onnx", ".ort", ".pte", ".tflite"):
        (tmp_path / f"broken{suffix}").write_text("not a model")
        with pytest.raises(DataError, match=f"broken\\{suffix}: not a loadable"):
            Classifier(tmp_path / f"broken{suffix}")
    # a file whose outputs do not fit its labels (three outputs, four names) is refused, not mislabelled
    m = onnx.load(str(out / "dog_emotion.onnx"))
    m.graph.initializer.extend(onnx.numpy_helper.from_array(np.array([v], np.int64), n) for n, v in (("s", 0), ("e", 3), ("a", 1)))
    m.graph.node.append(onnx.helper.make_node("Slice", [m.graph.output[0].name, "s", "e", "a"], ["three"]))
    del m.graph.output[:]
    m.graph.output.append(onnx.helper.make_tensor_value_info("three", onnx.TensorProto.FLOAT, ["batch", 3]))
    onnx.save(m, str(tmp_path / "three.onnx"))
    with pytest.raises(DataError, match="gives 3 outputs but its metadata names 4 classes"):
        Classifier(tmp_path / "three.onnx")


def test_an_export_refuses_data_of_other_classes(tmp_path):
    from train.checkpoint import save_weights
    from dataclasses import replace
    from mobile_model import MobileCNN, get_config
    weights = save_weights(MobileCNN(replace(get_config("nano"), num_classes=3)), ["cat", "dog", "fox"], tmp_path / "three.pkl")
    root = write_split_root(tmp_path / "d")   # the four dog-emotion classes
    with pytest.raises(exporter.ExportError, match=r"three.pkl classifies cat, dog, fox, but .* holds the classes "
                                                   r"angry, happy, relaxed, sad: pass the data the model was trained on"):
        exporter.run_export(str(weights), str(root), tmp_path / "out", 8, 0)
    assert not (tmp_path / "out").exists()   # nothing written
