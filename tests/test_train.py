import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from mobile_model import CONFIGS, MobileCNN, ModelConfig, build_model, count_parameters
from train import dog_emotion
from train.checkpoint import CheckpointError, load_weights, save_weights
from train.data import DataError

from conftest import TINY


def run_train(root, out, *extra):
    dog_emotion.main(["train", "--data", str(root), "--out", str(out), "--cache-dir", str(out.parent / "cache"),
                      *TINY, *extra])
    return json.loads((out / "metrics.json").read_text())


def test_smoke_run_writes_every_artifact(split_root, tmp_path):
    out = tmp_path / "run"
    m = run_train(split_root, out, "--epochs", "2")
    for name in ("dog_emotion.pkl", "best.pkl", "last.ckpt", "metrics.json", "summary.md", "curves.png",
                 "confusion_test.png"):
        assert (out / name).stat().st_size > 0, name
    assert [h["epoch"] for h in m["history"]] == [1, 2]
    assert set(m["per_class_test"]) == {"angry", "happy", "relaxed", "sad"}
    assert sum(map(sum, m["confusion_test"])) == 16
    model, ckpt = load_weights(out / "dog_emotion.pkl")
    assert ckpt["params"] == count_parameters(model) == m["params"]
    assert ckpt["classes"] == ["angry", "happy", "relaxed", "sad"] and model.config.input_size == 32
    assert not list(out.glob(".*.tmp")), "temp files left behind"


@pytest.fixture
def full_and_cut(split_root, tmp_path):
    """A finished 3-epoch run and the same run stopped after epoch 1 (--stop-after)."""
    full = run_train(split_root, tmp_path / "full", "--epochs", "3", "--seed", "5")
    dog_emotion.main(["train", "--data", str(split_root), "--out", str(tmp_path / "cut"),
                      "--cache-dir", str(tmp_path / "cache"), *TINY, "--epochs", "3", "--seed", "5",
                      "--stop-after", "1"])
    assert not (tmp_path / "cut" / "metrics.json").exists()
    return full, tmp_path / "cut"


def test_interrupted_run_resumes_to_the_same_result(split_root, full_and_cut):
    full, cut = full_and_cut
    resumed = run_train(split_root, cut, "--epochs", "3", "--seed", "5", "--resume")
    assert [(h["train_loss"], h["val_loss"]) for h in full["history"]] == pytest.approx(
        [(h["train_loss"], h["val_loss"]) for h in resumed["history"]], abs=1e-6)
    assert full["test_acc"] == resumed["test_acc"]


@pytest.mark.parametrize("options, message", [
    (["--epochs", "4"], "epochs=3, now 4.*same options"),
    (["--epochs", "3", "--lr", "0.01"], "lr=0.004, now 0.01"),           # any option that changes the result
    # a run continues in the memory layout it started in: float rounding differs between layouts
    (["--epochs", "3", "--no-channels-last"], "written in the channels-last layout, this run would be NCHW"),
])
def test_resume_refuses_a_run_it_would_not_continue(split_root, full_and_cut, options, message):
    with pytest.raises(SystemExit, match=message):
        run_train(split_root, full_and_cut[1], "--seed", "5", *options, "--resume")


def test_resume_compares_the_data_by_content_not_by_path(split_root, full_and_cut, tmp_path, monkeypatch):
    full, cut = full_and_cut
    grown = tmp_path / "grown"
    shutil.copytree(split_root, grown)
    shutil.copy(next((grown / "train" / "sad").iterdir()), grown / "train" / "sad" / "extra.png")
    with pytest.raises(SystemExit, match="files of train/ under .*grown are not the ones this run trained on"):
        run_train(grown, cut, "--epochs", "3", "--seed", "5", "--resume")
    monkeypatch.chdir(split_root.parent)  # the same files reached by another path
    resumed = run_train(Path(split_root.name), cut, "--epochs", "3", "--seed", "5", "--resume")
    assert resumed["test_acc"] == full["test_acc"]


def compare(*argv) -> dict:
    return dog_emotion.cmd_compare(dog_emotion.parse_args(["compare", *map(str, argv)]))


