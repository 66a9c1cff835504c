"""--layer_norm: layer normalization inside the LSTM (Ba, Kiros & Hinton 2016), its variables,
the cell graph's LayerNormLSTMCell, lstm_layer's written-out backward pass, the sampler, and
training, resume, sampling, evaluation and export on tiny real models."""
import dataclasses
import json
import os

import numpy as np
import pytest

from charrnn import train as trainer
from charrnn.config import Config
from charrnn.errors import ConfigError
from charrnn.evaluate import evaluate_text
from charrnn.lstm import lstm_layer
from charrnn.model import LAYER_NORM_VARIABLES, EvalGraph, ModelWeights, TrainGraph
from charrnn.rundir import RunDir
from charrnn.tfcompat import load
from conftest import assert_identical, checkpoint_tensors, make_data_dir, run_cli, tiny_config
from test_export import assert_export_agrees
from test_sample import assert_sampler_follows_evaluation
from test_model import _training_graph_gradients

TEXT = "Now is the winter of our discontent made glorious summer by this sun of York. " * 8
VAL_FRAC = 0.2


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _layer_norm_numpy(v, gain, shift):
    return gain * (v - v.mean(-1, keepdims=True)) / np.sqrt(v.var(-1, keepdims=True) + 1e-5) + shift


def _layer_norm_lstm_numpy(values, ids, state):
    """A numpy reference of the paper's LSTM equations on charrnn's variables: logits (B, T, V)
    and the final (c, h) per layer. gates = LN(x W_x) + LN(h W_h) + b, c = f c + i j (carried
    unnormalized), h = o tanh(LN(c)); ``values`` in ModelWeights.trainable's order."""
    embedding, softmax_w, softmax_b, *lstm = (np.asarray(v, np.float64) for v in values)
    H = embedding.shape[1]
    x = embedding[ids]  # (B, T, H)
    final = []
    for layer in range(len(state)):
        kernel, bias, gx, bx, gh, bh, gc, bc = lstm[8 * layer:8 * layer + 8]
        c, h = (np.asarray(s, np.float64) for s in state[layer])
        outputs = []
        for t in range(ids.shape[1]):
            gates = (_layer_norm_numpy(x[:, t] @ kernel[:H], gx, bx) + _layer_norm_numpy(h @ kernel[H:], gh, bh)
                     + bias)
            i, j, f, o = np.split(gates, 4, axis=1)
            c = _sigmoid(f + 1.0) * c + _sigmoid(i) * np.tanh(j)
            h = _sigmoid(o) * np.tanh(_layer_norm_numpy(c, gc, bc))
            outputs.append(h)
        x = np.stack(outputs, 1)
        final.append((c, h))
    return x @ softmax_w + softmax_b, final


def _perturbed(session, weights, rng):
    """Move every layer-norm gain and shift away from 1 and 0 (their initial values make the
    affine part an identity, which would hide a gain or shift used in the wrong place)."""
    for layer in weights.cell_variables():
        for name, variable in zip(LAYER_NORM_VARIABLES, layer[2:]):
            base = 1.0 if name.endswith("gain") else 0.0
            variable.load(base + 0.3 * rng.randn(*variable.shape.as_list()), session)


def test_the_flag_is_off_by_default_for_lstms_only_and_fixed_on_resume():
    assert Config().layer_norm is False
    tiny_config(layer_norm=True).validate()
    tiny_config(layer_norm=True, rnn_impl="layerwise", zoneout_c=0.3, weight_drop=0.2).validate()
    with pytest.raises(ConfigError, match="^--layer_norm normalizes LSTMs only; drop it to train --model gru$"):
        tiny_config(layer_norm=True, model="gru").validate()
    # A saved config.json without the field (0.1.0's) ran without it; a resume may not change it.
    raw = dataclasses.asdict(tiny_config(vocab_size=5))
    del raw["layer_norm"]
    saved = Config.from_dict(raw, "config.json")
    assert saved.layer_norm is False
    assert saved.fixed_differences(dataclasses.replace(saved, layer_norm=True)) == [
        "layer_norm: saved False, now True"]


