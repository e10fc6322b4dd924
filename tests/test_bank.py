"""The teacher bank (train/teacher_bank.py): recorded views replay exactly, a stopped build resumes to the
same bank, and a run that reads it trains like one that runs its teachers."""
import json
from dataclasses import replace

import pytest
import torch

from train import bank as bank_command, teacher_bank as bank_module
from train import dog_emotion
from train.checkpoint import load_weights
from train.data import load_splits, render_views, storage_size

from test_train import run_train


@pytest.fixture
def teachers(split_root, tmp_path):
    """Two tiny teachers at two input sizes (32 and 40 px), trained one epoch each."""
    run_train(split_root, tmp_path / "t32", "--epochs", "1")
    run_train(split_root, tmp_path / "t40", "--epochs", "1", "--input-size", "40", "--seed", "1")
    return [str(tmp_path / "t32" / "dog_emotion.pkl"), str(tmp_path / "t40" / "dog_emotion.pkl")]


def test_the_bank_holds_each_teachers_logits_on_its_recorded_views(split_root, teachers, tmp_path, monkeypatch):
    splits = load_splits(split_root, storage_size(32), ("train", "val"))
    models = [load_weights(t)[0] for t in teachers]
    path = tmp_path / "bank.pt"
    monkeypatch.setattr(bank_module, "SAVE_EVERY", 2)
    banks = bank_module.load_or_build(path, splits, models, 5, 0.25, 0.5)
    for name, b in banks.items():
        assert b.views.shape == (len(splits[name]), 5, 13) and b.logits.shape == (len(splits[name]), 5, 2, 4)
        i, v = torch.tensor([0, 3]), torch.tensor([4, 1])
        for m, model in enumerate(models):   # each teacher sees the view rendered at its own input size
            expect = model(render_views(splits[name].images[i], b.views[i, v], model.config.input_size))
            assert torch.allclose(b.logits[i, v, m], expect, atol=1e-5)
    assert not torch.equal(banks["train"].views[:, 0], banks["train"].views[:, 1])   # views differ
    assert not list(tmp_path.glob("*.partial")), "a finished build leaves no partial file"

    # a build stopped after its first save resumes from there to the same bank
    calls = {"n": 0}
    real_save = bank_module.save_torch

    def stop_after_first_save(obj, p):
        real_save(obj, p)
        raise KeyboardInterrupt

    monkeypatch.setattr(bank_module, "save_torch", stop_after_first_save)
    with pytest.raises(KeyboardInterrupt):
        bank_module.load_or_build(tmp_path / "again.pt", splits, models, 5, 0.25, 0.5)
    monkeypatch.setattr(bank_module, "save_torch", real_save)
    partial = tmp_path / "again.train.partial"
    assert torch.load(partial, weights_only=True)["done"] == 2
    again = bank_module.load_or_build(tmp_path / "again.pt", splits, models, 5, 0.25, 0.5)
    for name in banks:
        assert torch.equal(again[name].views, banks[name].views)
        assert torch.allclose(again[name].logits, banks[name].logits, atol=1e-6)

    # a bank grows: three views, then five, is the five-view bank, its first three untouched
    bank_module.load_or_build(tmp_path / "grow.pt", splits, models, 3, 0.25, 0.5)
    grown = bank_module.load_or_build(tmp_path / "grow.pt", splits, models, 5, 0.25, 0.5)
    assert torch.equal(grown["val"].views, banks["val"].views)
    assert torch.allclose(grown["val"].logits, banks["val"].logits, atol=1e-6)
    assert bank_module.load_or_build(tmp_path / "grow.pt", splits, models, 2, 0.25, 0.5)["train"].num_views == 2

    # a bank that does not fit the photos it is asked for is refused, with what to do
    val = splits["val"]
    fewer = {"train": splits["train"], "val": replace(val, images=val.images[:5], labels=val.labels[:5])}
    with pytest.raises(bank_module.CheckpointError, match="delete it and it is rebuilt"):
        bank_module.load_or_build(path, fewer, models, 5, 0.25, 0.5)