def test_compare_reads_finished_and_stopped_runs(full_and_cut, tmp_path):
    full, cut = full_and_cut
    rows = compare(tmp_path / "full", cut, "--out", tmp_path / "cmp.png")["runs"]
    best = max(full["history"], key=lambda h: h["val_acc"])
    assert rows[0]["epochs"] == "3/3" and rows[0]["best val (%)"] == f"{best['val_acc']:.2f} at {best['epoch']}"
    assert rows[0]["final val (%)"] == f"{full['history'][-1]['val_acc']:.2f}"
    assert rows[1]["epochs"] == "1/3 (running or stopped)" and (tmp_path / "cmp.png").stat().st_size > 0
    until = compare(tmp_path / "full", "--until", "1", "--out", tmp_path / "cmp.png")["runs"]
    assert until[0]["epochs"] == "1/3" and until[0]["final val (%)"] == f"{full['history'][0]['val_acc']:.2f}"
    with pytest.raises(SystemExit, match="nowhere: not a training run folder"):
        dog_emotion.main(["compare", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.png")])


def fake_run(tmp_path, full: dict, folder: str, edit: dict, final_val: float) -> str:
    """full's metrics with other options and a final val of `final_val`."""
    (tmp_path / folder).mkdir()
    history = [dict(h) for h in full["history"]]
    history[-1]["val_acc"] = final_val
    m = {**full, "args": {**full["args"], **edit, "out": str(tmp_path / folder)}, "history": history}
    (tmp_path / folder / "metrics.json").write_text(json.dumps(m))
    return str(tmp_path / folder)


def test_compare_ranks_recipes_by_mean_final_val_with_sd_and_paired_se(full_and_cut, tmp_path):
    # seeds of one recipe (other folders, other threads) group together; another lr is another recipe
    full = full_and_cut[0]
    a = [fake_run(tmp_path, full, f"a{s}", {"seed": s, "threads": 2}, v) for s, v in ((0, 70.0), (1, 72.0), (2, 74.0))]
    b = [fake_run(tmp_path, full, f"b{s}", {"seed": s, "lr": 0.01}, v) for s, v in ((0, 69.0), (1, 70.0), (2, 71.0))]
    recipes = compare(*a, *b, "--out", tmp_path / "cmp.png")["recipes"]
    assert [r["runs"] for r in recipes] == ["a0, a1, a2", "b0, b1, b2"]
    assert recipes[0]["final val, mean +- sd (%)"] == "72.00 +- 2.00" and recipes[0]["vs the first (points)"] == "-"
    # paired by seed: differences 1, 2, 3 -> mean 2, sd 1, SE 1/sqrt(3) = 0.58; 2 > 2 SE
    assert recipes[1]["final val, mean +- sd (%)"] == "70.00 +- 1.00"
    assert recipes[1]["vs the first (points)"] == "-2.00 +- 0.58 SE (paired): larger than the noise"
    # unpaired (other seeds): Welch's SE sqrt(4/3 + 1/3) = 1.29, so 2 points is within the noise
    c = [fake_run(tmp_path, full, f"c{s}", {"seed": s, "lr": 0.02}, v) for s, v in ((5, 69.0), (6, 70.0), (7, 71.0))]
    recipes = compare(*a, *c, "--out", tmp_path / "cmp.png")["recipes"]
    assert recipes[1]["vs the first (points)"] == "-2.00 +- 1.29 SE: within the noise (under 2 SE)"


def test_other_architecture_and_tampered_files_are_refused(tmp_path):
    other = MobileCNN(ModelConfig(stem=8, stages=((8, 2, 1),)))
    save_weights(other, ["a", "b", "c", "d"], tmp_path / "other.pkl")
    with pytest.raises(CheckpointError, match="holds config"):
        load_weights(tmp_path / "other.pkl", expect=build_model("micro14").config)
    # same arch name but the weights of a different network
    ckpt = torch.load(tmp_path / "other.pkl", weights_only=True)
    ckpt["state_dict"] = build_model("micro14").state_dict()
    torch.save(ckpt, tmp_path / "mixed.pkl")
    with pytest.raises(CheckpointError, match="do not fit"):
        load_weights(tmp_path / "mixed.pkl")
    # a bare state_dict of a torchvision model
    import torchvision
    torch.save(torchvision.models.mobilenet_v3_small(num_classes=4).state_dict(), tmp_path / "tv.pkl")
    with pytest.raises(CheckpointError, match="not a MobileCNN weights file.*bare state_dict"):
        load_weights(tmp_path / "tv.pkl")
    # a pickle that would run code on load
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"arch": "MobileCNN", "payload": Exploit()}, f)
    with pytest.raises(CheckpointError, match="refused"):
        load_weights(tmp_path / "evil.pkl")
    with pytest.raises(CheckpointError, match="not found"):
        load_weights(tmp_path / "missing.pkl")