def test_gru_with_layer_norm_is_refused_in_one_line(tmp_path):
    data = make_data_dir(tmp_path, TEXT)
    result = run_cli("charrnn-train", "--data_dir", data, "--save_dir", tmp_path / "s", "--model", "gru",
                     "--layer_norm")
    assert result.returncode == 2 and not os.path.exists(tmp_path / "s")
    assert result.stderr.strip().splitlines() == [
        "charrnn-train: error: --layer_norm normalizes LSTMs only; drop it to train --model gru"]


@pytest.mark.parametrize("rnn_impl", ["cell", "layerwise"])
def test_each_layer_adds_six_variables_in_one_order_and_the_model_is_the_papers(rnn_impl):
    """With --layer_norm each LSTM layer has its kernel and bias, then LAYER_NORM_VARIABLES
    (gains 1, shifts 0), in the order the cell graph's LayerNormLSTMCell makes them (the
    trainable collection's, which the clipping sums in) and ModelWeights lists them; from_values
    reads that order back. The evaluation graph's logits and final state, from a non-zero state
    with gains and shifts moved away from 1 and 0, equal a numpy reference of the paper's
    equations, and differ from the plain LSTM's."""
    tf, tf1 = load()
    config = tiny_config(vocab_size=7, num_layers=2, layer_norm=True, rnn_impl=rnn_impl)
    B, T, H = config.batch_size, config.seq_length, config.hidden_size
    rng = np.random.RandomState(2)
    x, y = rng.randint(0, 7, (B, T)), rng.randint(0, 7, (B, T))
    initial = [(rng.randn(B, H), rng.randn(B, H) * 0.5) for _ in range(2)]
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(0)
        model = EvalGraph(config)  # the cell graph: LayerNormLSTMCell makes the LSTM variables
        weights = ModelWeights(config)
        assert [v.op.name for v in tf1.trainable_variables()] == [v.op.name for v in weights.trainable]
        names = [v.op.name for v in weights.trainable]
        view = ModelWeights.from_values(config, weights.trainable)
        init = tf1.group(tf1.global_variables_initializer(), tf1.local_variables_initializer())
    scope = "model/rnn/multi_rnn_cell/cell_{}/lstm_cell/"
    assert names == ["model/embedding", "model/softmax_w", "model/softmax_b"] + [
        scope.format(layer) + name for layer in range(2) for name in ("kernel", "bias") + LAYER_NORM_VARIABLES]
    assert [v.op.name for v in view.trainable] == names
    assert view.layer_norms(1)[2][0] is weights.layer_norms(1)[2][0]
    with tf1.Session(graph=graph) as session:
        session.run(init)
        initial_values = session.run(weights.trainable)
        for name, value in zip(names[3:], initial_values[3:]):
            if "layer_norm" in name:
                expected = (H if "/cell/" in name else 4 * H,)
                assert value.shape == expected and np.all(value == (1.0 if name.endswith("gain") else 0.0)), name
        _perturbed(session, weights, rng)
        for (cell, hidden), (saved_c, saved_h) in zip(model.state.variables, initial):
            cell.load(saved_c, session)
            hidden.load(saved_h, session)
        values = session.run(weights.trainable)
        logits, _ = session.run([model.logits, model.loss], {model.inputs: x, model.targets: y})  # carries
        final = session.run(model.state.variables)
    want_logits, want_final = _layer_norm_lstm_numpy(values, x, initial)
    np.testing.assert_allclose(logits, want_logits, rtol=1e-4, atol=1e-5)
    for got, want in zip(final, want_final):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    from test_model import _zoned_lstm_numpy

    plain_values = values[:3] + [v for layer in range(2) for v in values[3 + 8 * layer:5 + 8 * layer]]
    plain, _ = _zoned_lstm_numpy(plain_values, x, initial, [(0.0, 0.0)] * 2)
    assert np.abs(plain - want_logits).max() > 1e-2