def test_soft_targets_are_the_mean_of_the_teachers_softmax():
    logits = torch.randn(3, 2, 2, 4)
    b = bank_module.TeacherBank(torch.zeros(3, 2, 13), logits)
    idx, pick = torch.tensor([2, 0]), torch.tensor([1, 1])
    expect = (torch.softmax(logits[2, 1] / 2, -1).mean(0), torch.softmax(logits[0, 1] / 2, -1).mean(0))
    assert torch.allclose(b.probs(idx, pick, 2.0), torch.stack(expect))


def test_a_run_reads_the_bank_built_once_for_every_run(split_root, teachers, tmp_path, capsys):
    common = ["--epochs", "2", "--teacher", *teachers, "--teacher-views", "3", "--erase-prob", "0.5"]
    first = run_train(split_root, tmp_path / "a", *common)
    banks = list((tmp_path / "cache").glob("bank-*.pt"))
    assert len(banks) == 1 and first["history"][-1]["train_loss"] > 0
    stamp = banks[0].stat().st_mtime_ns
    # train + val and another seed use the same bank: nothing is rebuilt
    run_train(split_root, tmp_path / "b", *common, "--seed", "1", "--train-on", "train+val")
    assert list((tmp_path / "cache").glob("bank-*.pt")) == banks and banks[0].stat().st_mtime_ns == stamp
    assert "teacher bank: " + banks[0].name in capsys.readouterr().out
    # another augmentation is another bank
    run_train(split_root, tmp_path / "c", *common, "--crop-scale", "0.5")
    assert len(list((tmp_path / "cache").glob("bank-*.pt"))) == 2
    # the bank command builds what a recipe needs, and says so when the recipe has no bank
    recipe = tmp_path / "r.toml"
    recipe.write_text(f"model = 'nano'\ninput_size = 32\nteacher = {json.dumps(teachers)}\nteacher_views = 3\n"
                      f"crop_scale = 0.3\ndata = '{split_root}'\ncache_dir = '{tmp_path / 'cache'}'\n")
    bank_command.main(["--config", str(recipe), "--threads", "1"])
    assert len(list((tmp_path / "cache").glob("bank-*.pt"))) == 3
    recipe.write_text(f"model = 'nano'\nteacher_views = 0\ndata = '{split_root}'\n")
    with pytest.raises(SystemExit):
        bank_command.main(["--config", str(recipe)])
    assert "no teacher bank to build" in capsys.readouterr().err


def test_two_processes_record_one_bank_and_both_read_it(split_root, teachers, tmp_path):
    from test_distributed import run_train as torchrun_train
    done = torchrun_train(2, "--data", str(split_root), "--out", str(tmp_path / "ddp"), "--cache-dir", str(tmp_path / "cache"),
                   "--model", "nano", "--input-size", "32", "--epochs", "1", "--warmup-epochs", "1", "--threads", "1",
                   "--batch-size", "4", "--train-on", "train", "--teacher", *teachers, "--teacher-views", "2")
    assert len(list((tmp_path / "cache").glob("bank-*.pt"))) == 1 and not list((tmp_path / "cache").glob("*.partial"))
    assert done.stdout.count("bank: recorded") == 1, "rank 0 records it, rank 1 reads what it wrote"
    assert (tmp_path / "ddp" / "dog_emotion.pkl").is_file()


def test_the_bank_and_the_online_teachers_give_the_same_first_step(split_root, teachers, tmp_path, monkeypatch):
    """With one recorded view (the one augment_batch would draw) the bank's targets are the online
    teachers' targets: the distillation term is the same function of the same numbers."""
    from train import engine
    splits = load_splits(split_root, storage_size(32), ("train", "val"))
    models = [load_weights(t)[0] for t in teachers[:1]]
    b = bank_module.load_or_build(tmp_path / "one.pt", splits, models, 1, 0.55, 0.0)["train"]
    idx = torch.arange(8)
    x = render_views(splits["train"].images[idx], b.views[idx, 0], 32)
    online = engine.teacher_log_probs(models, x, 2.0)
    stored = b.probs(idx, torch.zeros(8, dtype=torch.long), 2.0).log()
    assert torch.allclose(online, stored, atol=1e-5)
    assert dog_emotion.parse_args(["train", "--teacher-views", "7"]).teacher_views == 7