class Exploit:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_evaluate_and_predict_cli(split_root, tmp_path, capsys):
    out = tmp_path / "run"
    run_train(split_root, out, "--epochs", "1")
    capsys.readouterr()
    weights = str(out / "dog_emotion.pkl")
    params = count_parameters(load_weights(weights)[0])
    # a split root and a flat class-per-folder root
    for data in (["--data", str(split_root)], ["--data", str(split_root / "val")]):
        dog_emotion.main(["evaluate", *data, "--weights", weights])
        last = capsys.readouterr().out.strip().splitlines()[-1]
        result = json.loads(last)
        assert result["n"] == 16 and 0 <= result["accuracy"] <= 100 and result["params"] == params
        assert result["ci95"][0] <= result["accuracy"] <= result["ci95"][1]
    # several weights: each one's accuracy and their ensemble's (the same model twice: the same answers)
    dog_emotion.main(["evaluate", "--data", str(split_root), "--weights", weights, weights])
    ensemble = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ensemble["accuracy"] == result["accuracy"] and ensemble["params"] == 2 * params
    images = sorted((split_root / "test" / "sad").iterdir())[:2]
    rows = dog_emotion.cmd_predict(dog_emotion.parse_args(
        ["predict", *map(str, images), "--weights", weights]))
    assert len(rows) == 2 and all(abs(sum(r["probabilities"].values()) - 1) < 1e-3 for r in rows)
    assert all(r["label"] in ("angry", "happy", "relaxed", "sad") for r in rows)
    with pytest.raises(SystemExit, match="1 of 2 images could not be read"):
        dog_emotion.main(["predict", str(images[0]), str(tmp_path / "missing.jpg"), "--weights", weights])
    assert "missing.jpg: file not found" in capsys.readouterr().err
    # folders (recursively) and glob patterns, in a stable order; --out writes an annotated copy of each
    rows = dog_emotion.cmd_predict(dog_emotion.parse_args(["predict", str(split_root / "test" / "sad"), str(split_root / "val" / "*" / "*_0.jpg"),
                                                           "--weights", weights, "--out", str(tmp_path / "annotated")]))
    assert [r["file"] for r in rows[:4]] == sorted(map(str, (split_root / "test" / "sad").iterdir()))
    assert [r["file"].split("/")[-2] for r in rows[4:]] == ["angry", "happy", "relaxed", "sad"]
    assert len(list((tmp_path / "annotated").glob("*.png"))) == 8
    with pytest.raises(SystemExit, match="nothing/\\*.jpg: no file matches"):
        dog_emotion.main(["predict", str(tmp_path / "nothing" / "*.jpg"), "--weights", weights])
    (tmp_path / "bad.jpg").write_text("no")
    with pytest.raises(SystemExit, match="1 of 1 images could not be read"):
        dog_emotion.main(["predict", str(tmp_path / "bad.jpg"), "--weights", weights])
    with pytest.raises(SystemExit, match="error: .*not found at"):
        dog_emotion.main(["evaluate", "--data", str(tmp_path / "nowhere"), "--weights", weights])


def test_a_squash_model_fine_tuned_from_a_crop_model_keeps_its_framing_through_every_door(split_root, tmp_path, capsys):
    """--init starts from a trained file (its folded form), --framing squash trains and records
    the client's framing; evaluate and predict then frame photos that way, and --framing on
    evaluate shows a model under the other framing."""
    crop = tmp_path / "crop"
    run_train(split_root, crop, "--epochs", "1")
    m = run_train(split_root, tmp_path / "squash", "--epochs", "2", "--framing", "squash", "--init", str(crop / "dog_emotion.pkl"))
    model, ckpt = load_weights(tmp_path / "squash" / "dog_emotion.pkl")
    assert model.config.framing == "squash" and ckpt["preprocess"]["framing"] == "squash"
    assert m["params"] == count_parameters(load_weights(crop / "dog_emotion.pkl")[0]), "a fine-tune keeps the model"
    start = load_weights(crop / "dog_emotion.pkl")[0].state_dict()
    assert any(not torch.equal(v, start[k]) for k, v in model.state_dict().items()), "the fine-tune trained"
    capsys.readouterr()
    for framing in ("", "crop"):
        dog_emotion.main(["evaluate", "--data", str(split_root), "--weights", str(tmp_path / "squash" / "dog_emotion.pkl"),
                          *(["--framing", framing] if framing else [])])
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["framing"] == (framing or "squash")
    with pytest.raises(SystemExit, match="--init .*crop/dog_emotion.pkl: holds .* this run builds"):
        run_train(split_root, tmp_path / "other", "--epochs", "1", "--model", "micro14", "--init", str(crop / "dog_emotion.pkl"))