@pytest.mark.parametrize("zoneout", ["none", "masks", "hidden mask", "rates"])
def test_lstm_layers_written_out_gradients_with_layer_norm_equal_tensorflows(zoneout):
    """lstm_layer with norms: the written-out backward pass (recurrent_t given) gives the
    gradient TensorFlow derives from the plain loop for every input (projected, the recurrent
    kernel, the initial state, the bias, each gain and shift), with zoneout off, with masks on c and h,
    with a mask on h alone (no candidates kept) and with rates; both paths compute the same
    outputs and final state."""
    tf, tf1 = load()
    T, B, H = 6, 3, 8
    rng = np.random.RandomState(5)
    projected = tf.constant(rng.randn(T, B, 4 * H), tf.float32)
    recurrent = tf.constant(rng.randn(H, 4 * H) * 0.4, tf.float32)
    cell0, hidden0 = (tf.constant(rng.randn(B, H) * s, tf.float32) for s in (1.0, 0.5))
    norms = [tf.constant(base + 0.3 * rng.randn(n), tf.float32)
             for base, n in ((1.0, 4 * H), (0.0, 4 * H), (1.0, H), (0.0, H))]
    bias = tf.constant(0.3 * rng.randn(4 * H), tf.float32)

    def mask(rate):
        return tf.constant((rng.rand(T, B, H) < rate).astype(np.float32))

    preserve = {"none": (None, None), "masks": (mask(0.5), mask(0.3)), "hidden mask": (None, mask(0.3)),
                "rates": (0.4, 0.2)}[zoneout]
    # A loss of every output: the outputs and the final state, each with its own weights.
    weights = [tf.constant(rng.randn(*shape), tf.float32) for shape in ((T, B, H), (B, H), (B, H))]
    inputs = [projected, recurrent, cell0, hidden0, bias] + norms
    results = {}
    for name, recurrent_t in (("written", tf.transpose(recurrent)), ("derived", None)):
        outputs = lstm_layer(projected, recurrent, recurrent_t, cell0, hidden0, bias, preserve=preserve, norms=norms)
        loss = sum(tf.reduce_sum(o * w) for o, w in zip(outputs, weights))
        results[name] = (outputs, tf.gradients(loss, inputs))
    with tf1.Session() as session:
        results = session.run(results)
    for got, want in zip(results["written"][0], results["derived"][0]):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    names = ["projected", "recurrent", "cell0", "hidden0", "bias", "recurrent gain", "recurrent shift", "cell gain",
             "cell shift"]
    for name, got, want in zip(names, *(results[k][1] for k in ("written", "derived"))):
        assert np.abs(want).max() > 1e-3, name
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=f"{zoneout}: {name}")


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """A --layer_norm run of 3 cell-graph steps (gains and shifts have moved) and a batch."""
    root = tmp_path_factory.mktemp("ln")
    data = make_data_dir(root, "a quick brown fox jumps over the lazy dog. " * 10)
    save = str(root / "save")
    run = trainer.prepare(tiny_config(hidden_size=16, num_layers=2, layer_norm=True), data, save)
    trainer.train(run, save, str(root / "logs"), max_steps=3)
    return run, save, run.train.batch(3)


