"""--model gru and --model rnn: the cell math, the carried state, resume, sampling, evaluation,
export and fine-tuning, each on tiny real models (the LSTM has its own tests in every module)."""
import os

import numpy as np
import pytest

from charrnn import train as trainer
from charrnn.errors import ConfigError
from charrnn.evaluate import evaluate_text
from charrnn.model import ModelWeights
from charrnn.rundir import RunDir
from charrnn.tfcompat import load
from conftest import assert_identical, checkpoint_tensors, make_data_dir, run_cli, tiny_config
from test_export import assert_export_agrees
from test_sample import assert_sampler_follows_evaluation

TEXT = "Now is the winter of our discontent made glorious summer by this sun of York. " * 8
VAL_FRAC = 0.2
MODELS = ["gru", "rnn"]


def _config(model, **overrides):
    values = dict(model=model, num_layers=2, num_epochs=2, val_frac=VAL_FRAC, eval_every=6, dropout=0.2)
    values.update(overrides)
    return tiny_config(**values)


@pytest.fixture(scope="module", params=MODELS)
def trained(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    data = make_data_dir(root, TEXT)
    save = str(root / "save")
    run = trainer.prepare(_config(request.param), data, save)
    result = trainer.train(run, save, str(root / "logs"))
    return request.param, root, data, save, run, result


@pytest.mark.parametrize("model", MODELS)
def test_the_update_in_lstm_py_is_the_cells_own_math(model):
    """gru_update / rnn_update on the cell's variables (as the sampler uses them) give what
    GRUCell / BasicRNNCell give through dynamic_rnn, layer by layer, over a sequence."""
    tf, tf1 = load()
    config = tiny_config(model=model, num_layers=2, vocab_size=7)
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(3)
        weights = ModelWeights(config)
        ids = tf.constant(np.random.RandomState(0).randint(0, 7, (3, 5)), tf.int32)  # (B, T)
        zero = weights.cell_stack().zero_state(3, tf.float32)
        inputs = tf.nn.embedding_lookup(weights.embedding, ids)  # (B, T, H)
        with tf1.variable_scope("model", reuse=tf1.AUTO_REUSE):
            cell_outputs, cell_state = tf1.nn.dynamic_rnn(weights.cell_stack(), inputs, initial_state=zero)
        state, outputs = list(zero), []
        for t in range(5):
            x = inputs[:, t]
            for layer in range(2):
                update, parts = weights.recurrent_update(layer)
                x = state[layer] = update(tf.matmul(x, weights.input_kernel(layer)), state[layer], *parts)
            outputs.append(x)
        mine = tf.stack(outputs, 1)
        init = tf1.global_variables_initializer()
        assert len(weights.trainable) == 3 + 2 * (4 if model == "gru" else 2)
    with tf1.Session(graph=graph) as session:
        session.run(init)
        (a, b), (sa, sb) = session.run([(cell_outputs, mine), (cell_state, tuple(state))])
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for x, y in zip(sa, sb):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_one_state_tensor_per_layer_carried_and_resumed_bit_exactly(trained, tmp_path):
    model, root, data, save, run, _ = trained
    saved = checkpoint_tensors(save)
    state = sorted(k for k in saved if "train_state" in k)
    assert state == ["model/train_state/layer_0/h", "model/train_state/layer_1/h"]
    assert all(saved[k].shape == (4, 16) and np.any(saved[k]) for k in state)  # carried, not reset
    assert RunDir(save).read_config().model == model
    # Stopped after 7 steps and resumed: the same weights, state and Adam slots as without a stop.
    other = str(tmp_path / "b")
    trainer.train(trainer.prepare(run.config, data, other), other, str(tmp_path / "l"), max_steps=7)
    trainer.train(trainer.prepare(run.config, data, other), other, str(tmp_path / "l"))
    assert_identical(saved, checkpoint_tensors(other))


def test_greedy_sampling_follows_the_evaluation_graph_and_any_chunking(trained):
    """The in-graph sampler's written-out cell math: each greedy character is the argmax of the
    evaluation graph's (dynamic_rnn's) logits after the text before it; chunks change nothing."""
    _, _, _, save, _, _ = trained
    assert_sampler_follows_evaluation(save)


def test_evaluation_agrees_with_validation_in_training(trained):
    _, _, _, save, run, result = trained
    val_text = TEXT[len(TEXT) - round(len(TEXT) * VAL_FRAC):]
    scored = evaluate_text(save, val_text, which="best", batch_size=run.config.batch_size,
                           seq_length=run.config.seq_length)
    assert scored["nats_per_char"] == pytest.approx(result.best[1], rel=1e-5)


def test_export_generates_the_samplers_text_and_scores_charrnn_evals(trained):
    _, root, _, save, _, _ = trained
    assert_export_agrees(save, str(root / "models"), TEXT[:200])


def test_fine_tuning_keeps_the_sources_cell(trained, tmp_path):
    model, _, _, save, _, _ = trained
    data = make_data_dir(tmp_path, " ".join(reversed(TEXT.split())))  # the source's characters
    config = tiny_config(num_layers=2, learning_rate=1e-9)  # --model not given: the source's is taken
    run = trainer.prepare(config, data, str(tmp_path / "ft"), explicit=["learning_rate"], init_from=save)
    assert run.config.model == model
    trainer.train(run, str(tmp_path / "ft"), str(tmp_path / "logs"), max_steps=1)
    source, tuned = checkpoint_tensors(RunDir(save).resolve("auto")), checkpoint_tensors(str(tmp_path / "ft"))
    kernels = [k for k in source if k.endswith("kernel")]
    assert kernels and all(np.allclose(tuned[k], source[k], atol=1e-6) for k in kernels)
    with pytest.raises(ConfigError, match=f"--model lstm \\(the source model's is {model}\\)"):
        trainer.prepare(tiny_config(num_layers=2), data, str(tmp_path / "ft2"), explicit=["model"],
                        init_from=save)
    assert not os.path.exists(tmp_path / "ft2")


def test_a_different_cell_cannot_resume_and_layerwise_is_refused_in_one_line(trained, tmp_path):
    model, _, data, save, run, _ = trained
    other = "rnn" if model == "gru" else "gru"
    with pytest.raises(ConfigError, match=f"model: saved '{model}', now '{other}'"):
        trainer.prepare(_config(other), data, save, explicit=["model"])
    result = run_cli("charrnn-train", "--data_dir", data, "--save_dir", tmp_path / "s", "--model", model,
                     "--rnn_impl", "layerwise")
    assert result.returncode == 2 and not os.path.exists(tmp_path / "s")
    assert result.stderr.strip().splitlines() == [
        f"charrnn-train: error: --rnn_impl layerwise computes LSTMs only; train --model {model} with "
        "--rnn_impl cell"]