def test_distillation_and_strong_augmentation_run(split_root, tmp_path):
    run_train(split_root, tmp_path / "teacher", "--epochs", "1")
    teacher = str(tmp_path / "teacher" / "dog_emotion.pkl")
    student = run_train(split_root, tmp_path / "student", "--epochs", "1", "--teacher", teacher, "--distill-loss", "dist",
                        "--crop-scale", "0.25", "--erase-prob", "0.5")
    # trained with BatchNorm, shipped folded: the inference count, not the training one
    model, ckpt = load_weights(tmp_path / "student" / "dog_emotion.pkl")
    assert model.config.folded and student["params"] == count_parameters(model) < student["train_params"]
    # a teacher at 32 px teaches a 48 px student on its own resize of the same view
    bigger = run_train(split_root, tmp_path / "bigger", "--epochs", "1", "--teacher", teacher, "--input-size", "48")
    assert bigger["config"]["input_size"] == 48 and bigger["history"][0]["train_loss"] > 0
    with pytest.raises(SystemExit):                          # argparse: "1.5 is not between 0 and 1"
        dog_emotion.parse_args(["train", "--erase-prob", "1.5"])
    other = tmp_path / "other.pkl"
    save_weights(build_model("nano"), ["w", "x", "y", "z"], other)
    with pytest.raises(SystemExit, match="teacher has classes"):
        run_train(split_root, tmp_path / "bad", "--epochs", "1", "--teacher", str(other))