@pytest.mark.parametrize("dropout, input_dropout", [(0.0, True), (0.3, True), (0.3, False)])
def test_layerwise_loss_and_gradients_equal_the_cell_graphs(short_run, dropout, input_dropout):
    """The layerwise graph (input norm outside the loop, the table's rows normalized without
    input dropout, recurrent and cell norms in lstm_layer's written-out backward pass) gives the
    cell graph's (LayerNormLSTMCell through dynamic_rnn, TensorFlow's own gradients) loss and
    every variable's gradient, from the checkpoint's carried state, with and without dropout."""
    tf, tf1 = load()
    run, save, (x, y) = short_run
    config = dataclasses.replace(run.config, dropout=dropout, input_dropout=input_dropout)
    path = tf.train.latest_checkpoint(save)
    saved = checkpoint_tensors(path)
    assert not np.allclose(saved["model/rnn/multi_rnn_cell/cell_1/lstm_cell/layer_norm/cell/gain"], 1.0)

    def loss_and_gradients(rnn_impl):
        c = dataclasses.replace(config, rnn_impl=rnn_impl, xla=False)
        graph = tf.Graph()
        with graph.as_default():
            model = TrainGraph(c)
            saver = tf1.train.Saver()
        with tf1.Session(graph=graph) as session:
            saver.restore(session, path)
            loss = session.run(model.loss, {model.inputs: x, model.targets: y})
        return loss, _training_graph_gradients(c, path, x, y)

    (cell_loss, reference), (loss, layerwise) = loss_and_gradients("cell"), loss_and_gradients("layerwise")
    assert loss == pytest.approx(cell_loss, rel=1e-5)
    assert reference.keys() == layerwise.keys() and len(reference) == 3 + 2 * 8
    for name, value in reference.items():
        assert np.abs(value).max() > 0, name
        np.testing.assert_allclose(layerwise[name], value, rtol=1e-4, atol=1e-6, err_msg=name)


