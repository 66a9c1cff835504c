"""The save directory: one module for its files, relative paths, and runs that fail early."""
import os

import pytest

from charrnn import train as trainer
from charrnn.errors import ConfigError, TrainingError
from charrnn.rundir import RunDir
from conftest import make_data_dir, run_cli, snapshot, tiny_config

TEXT = "Whether 'tis nobler in the mind to suffer the slings and arrows of outrageous fortune. " * 6


@pytest.fixture
def trained(tmp_path):
    data = make_data_dir(tmp_path, TEXT)
    save = str(tmp_path / "save")
    config = tiny_config(val_frac=0.1, eval_every=4, save_every=4, max_to_keep=2)
    trainer.train(trainer.prepare(config, data, save), save, str(tmp_path / "logs"), max_steps=8)
    return tmp_path, save


def test_relative_and_absolute_paths_resolve_the_same_checkpoints(trained, monkeypatch):
    root, save = trained
    absolute = {which: RunDir(save).resolve(which) for which in ("auto", "best", "latest")}
    monkeypatch.chdir(root)
    warnings = []
    for _ in range(5):  # the order of candidates once depended on a set: try it more than once
        relative = {which: RunDir("save").resolve(which, warnings.append) for which in absolute}
        assert {k: os.path.abspath(v) for k, v in relative.items()} == absolute
    assert warnings == []
    assert RunDir("save").resolve("latest").endswith(os.path.join("save", "model.ckpt-8"))


def test_open_model_checks_config_against_vocabulary(trained):
    _, save = trained
    model = RunDir(save).open_model("latest")
    assert model.config.vocab_size == len(model.vocab) and model.checkpoint.endswith("model.ckpt-8")


def test_log_dir_that_is_a_file_is_a_one_line_error_and_leaves_nothing(tmp_path):
    data = make_data_dir(tmp_path, TEXT)
    (tmp_path / "logs").write_text("not a folder")
    save = tmp_path / "save"
    result = run_cli("charrnn-train", "--data_dir", data, "--save_dir", save, "--log_dir", tmp_path / "logs",
                     "--hidden_size", 16, "--num_layers", 1, "--batch_size", 4, "--seq_length", 8, "--noxla")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "--log_dir" in errors[0] and "is a file" in errors[0], result.stderr
    assert not save.exists()


def test_a_run_that_fails_before_its_first_save_leaves_no_new_directory(tmp_path):
    data = make_data_dir(tmp_path, TEXT)
    save = tmp_path / "new" / "save"
    diverging = tiny_config(learning_rate=3e38)  # the first update overflows
    with pytest.raises(TrainingError):
        trainer.train(trainer.prepare(diverging, data, str(save)), str(save), str(tmp_path / "logs"))
    assert not save.exists()


def test_a_failing_run_in_an_existing_directory_keeps_it(trained):
    root, save = trained
    before = snapshot(save)
    with pytest.raises(ConfigError, match="--log_dir"):
        (root / "file").write_text("x")
        run = trainer.prepare(tiny_config(val_frac=0.1), make_data_dir(root, TEXT), save)
        trainer.train(run, save, str(root / "file"))
    assert snapshot(save) == before
