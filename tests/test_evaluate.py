"""Scoring text under a trained model: exact numbers, unknown characters, the installed command."""
import json
import math
import os
import shutil

import numpy as np
import pytest

from charrnn import train as trainer
from charrnn.errors import ConfigError, DataError
from charrnn.evaluate import evaluate_text
from charrnn.rundir import RunDir
from charrnn.tfcompat import load
from conftest import make_data_dir, run_cli, tiny_config

TEXT = "Friends, Romans, countrymen, lend me your ears; I come to bury Caesar, not to praise him. " * 6
VAL_FRAC = 0.2


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    data = make_data_dir(root, TEXT)
    save = str(root / "save")
    config = tiny_config(val_frac=VAL_FRAC, eval_every=5)
    run = trainer.prepare(config, data, save)
    trainer.train(run, save, str(root / "logs"), max_steps=10)
    return root, save, run.config


def _zero_softmax(save_dir, prefix):
    """Rewrite checkpoint ``prefix`` with the softmax weights and bias set to zero."""
    tf, tf1 = load()
    reader = tf.train.load_checkpoint(prefix)
    values = {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}
    zeroed = [name for name in values if name.startswith("model/softmax_")]
    assert sorted(zeroed) == ["model/softmax_b", "model/softmax_w"]
    graph = tf.Graph()
    with graph.as_default():
        variables = {name: tf1.Variable(np.zeros_like(v) if name in zeroed else v,
                                        name=name.replace("/", "_"))
                     for name, v in values.items()}
        saver = tf1.train.Saver(variables)
        init = tf1.global_variables_initializer()
    with tf1.Session(graph=graph) as session:
        session.run(init)
        saver.save(session, prefix, write_meta_graph=False, write_state=False)


def test_zero_softmax_scores_exactly_ln_vocab(trained, tmp_path):
    _, save, config = trained
    copy = str(tmp_path / "save")
    shutil.copytree(save, copy)
    prefix = RunDir(copy).resolve("latest")
    assert prefix == os.path.join(copy, "model.ckpt-10")
    _zero_softmax(copy, prefix)

    result = evaluate_text(copy, TEXT, which="latest")
    vocab_size = config.vocab_size
    assert result["nats_per_char"] == pytest.approx(math.log(vocab_size), rel=1e-6)
    assert result["bits_per_char"] == pytest.approx(math.log2(vocab_size), rel=1e-6)
    assert result["perplexity"] == pytest.approx(vocab_size, rel=1e-5)
    assert result["characters"] == len(TEXT) - 1 and result["skipped"] == 0
    assert result["checkpoint"] == prefix


def test_agrees_with_validation_in_training(trained):
    """The held-out text, laid out as training lays it out, scores what best.json recorded."""
    _, save, config = trained
    with open(os.path.join(save, "best", "best.json")) as f:
        best = json.load(f)
    val_text = TEXT[len(TEXT) - round(len(TEXT) * VAL_FRAC):]
    result = evaluate_text(save, val_text, which="best", batch_size=config.batch_size,
                           seq_length=config.seq_length)
    assert result["nats_per_char"] == pytest.approx(best["val_loss"], rel=1e-5)
    assert result["checkpoint"].endswith(f"model.ckpt-{best['step']}")


def test_window_length_changes_speed_not_the_result(trained):
    _, save, _ = trained
    a = evaluate_text(save, TEXT, batch_size=3, seq_length=7)
    b = evaluate_text(save, TEXT, batch_size=3, seq_length=200)
    assert a["nats_per_char"] == pytest.approx(b["nats_per_char"], rel=1e-5)


def test_unknown_characters_refused_with_a_list_or_skipped_and_counted(trained):
    _, save, _ = trained
    clean = evaluate_text(save, TEXT[:300])
    with pytest.raises(DataError, match=r"2 distinct character\(s\) the model never saw: '#' 'Z';"
                                        r" .*--skip_unknown"):
        evaluate_text(save, "Z" + TEXT[:150] + "##" + TEXT[150:300])
    result = evaluate_text(save, "Z" + TEXT[:150] + "##" + TEXT[150:300], skip_unknown=True)
    assert result["skipped"] == 3
    assert result["characters"] == 299
    assert result["nats_per_char"] == pytest.approx(clean["nats_per_char"], rel=1e-6)


@pytest.mark.parametrize("text, kwargs, message", [
    ("Z#", {"skip_unknown": True}, r"has 0 character\(s\) after removing 2 unknown"),
    ("F", {}, r"has 1 character\(s\); scoring needs at least 2"),
])
def test_too_short_is_a_clear_error(trained, text, kwargs, message):
    _, save, _ = trained
    with pytest.raises(DataError, match=message):
        evaluate_text(save, text, **kwargs)


def test_bad_sizes_are_refused(trained):
    _, save, _ = trained
    with pytest.raises(ConfigError, match=r"--seq_length must be a positive integer \(got 0\)"):
        evaluate_text(save, TEXT, seq_length=0)


def test_charrnn_eval_as_a_user(trained):
    root, save, _ = trained
    text_file = root / "score.txt"
    text_file.write_text(TEXT[:400])
    out = run_cli("charrnn-eval", "--save_dir", save, "--text", text_file)
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip()
    assert line.startswith("bits/char ") and "nats/char " in line and "perplexity " in line
    assert "(399 characters, 0 skipped, checkpoint " in line and "Traceback" not in out.stderr

    (root / "unknown.txt").write_text("Zounds! " + TEXT[:200])
    out = run_cli("charrnn-eval", "--save_dir", save, "--text", root / "unknown.txt", "--json",
                  "--skip_unknown", "--checkpoint", "latest", "--batch_size", 2)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["skipped"] == 2 and result["characters"] == 205  # 'Z' and '!' dropped
    assert result["checkpoint"].endswith("model.ckpt-10")
    assert result["bits_per_char"] == pytest.approx(result["nats_per_char"] / math.log(2))


def _one_error_line(result, *fragments):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("charrnn-eval: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], result.stderr


def test_charrnn_eval_errors(trained):
    root, save, _ = trained
    (root / "unknown.txt").write_text("Zounds! " + TEXT[:200])
    _one_error_line(run_cli("charrnn-eval", "--save_dir", save, "--text", root / "unknown.txt"),
                    "unknown.txt", "never saw: '!' 'Z'", "--skip_unknown")
    (root / "latin1.txt").write_bytes("caf\u00e9".encode("latin-1"))
    _one_error_line(run_cli("charrnn-eval", "--save_dir", save, "--text", root / "latin1.txt"),
                    "latin1.txt", "byte offset 3")
    _one_error_line(run_cli("charrnn-eval", "--save_dir", save, "--batch_size", 0),
                    "--text is required", "--batch_size must be a positive integer (got 0)")