def test_one_xla_compiled_layerwise_step_equals_the_cell_graphs(short_run):
    """cpu30's graph (layerwise, the whole step one XLA cluster) with --layer_norm restores the
    cell graph's checkpoint and makes the same step: loss, gradient norm and updated weights."""
    tf, tf1 = load()
    run, save, (x, y) = short_run

    def one_step(rnn_impl, xla):
        graph = tf.Graph()
        with graph.as_default():
            model = TrainGraph(dataclasses.replace(run.config, rnn_impl=rnn_impl, xla=xla))
            saver = tf1.train.Saver()
        with tf1.Session(graph=graph) as session:
            saver.restore(session, tf.train.latest_checkpoint(save))
            loss, norm, _ = session.run([model.loss, model.grad_norm, model.train_op],
                                        {model.inputs: x, model.targets: y})
            return loss, norm, {v.op.name: v.eval(session) for v in tf1.global_variables()}

    ref_loss, _, ref_weights = one_step("cell", False)
    # The norm against layerwise without XLA: the cell graph's IndexedSlices embedding gradient
    # has a norm of its own rows (see charrnn.model.dense_gradients), whatever the cell.
    _, ref_norm, _ = one_step("layerwise", False)
    loss, norm, weights = one_step("layerwise", True)
    assert loss == pytest.approx(ref_loss, rel=1e-5) and norm == pytest.approx(ref_norm, rel=1e-5)
    assert weights.keys() == ref_weights.keys()
    for name, value in weights.items():
        np.testing.assert_allclose(value, ref_weights[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_the_cell_graph_reads_the_layer_norm_weights_once():
    """LayerNormLSTMCell makes its variables in its build, as LSTMCell does, so dynamic_rnn's
    loops take them as values (a stateless While), not read inside every iteration."""
    tf, _ = load()
    graph = tf.Graph()
    with graph.as_default():
        TrainGraph(tiny_config(num_layers=2, layer_norm=True))
    loops = [op.type for op in graph.get_operations() if op.type in ("While", "StatelessWhile")]
    assert loops and "While" not in loops[:2], loops


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A --layer_norm run trained by the layerwise graph with dropout and zoneout."""
    root = tmp_path_factory.mktemp("trained")
    data = make_data_dir(root, TEXT)
    save = str(root / "save")
    config = tiny_config(num_layers=2, num_epochs=2, val_frac=VAL_FRAC, eval_every=6, dropout=0.2,
                         layer_norm=True, rnn_impl="layerwise", zoneout_h=0.1)
    run = trainer.prepare(config, data, save)
    result = trainer.train(run, save, str(root / "logs"))
    return root, data, save, run, result


def test_resume_is_bit_exact(trained, tmp_path):
    root, data, save, run, _ = trained
    saved = checkpoint_tensors(save)
    assert RunDir(save).read_config().layer_norm is True
    assert sum("layer_norm" in k and "Adam" not in k for k in saved) == 2 * 6
    other = str(tmp_path / "b")
    trainer.train(trainer.prepare(run.config, data, other), other, str(tmp_path / "l"), max_steps=7)
    # The resume takes --layer_norm from config.json (the flags' config here has it off).
    resumed = trainer.prepare(dataclasses.replace(run.config, layer_norm=False), data, other)
    assert resumed.config.layer_norm is True
    trainer.train(resumed, other, str(tmp_path / "l"))
    assert_identical(saved, checkpoint_tensors(other))
    with pytest.raises(ConfigError, match="layer_norm: saved True, now False"):
        trainer.prepare(dataclasses.replace(run.config, layer_norm=False), data, other, explicit=["layer_norm"])


def test_greedy_sampling_follows_the_evaluation_graph_and_any_chunking(trained):
    """The in-graph sampler's layer-norm math (the table's normalized rows, the products
    normalized apart above layer 0): each greedy character is the argmax of the evaluation
    graph's logits after the text before it; chunks change neither greedy nor seeded text."""
    _, _, save, _, _ = trained
    assert_sampler_follows_evaluation(save)


def test_the_samplers_step_is_the_papers_equations(trained):
    """generate_chunk's loop (without XLA) from a non-zero state: the final state after feeding
    characters greedily equals the numpy reference's after the same characters."""
    from charrnn.model import generate_chunk

    tf, tf1 = load()
    _, _, save, run, _ = trained
    config = run.config
    H, rng = config.hidden_size, np.random.RandomState(3)
    initial = [(rng.randn(1, H), rng.randn(1, H) * 0.5) for _ in range(2)]
    graph = tf.Graph()
    with graph.as_default():
        weights = ModelWeights(config)
        state = tuple(tf1.nn.rnn_cell.LSTMStateTuple(*(tf.constant(s, tf.float32) for s in pair))
                      for pair in initial)
        generated, final = generate_chunk(weights, tf.constant([3]), tf.constant(12), tf.constant(0, tf.int64),
                                          tf.constant(0, tf.int64), 1.0, 0, 1.0, True, state, filtered=False,
                                          xla=False)
        saver = tf1.train.Saver(weights.trainable)
    with tf1.Session(graph=graph) as session:
        saver.restore(session, tf.train.latest_checkpoint(save))
        values = session.run(weights.trainable)
        generated, final = session.run([generated, final])
    # zoneout_h's expectation: h = p h_prev + (1 - p) h~, as evaluation and sampling compute it
    fed = np.array([[3] + list(generated[:-1])])  # (1, 12): each step feeds the last character
    p = config.zoneout_h
    embedding, softmax_w, softmax_b, *lstm = (np.asarray(v, np.float64) for v in values)
    x = embedding[fed[0]]
    for layer in range(2):
        kernel, bias, gx, bx, gh, bh, gc, bc = lstm[8 * layer:8 * layer + 8]
        c, h = initial[layer]
        outputs = []
        for t in range(fed.shape[1]):
            gates = (_layer_norm_numpy(x[t:t + 1] @ kernel[:H], gx, bx)
                     + _layer_norm_numpy(h @ kernel[H:], gh, bh) + bias)
            i, j, f, o = np.split(gates, 4, axis=1)
            c = _sigmoid(f + 1.0) * c + _sigmoid(i) * np.tanh(j)
            h = p * h + (1 - p) * _sigmoid(o) * np.tanh(_layer_norm_numpy(c, gc, bc))
            outputs.append(h[0])
        x = np.stack(outputs)
        np.testing.assert_allclose(final[layer].c, c, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(final[layer].h, h, rtol=1e-4, atol=1e-5)
    assert list(generated) == list(np.argmax(x @ softmax_w + softmax_b, -1))  # greedy


def test_evaluation_agrees_with_validation_in_training(trained):
    _, _, save, run, result = trained
    val_text = TEXT[len(TEXT) - round(len(TEXT) * VAL_FRAC):]
    scored = evaluate_text(save, val_text, which="best", batch_size=run.config.batch_size,
                           seq_length=run.config.seq_length)
    assert scored["nats_per_char"] == pytest.approx(result.best[1], rel=1e-5)


def test_export_generates_the_samplers_text_and_scores_charrnn_evals(trained):
    root, _, save, _, _ = trained
    assert_export_agrees(save, str(root / "models"), TEXT[:200])


def test_fine_tuning_keeps_the_sources_layer_norm(trained, tmp_path):
    _, _, save, _, _ = trained
    data = make_data_dir(tmp_path, " ".join(reversed(TEXT.split())))
    run = trainer.prepare(tiny_config(num_layers=2, learning_rate=1e-9), data, str(tmp_path / "ft"),
                          explicit=["learning_rate"], init_from=save)
    assert run.config.layer_norm is True
    trainer.train(run, str(tmp_path / "ft"), str(tmp_path / "logs"), max_steps=1)
    source, tuned = checkpoint_tensors(RunDir(save).resolve("auto")), checkpoint_tensors(str(tmp_path / "ft"))
    norms = [k for k in source if "layer_norm" in k and "Adam" not in k]
    assert len(norms) == 12 and all(np.allclose(tuned[k], source[k], atol=1e-6) for k in norms)


def test_train_resume_sample_and_evaluate_as_a_user(tmp_path):
    """charrnn-train --layer_norm for 3 steps, then 3 more in a second invocation, ends where
    one invocation of 6 steps does (bit for bit); charrnn-sample and charrnn-eval read the flag
    from config.json."""
    data = make_data_dir(tmp_path, TEXT)
    common = ["--data_dir", data, "--layer_norm", "--hidden_size", 16, "--num_layers", 2, "--batch_size", 4,
              "--seq_length", 8, "--noxla", "--val_frac", 0.2, "--dropout", 0.1]
    one = run_cli("charrnn-train", *common, "--save_dir", tmp_path / "one", "--max_steps", 6)
    assert one.returncode == 0, one.stderr[-2000:]
    first = run_cli("charrnn-train", *common, "--save_dir", tmp_path / "two", "--max_steps", 3)
    assert first.returncode == 0, first.stderr[-2000:]
    # The resume passes no --layer_norm: config.json has it.
    again = run_cli("charrnn-train", *common[:2], *common[3:], "--save_dir", tmp_path / "two", "--max_steps", 3)
    assert again.returncode == 0 and "resumed from" in again.stderr, again.stderr[-2000:]
    assert_identical(checkpoint_tensors(str(tmp_path / "one")), checkpoint_tensors(str(tmp_path / "two")))
    sample = run_cli("charrnn-sample", "--save_dir", tmp_path / "two", "--prime", "Now", "--n", 30, "--seed", 1)
    assert sample.returncode == 0 and sample.stdout.startswith("Now") and len(sample.stdout) >= 30, sample.stderr
    (tmp_path / "val.txt").write_text(TEXT[:300])
    scored = run_cli("charrnn-eval", "--save_dir", tmp_path / "two", "--text", tmp_path / "val.txt", "--json")
    assert scored.returncode == 0, scored.stderr[-2000:]
    assert 0 < json.loads(scored.stdout)["nats_per_char"] < 5
