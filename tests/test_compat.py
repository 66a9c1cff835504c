"""A save directory written by release 0.1.0 still samples, evaluates and resumes unchanged.

tests/fixtures/release-0.1.0 holds the directory and what 0.1.0 printed for it (see its README).
Everything runs from a copy in tmp_path with a relative --save_dir, as the README's quick start
does, and no warning about damaged checkpoints may appear.
"""
import json
import os
import shutil

import pytest

from conftest import run_cli

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "release-0.1.0")


@pytest.fixture(scope="module")
def expected():
    with open(os.path.join(FIXTURE, "expected.json"), encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture
def workdir(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "release", ignore=shutil.ignore_patterns("expected.json"))
    return tmp_path / "release"


def _ok(result):
    assert result.returncode == 0, result.stderr
    assert "damaged" not in result.stderr and "warning" not in result.stderr, result.stderr
    return result.stdout


@pytest.mark.parametrize("which", ["auto", "latest"])
def test_greedy_text_is_0_1_0s(workdir, expected, which):
    out = _ok(run_cli("charrnn-sample", "--save_dir", "savedir", "--checkpoint", which,
                      "--prime", "ROMEO", "--n", 120, "--argmax", cwd=workdir))
    assert out[:-1] == expected["greedy"][which]


@pytest.mark.parametrize("key", ["auto/batch_size=default", "auto/batch_size=1",
                                 "latest/batch_size=default", "latest/batch_size=1"])
def test_evaluation_is_0_1_0s(workdir, expected, key):
    which, batch = key.split("/batch_size=")
    extra = [] if batch == "default" else ["--batch_size", batch]
    out = _ok(run_cli("charrnn-eval", "--save_dir", "savedir", "--checkpoint", which,
                      "--text", "eval.txt", "--json", *extra, cwd=workdir))
    result, want = json.loads(out), expected["eval"][key]
    assert result["nats_per_char"] == pytest.approx(want["nats_per_char"], abs=1e-5)
    assert result["characters"] == want["characters"]
    assert os.path.normpath(result["checkpoint"]) == os.path.normpath(
        os.path.join("savedir", want["checkpoint"]))


def test_resume_continues_the_0_1_0_run(workdir, expected):
    want = expected["resume_30_steps"]
    train = run_cli("charrnn-train", "--data_dir", "data", "--save_dir", "savedir", "--log_dir", "logs",
                    "--max_steps", 30, cwd=workdir)
    _ok(train)
    assert "resumed from" in train.stderr
    assert f"train loss {want['final_train_loss_4dp']:.4f}" in train.stderr
    with open(workdir / "savedir" / "best" / "best.json", encoding="utf-8") as f:
        best = json.load(f)
    assert best["step"] == want["best"]["step"]
    assert best["val_loss"] == pytest.approx(want["best"]["val_loss"], abs=1e-5)
    out = _ok(run_cli("charrnn-eval", "--save_dir", "savedir", "--checkpoint", "latest",
                      "--text", "eval.txt", "--json", cwd=workdir))
    assert json.loads(out)["nats_per_char"] == pytest.approx(want["eval_latest_nats_per_char"], abs=1e-5)
    out = _ok(run_cli("charrnn-sample", "--save_dir", "savedir", "--checkpoint", "latest",
                      "--prime", "ROMEO", "--n", 120, "--argmax", cwd=workdir))
    assert out[:-1] == want["greedy_latest"]
