"""Fine-tuning: charrnn-train --init_from starts a new run from another run's weights."""
import json
import os

import numpy as np
import pytest

from charrnn import train as trainer
from charrnn.errors import CheckpointError, ConfigError
from conftest import checkpoint_tensors, run_cli, snapshot, tiny_config

SOURCE_TEXT = "The quick brown fox jumps over the lazy dog, then sleeps. THE END? " * 12
TARGET_TEXT = "the lazy dog sleeps, the fox jumps. " * 12  # only characters the source saw


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    data = root / "source_data"
    data.mkdir()
    (data / "t.txt").write_text(SOURCE_TEXT)
    save = str(root / "source")
    config = tiny_config(hidden_size=16, num_layers=2, num_epochs=3, val_frac=0.1, eval_every=10)
    trainer.train(trainer.prepare(config, str(data), save), save, str(root / "logs"))
    return root, save


def _target(tmp_path, text=TARGET_TEXT, name="target_data"):
    data = tmp_path / name
    data.mkdir()
    (data / "t.txt").write_text(text)
    return str(data)


def _weights(tensors):
    """The trainable weights among a checkpoint's tensors (not Adam's slots, the state or the step)."""
    return {k: v for k, v in tensors.items() if k.endswith(("embedding", "softmax_w", "softmax_b", "kernel", "bias"))}


def test_weights_start_from_the_source_with_a_fresh_optimizer(source, tmp_path):
    root, source_save = source
    save = str(tmp_path / "ft")
    config = tiny_config(hidden_size=16, num_layers=2, learning_rate=1e-9)
    run = trainer.prepare(config, _target(tmp_path), save, explicit=["learning_rate"], init_from=source_save)
    assert run.vocab.chars == trainer.RunDir(source_save).read_vocab().chars  # the source's ids
    assert run.vocab.counts[run.vocab.index["E"]] == 0  # counts are the new text's
    trainer.train(run, save, str(tmp_path / "logs"), max_steps=1)

    src = checkpoint_tensors(trainer.RunDir(source_save).resolve("auto"))
    new = checkpoint_tensors(trainer.RunDir(save).resolve("latest"))
    assert new["model/global_step"] == 1  # step 0, then one step
    assert np.isclose(new["model/learning_rate"], 1e-9)
    for name, value in _weights(src).items():  # one step at lr 1e-9 moves nothing measurably
        assert np.allclose(new[name], value, atol=1e-6), name
    adam = [k for k in new if k.endswith("kernel/Adam")]
    assert adam and not np.allclose(new[adam[0]], src[adam[0]])  # slots start over
    assert new["model/beta1_power"] == pytest.approx(0.9 ** 2)  # Adam's first step, not the source's 67th
    with open(os.path.join(save, "config.json"), encoding="utf-8") as f:
        recorded = json.load(f)["config"]["init_from"]
    assert recorded == os.path.abspath(trainer.RunDir(source_save).resolve("auto"))


def test_same_command_again_resumes_and_other_runs_are_refused_unless_fresh(source, tmp_path):
    root, source_save = source
    data = _target(tmp_path)
    save = tmp_path / "ft"
    common = ["--data_dir", data, "--save_dir", save, "--log_dir", tmp_path / "logs", "--init_from",
              source_save, "--batch_size", 4, "--seq_length", 8, "--noxla", "--num_epochs", 2]
    first = run_cli("charrnn-train", *common, "--max_steps", 3)
    assert first.returncode == 0, first.stderr
    assert "fine-tuning: weights from" in first.stderr
    again = run_cli("charrnn-train", *common, "--max_steps", 2)
    assert again.returncode == 0, again.stderr
    assert "resumed from" in again.stderr and "starting at step 3" in again.stderr
    at = common.index("--init_from")
    without = run_cli("charrnn-train", *common[:at], *common[at + 2:])  # --init_from not repeated
    assert without.returncode == 0, without.stderr
    assert "resumed from" in without.stderr and "starting at step 5" in without.stderr

    other = tmp_path / "other"
    made = run_cli("charrnn-train", "--data_dir", data, "--save_dir", other, "--log_dir", tmp_path / "logs2",
                   "--hidden_size", 16, "--num_layers", 2, "--batch_size", 4, "--seq_length", 8, "--noxla",
                   "--max_steps", 2)
    assert made.returncode == 0, made.stderr
    before = snapshot(other)
    refused = run_cli("charrnn-train", *[other if a == save else a for a in common])
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "already holds a run (trained from scratch); pass --fresh" in refused.stderr
    assert snapshot(other) == before
    replaced = run_cli("charrnn-train", *[other if a == save else a for a in common], "--fresh",
                       "--max_steps", 1)
    assert replaced.returncode == 0, replaced.stderr


def test_refusals_write_nothing(source, tmp_path):
    root, source_save = source
    data = _target(tmp_path)
    save = tmp_path / "ft"
    config = tiny_config(hidden_size=16, num_layers=2)

    with pytest.raises(ConfigError, match=r"--hidden_size 32 \(the source model's is 16\)"):
        trainer.prepare(tiny_config(hidden_size=32, num_layers=2), data, str(save), explicit=["hidden_size"],
                        init_from=source_save)
    with pytest.raises(ConfigError, match="is the --init_from directory"):
        trainer.prepare(config, data, source_save, init_from=source_save)
    new_chars = _target(tmp_path, TARGET_TEXT + "Zebra\x07 é", name="new_chars")
    with pytest.raises(ConfigError, match=r"3 character\(s\) the --init_from model never saw: "
                                          r"'\\x07' 'Z' 'é'"):
        trainer.prepare(config, new_chars, str(save), init_from=source_save)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        trainer.prepare(config, data, str(save), init_from=str(tmp_path / "empty"))
    assert not os.path.exists(save)


def test_a_damaged_source_is_one_line_and_nothing_is_written(source, tmp_path):
    import shutil

    root, source_save = source
    copy = tmp_path / "source"
    shutil.copytree(source_save, copy)
    for path in copy.rglob("*.data-*"):
        path.write_bytes(b"\0" * 16)
    save = tmp_path / "ft"
    result = run_cli("charrnn-train", "--data_dir", _target(tmp_path), "--save_dir", save, "--log_dir",
                     tmp_path / "logs", "--init_from", copy)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len([l for l in result.stderr.splitlines() if l.startswith("charrnn-train: error: ")]) == 1
    assert not os.path.exists(save)
