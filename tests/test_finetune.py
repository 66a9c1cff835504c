"""Fine-tuning: charrnn-train --init_from starts a new run from another run's weights."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from charrnn import train as trainer
from charrnn.errors import CheckpointError, ConfigError
from conftest import assert_identical, checkpoint_tensors, run_cli, snapshot, tiny_config

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
                                          r"'\\x07' 'Z' 'é'; remove them from the text, or pass --extend_vocab"):
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


# ---------------------------------------------------------------- --extend_vocab

LOWER_TEXT = "the quick brown fox jumps over the lazy dog\n" * 12  # '\n', ' ' and a-z
# '\t' sorts before every source character, 'A' between ' ' and 'a', '~' after 'z': the new
# characters take ids at both ends and in the middle, so old characters' ids move both ways.
NEW_CHARS = ["\t", "A", "~"]
EXTENDED_TEXT = "\tA lazy dog ~ the quick fox\n" * 16
ABSENT = set("bjmnprsvw")  # source characters the extended text never uses: their rows get no gradient


@pytest.fixture(scope="module")
def lower_source(tmp_path_factory):
    root = tmp_path_factory.mktemp("lower")
    save = str(root / "source")
    data = _target(root, LOWER_TEXT, name="source_data")
    config = tiny_config(hidden_size=16, num_layers=2, num_epochs=3)
    trainer.train(trainer.prepare(config, data, save), save, str(root / "logs"))
    return save


def _extend(source_save, data, save, **overrides):
    config = tiny_config(hidden_size=16, num_layers=2, num_epochs=2, **overrides)
    return trainer.prepare(config, data, str(save), init_from=source_save, extend_vocab=True)


def test_extend_vocab_adds_fresh_rows_and_columns_and_keeps_every_old_one_exactly(lower_source, tmp_path):
    from charrnn.model import TrainGraph
    from charrnn.tfcompat import load

    run = _extend(lower_source, _target(tmp_path, EXTENDED_TEXT), tmp_path / "ft")
    src_vocab = trainer.RunDir(lower_source).read_vocab()
    assert run.vocab.chars == sorted(src_vocab.chars + NEW_CHARS)
    assert run.vocab.chars[0] == "\t" and run.vocab.chars[-1] == "~"  # new ids at both ends
    assert run.config.added_chars == "\tA~" and run.config.vocab_size == len(src_vocab) + 3
    assert any("--extend_vocab: 3 new character(s)" in note and "'A'" in note for note in run.notes)

    # The weights as train() starts them: a real graph initialised, then the source's checkpoint.
    tf, tf1 = load()
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(run.config.seed)
        TrainGraph(run.config)
        weights = tf1.trainable_variables()
        init = tf1.global_variables_initializer()
    names = [v.op.name for v in weights]
    with tf1.Session(graph=graph) as session:
        session.run(init)
        fresh = dict(zip(names, session.run(weights)))  # what a run from scratch of this vocabulary has
        trainer.start_from_source(session, run, weights)
        started = dict(zip(names, session.run(weights)))

    src = checkpoint_tensors(trainer.RunDir(lower_source).resolve("auto"))
    old = [run.vocab.index[c] for c in src_vocab.chars]  # source id -> the run's id
    new = [run.vocab.index[c] for c in NEW_CHARS]
    assert old != list(range(len(old)))  # the old characters did move
    emb, w, b = "model/embedding", "model/softmax_w", "model/softmax_b"
    assert started[emb].shape == (len(run.vocab), 16) and started[w].shape == (16, len(run.vocab))
    assert np.array_equal(started[emb][old], src[emb])
    assert np.array_equal(started[w][:, old], src[w])
    assert np.array_equal(started[b][old], src[b])
    assert np.array_equal(started[emb][new], fresh[emb][new])
    assert np.array_equal(started[w][:, new], fresh[w][:, new])
    assert np.array_equal(started[b][new], np.zeros(3, np.float32))
    assert not np.allclose(fresh[emb][old], src[emb])  # the comparison above could fail
    for name in names:
        if name not in (emb, w, b):
            assert np.array_equal(started[name], src[name]), name


@pytest.fixture(scope="module")
def extended(lower_source, tmp_path_factory):
    """A run fine-tuned by the command line with --extend_vocab, stopped after 3 steps and
    resumed to the end by the same command."""
    root = tmp_path_factory.mktemp("extended")
    data = _target(root, EXTENDED_TEXT)
    save = root / "ft"
    command = ["charrnn-train", "--data_dir", data, "--save_dir", save, "--log_dir", root / "logs",
               "--init_from", lower_source, "--extend_vocab", "--batch_size", 4, "--seq_length", 8,
               "--noxla", "--num_epochs", 2, "--save_every", 3]
    first = run_cli(*command, "--max_steps", 3)
    assert first.returncode == 0, first.stderr
    at_step_3 = checkpoint_tensors(str(save / "model.ckpt-3"))
    again = run_cli(*command)
    assert again.returncode == 0, again.stderr
    return root, str(save), first.stderr + again.stderr, at_step_3


def test_extended_run_records_its_origin_and_resumes_by_the_same_command(lower_source, extended):
    root, save, stderr, at_step_3 = extended
    assert "--extend_vocab: 3 new character(s)" in stderr
    assert "resumed from" in stderr and "starting at step 3" in stderr
    with open(os.path.join(save, "config.json"), encoding="utf-8") as f:
        config = json.load(f)["config"]
    assert config["added_chars"] == "\tA~" and config["init_from"].startswith(os.path.abspath(lower_source))
    vocab = trainer.RunDir(save).read_vocab()
    assert vocab.chars == sorted(trainer.RunDir(lower_source).read_vocab().chars + NEW_CHARS)
    # After 3 steps, the rows of source characters the text never uses are the source's, at their
    # new ids, moved only by AdamW's decay (the default --weight_decay 0.1): no gradient reaches
    # them, and each step multiplies them by 1 - lr x weight decay.
    src = checkpoint_tensors(trainer.RunDir(lower_source).resolve("auto"))
    src_vocab = trainer.RunDir(lower_source).read_vocab()
    assert config["weight_decay"] == 0.1
    assert at_step_3["model/learning_rate"] == np.float32(config["learning_rate"])  # 3 steps of epoch 0
    shrink = (1 - config["learning_rate"] * config["weight_decay"]) ** 3
    for c in ABSENT:
        np.testing.assert_allclose(at_step_3["model/embedding"][vocab.index[c]],
                                   src["model/embedding"][src_vocab.index[c]] * shrink, rtol=1e-6, atol=0,
                                   err_msg=c)


def test_extended_run_resumes_bit_exact(lower_source, tmp_path):
    data = _target(tmp_path, EXTENDED_TEXT)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    trainer.train(_extend(lower_source, data, whole), str(whole), str(tmp_path / "l1"))
    first = trainer.train(_extend(lower_source, data, parts), str(parts), str(tmp_path / "l2"), max_steps=5)
    assert first.status == "max_steps"
    again = _extend(lower_source, data, parts)  # the same command again
    assert again.resume and again.config.added_chars == "\tA~"
    trainer.train(again, str(parts), str(tmp_path / "l2"))
    assert_identical(checkpoint_tensors(str(whole)), checkpoint_tensors(str(parts)))


def test_sample_eval_and_export_take_the_new_characters(extended, tmp_path):
    from charrnn.evaluate import evaluate_text
    from test_export import PLAIN_TF, generate, score

    root, save, _, _ = extended
    prime = "\tA lazy ~"
    sampled = run_cli("charrnn-sample", "--save_dir", save, "--prime", prime, "--n", 40, "--seed", 3)
    assert sampled.returncode == 0, sampled.stderr
    assert sampled.stdout.startswith(prime) and len(sampled.stdout) == len(prime) + 40 + 1
    text = tmp_path / "eval.txt"
    text.write_text(EXTENDED_TEXT[:200], encoding="utf-8")
    scored = run_cli("charrnn-eval", "--save_dir", save, "--text", text, "--json")
    assert scored.returncode == 0, scored.stderr
    nats = json.loads(scored.stdout)["nats_per_char"]
    assert np.isfinite(nats) and nats == pytest.approx(evaluate_text(save, EXTENDED_TEXT[:200])["nats_per_char"])

    exported = run_cli("charrnn-export", "--save_dir", save, "--out", tmp_path / "models")
    assert exported.returncode == 0, exported.stderr
    calls = [["generate", *generate(prime, 40, 1.0, 3)], ["score", *score(EXTENDED_TEXT[:200])]]
    plain = subprocess.run([sys.executable, "-c", PLAIN_TF, exported.stdout.strip()], input=json.dumps(calls),
                           capture_output=True, text=True, timeout=600)
    assert plain.returncode == 0, plain.stderr
    results = json.loads(plain.stdout.splitlines()[-1])
    assert results["generate"]["text"] == sampled.stdout[:-1]
    assert abs(results["score"]["nats_per_char"] - nats) < 1e-5


def test_extend_vocab_refusals_and_notes(lower_source, extended, tmp_path):
    # Nothing new: a note, and the run is the source's vocabulary as without the flag.
    run = _extend(lower_source, _target(tmp_path, LOWER_TEXT[:200]), tmp_path / "ft")
    assert run.vocab.chars == trainer.RunDir(lower_source).read_vocab().chars
    assert run.config.added_chars == ""
    assert any("--extend_vocab: nothing to add" in note for note in run.notes)
    # Without --init_from: one line, nothing written.
    data = _target(tmp_path, EXTENDED_TEXT, name="ext")
    with pytest.raises(ConfigError, match="--extend_vocab needs --init_from"):
        trainer.prepare(tiny_config(), data, str(tmp_path / "plain"), extend_vocab=True)
    refused = run_cli("charrnn-train", "--data_dir", data, "--save_dir", tmp_path / "plain", "--log_dir",
                      tmp_path / "logs", "--extend_vocab")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert [l for l in refused.stderr.splitlines() if l.startswith("charrnn-train: error: ")] == [
        "charrnn-train: error: --extend_vocab needs --init_from SAVE_DIR: it adds the text's new "
        "characters to that model's vocabulary"]
    assert not os.path.exists(tmp_path / "plain")
    # Resuming the extended run on a text with yet another character: refused, nothing changes.
    _, save, _, _ = extended
    before = snapshot(save)
    more = _target(tmp_path, EXTENDED_TEXT + "@", name="more")
    with pytest.raises(ConfigError, match=r"cannot resume .* its vocabulary lacks: '@'; .* --fresh --extend_vocab"):
        _extend(lower_source, more, save)
    assert snapshot(save) == before