def test_recipe_file_sets_defaults_and_the_command_line_wins(split_root, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('model = "nano"\nepochs = 2\ncrop_scale = 0.25\nteacher = []\nno_flip_average = true\n')
    m = run_train(split_root, tmp_path / "run", "--config", str(recipe), "--epochs", "1")
    assert len(m["history"]) == 1                                   # the command line won
    written = (tmp_path / "run" / "args.toml").read_text()
    assert "crop_scale = 0.25" in written and "no_flip_average = true" in written
    # the written options, loaded as a recipe, resolve to the same options
    again = vars(dog_emotion.parse_args(["train", "--config", str(tmp_path / "run" / "args.toml")]))
    assert {k: again[k] for k in m["args"] if k not in ("config",)} == {k: v for k, v in m["args"].items() if k != "config"}


@pytest.mark.parametrize("text, message", [
    ('epoch = 3\n', "unknown option 'epoch'"),
    ('erase_prob = 1.5\n', "option 'erase_prob'.*not between 0 and 1"),
    ('model = "huge"\n', "option 'model'.*invalid choice"),
    ('epochs = [\n', "not valid TOML"),
    ('teacher = "a.pkl"\n', "option 'teacher' takes a list"),
    ('epochs = [1, 2]\n', "option 'epochs' takes one value"),
])
def test_bad_recipes_are_refused_by_name(tmp_path, text, message):
    recipe = tmp_path / "bad.toml"
    recipe.write_text(text)
    with pytest.raises(SystemExit, match=message):
        dog_emotion.main(["train", "--config", str(recipe)])
    with pytest.raises(SystemExit, match="No such file"):
        dog_emotion.main(["train", "--config", str(tmp_path / "none.toml")])


def test_a_recipe_is_one_layer_on_the_commands_defaults(tmp_path):
    (tmp_path / "small.toml").write_text('model = "nano"\nepochs = 7\n')
    args = dog_emotion.parse_args(["train", "--config", str(tmp_path / "small.toml"), "--epochs", "3"])
    defaults = dog_emotion.parse_args(["train"])
    assert (args.model, args.epochs) == ("nano", 3)            # the file's, then the command line's
    assert (args.crop_scale, args.teacher) == (defaults.crop_scale, defaults.teacher)   # the rest: the defaults
    # a bad option is named with its file; `extends` (recipes built on recipes) is refused, saying what to do
    (tmp_path / "small.toml").write_text('model = "nano"\nepoch = 7\n')
    with pytest.raises(SystemExit, match=r"small.toml: unknown option 'epoch'"):
        dog_emotion.main(["train", "--config", str(tmp_path / "small.toml")])
    (tmp_path / "small.toml").write_text('extends = "large.toml"\nepochs = 3\n')
    with pytest.raises(SystemExit, match=r"small.toml: 'extends' is gone.*copy the options of 'large.toml'"):
        dog_emotion.main(["train", "--config", str(tmp_path / "small.toml")])


def test_no_recipe_in_the_repo_builds_on_another_or_only_sets_a_seed():
    from train.common import REPO_ROOT
    from train.recipes import read_recipe
    for path in sorted((REPO_ROOT / "recipes").rglob("*.toml")):
        recipe = read_recipe(path)   # refuses `extends`
        assert set(recipe) - {"seed"}, f"{path}: only a seed (use --seed)"


def test_every_recipe_in_the_repo_loads():
    from train.common import REPO_ROOT
    recipes = sorted((REPO_ROOT / "recipes").rglob("*.toml"))
    assert recipes
    for path in recipes:
        assert dog_emotion.parse_args(["train", "--config", str(path)]).model in CONFIGS, path


def test_wilson_interval_matches_hand_computed_values():
    from train.scoring import wilson_interval
    lo, hi = wilson_interval(70, 100)   # by hand: centre 0.719208/1.038416, half 1.96*sqrt(.00219604)/1.038416
    assert abs(lo - 60.415) < 1e-3 and abs(hi - 78.105) < 1e-3
    lo, hi = wilson_interval(0, 10)                          # stays inside [0, 100] where the normal one does not
    assert lo == 0 and 0 < hi < 35


def test_the_run_log_renders_one_size_table_row_per_recipe(split_root, tmp_path):
    from train import results
    run_train(split_root, tmp_path / "s0", "--epochs", "2", "--seed", "0", "--erase-prob", "0.5")
    run_train(split_root, tmp_path / "s1", "--epochs", "2", "--seed", "1", "--erase-prob", "0.5")
    log = tmp_path / "runs.jsonl"
    results.main(["--log", str(log), "add", str(tmp_path / "s0"), str(tmp_path / "s1"), "--note", "two seeds"])
    results.main(["--log", str(log), "add", str(tmp_path / "s1"), "--read-test", str(split_root)])  # replaced, not doubled
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert rows[1]["test"] == json.loads((tmp_path / "s1" / "metrics.json").read_text())["test_acc"]  # read again, the same
    finals = [json.loads((tmp_path / s / "metrics.json").read_text())["final_val_acc"] for s in ("s0", "s1")]
    assert [r["run"] for r in rows] == ["s0", "s1"] and [r["final_val"] for r in rows] == finals
    assert rows[0]["options"].startswith("--batch-size 8 --epochs 2 --erase-prob 0.5") and rows[0]["macs"] > 0
    page, figure = tmp_path / "results.md", tmp_path / "frontier.png"
    page.write_text("# R\n<!-- generated: size-table -->\nold\n<!-- end: size-table -->\ntext kept\n")
    results.render(log, page, figure, tmp_path / "runs.md")
    text = page.read_text()
    mean = sum(finals) / 2
    sd = abs(finals[0] - finals[1]) / 2 ** 0.5
    block = text.split("<!-- generated: size-table -->")[1].split("<!-- end: size-table -->")[0]
    size_rows = [line for line in block.splitlines() if line.startswith("| ") and not line.startswith("| recipe |")]
    assert len(size_rows) == 1 and f"{mean:.2f} +- {sd:.2f}" in size_rows[0] and "| 0, 1 |" in size_rows[0]
    assert "old" not in text and "text kept" in text and figure.stat().st_size > 0
    assert "| s0 | 0 |" in (tmp_path / "runs.md").read_text()
    page.write_text("no markers")
    with pytest.raises(DataError, match="results.md: no '<!-- generated: size-table -->'"):
        results.render(log, page, figure, tmp_path / "runs.md")


def test_the_epoch_line_gives_the_whole_runs_time_left():
    from train.engine import eta
    history = [{"epoch": e, "seconds": s} for e, s in ((1, 100.0), (2, 30.0), (3, 30.0), (4, 30.0), (5, 30.0), (6, 30.0))]
    assert eta(history, 160) == "eta 1h17m"   # 154 epochs of the last five's 30 s
    assert eta(history[:1], 2) == "eta 1m40s" and eta(history, 6) == "eta 0m00s"


def test_a_logged_runs_values_are_its_recipes_with_its_options_applied():
    from train.recipes import recipe_record, run_values
    values = recipe_record("")["values"]
    assert run_values({"recipe_values": values, "options": ""}) == values
    changed = run_values({"recipe_values": values, "options": "--train-on train+val --epochs 5 --teacher"})
    assert changed == {**values, "train_on": "train+val", "epochs": 5, "teacher": []}
    assert run_values({"recipe_values": values, "options": "make train (2 threads)"}) is None   # early rows: words
    assert run_values({"recipe_values": values, "options": "--model nope"}) is None
