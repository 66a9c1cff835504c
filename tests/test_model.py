"""Graph tests on tiny models with real sessions."""
import math

import numpy as np
import pytest

from charrnn import train as trainer
from charrnn.data import EvalStream
from charrnn.evaluate import evaluate_stream
from charrnn.model import EvalGraph, TrainGraph
from charrnn.tfcompat import load
from conftest import tiny_config


def _session(config, graph_class, **kw):
    tf, tf1 = load()
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(config.seed)
        model = graph_class(config, **kw)
        init = tf1.group(tf1.global_variables_initializer(), tf1.local_variables_initializer())
    graph.finalize()
    session = tf1.Session(graph=graph)
    session.run(init)
    return session, model


def test_sequence_loss_matches_numpy_and_honours_weights():
    config = tiny_config(vocab_size=5, batch_size=2, seq_length=3)
    session, model = _session(config, EvalGraph)
    x = np.array([[0, 1, 2], [3, 4, 0]], np.int32)
    y = np.array([[1, 2, 3], [4, 0, 1]], np.int32)
    w = np.array([[1, 1, 0], [1, 0, 0]], np.float32)
    logits, loss, loss_sum, weight_sum = session.run(
        [model.logits, model.loss, model.loss_sum, model.weight_sum],
        {model.inputs: x, model.targets: y, model.target_weights: w})
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -np.take_along_axis(logp, y[..., None], -1)[..., 0]
    assert weight_sum == 3
    assert loss_sum == pytest.approx((ce * w).sum(), rel=1e-5)
    assert loss == pytest.approx((ce * w).sum() / 3, rel=1e-5)


def test_zero_softmax_gives_uniform_loss_ln_vocab():
    tf, tf1 = load()
    config = tiny_config(vocab_size=7, batch_size=3, seq_length=4)
    session, model = _session(config, EvalGraph, batch_size=3)
    with session.graph.as_default():
        weights = [v for v in tf1.global_variables() if "softmax" in v.name]
    for v in weights:
        v.load(np.zeros(v.shape.as_list(), np.float32), session)
    ids = np.random.RandomState(0).randint(0, 7, size=200)
    loss = evaluate_stream(session, model, EvalStream(ids, 3, 4))
    assert loss == pytest.approx(math.log(7), rel=1e-6)


def _train_steps(session, model, loader, steps, carry):
    losses = []
    session.run(model.reset_state_op)
    for step in range(steps):
        if not carry:
            session.run(model.reset_state_op)
        x, y = loader.batch(step % loader.num_batches)
        loss, _ = session.run([model.loss, model.train_op], {model.inputs: x, model.targets: y})
        losses.append(loss)
    return float(np.mean(losses[-50:]))


def test_carried_state_learns_what_a_stateless_model_cannot(write_data, tmp_path):
    """On "aab" repeated with seq_length 1, only the state can tell which 'a' comes next.

    Without it the best possible loss is ln(2) * 2/3 ~ 0.462 (after 'a': a or b, 50/50).
    """
    floor = math.log(2) * 2 / 3
    config = tiny_config(hidden_size=16, batch_size=8, seq_length=1, learning_rate=2e-2,
                         num_epochs=4)
    # The real training loop, which carries state from batch to batch.
    run = trainer.prepare(config, write_data("aab" * 400), str(tmp_path / "save"))
    result = trainer.train(run, str(tmp_path / "save"), str(tmp_path / "logs"))
    assert result.status == "complete"
    assert result.loss < 0.1 < floor
    # The same graph with the state reset before every batch stays at the floor.
    session, model = _session(run.config, TrainGraph)
    stateless = _train_steps(session, model, run.train, 600, carry=False)
    assert stateless > floor - 0.03


def test_tiny_model_memorises_a_short_text(write_data, tmp_path):
    config = tiny_config(hidden_size=32, batch_size=2, seq_length=16, learning_rate=1e-2,
                         num_epochs=120)
    run = trainer.prepare(config, write_data("the cat sat on the mat. " * 6), str(tmp_path / "s"))
    result = trainer.train(run, str(tmp_path / "s"), str(tmp_path / "logs"))
    assert result.loss < 0.05



@pytest.mark.parametrize("dropout, input_dropout", [(0.0, True), (0.3, True), (0.3, False)])
def test_fast_paths_match_the_default_graph_and_share_checkpoints(write_data, tmp_path, dropout, input_dropout):
    """layerwise and XLA graphs restore the default graph's checkpoint and give the same step
    (with --noinput_dropout, layerwise looks the first projection up in the input table)."""
    tf, tf1 = load()
    config = tiny_config(hidden_size=16, num_layers=2, dropout=dropout, input_dropout=input_dropout)
    save = str(tmp_path / "save")
    run = trainer.prepare(config, write_data("a quick brown fox jumps over the lazy dog. " * 10), save)
    trainer.train(run, save, str(tmp_path / "logs"), max_steps=3)  # default graph: cell, no XLA
    x, y = run.train.batch(3)

    def one_step(rnn_impl, xla):
        import dataclasses

        c = dataclasses.replace(run.config, rnn_impl=rnn_impl, xla=xla)
        graph = tf.Graph()
        with graph.as_default():
            model = TrainGraph(c)
            saver = tf1.train.Saver()
        with tf1.Session(graph=graph) as session:
            saver.restore(session, tf.train.latest_checkpoint(save))
            loss, norm, _ = session.run([model.loss, model.grad_norm, model.train_op],
                                        {model.inputs: x, model.targets: y})
            weights = {v.op.name: v.eval(session) for v in tf1.global_variables()}
        return loss, norm, weights

    ref_loss, ref_norm, ref_weights = one_step("cell", False)
    for impl, xla in [("layerwise", False), ("cell", True), ("layerwise", True)]:
        loss, norm, weights = one_step(impl, xla)
        assert loss == pytest.approx(ref_loss, rel=1e-5), (impl, xla)
        assert norm == pytest.approx(ref_norm, rel=1e-3), (impl, xla)
        assert weights.keys() == ref_weights.keys()
        for name, value in weights.items():
            np.testing.assert_allclose(value, ref_weights[name], rtol=1e-4, atol=1e-5,
                                       err_msg=f"{impl} xla={xla}: {name}")



def _reference_gradients(config, checkpoint_path, x, y):
    """Loss gradients of a plain TF1 graph written here from stock parts (MultiRNNCell of
    LSTMCells, dynamic_rnn, TensorFlow's own derived gradients), on the checkpoint's weights and
    carried state: the reference for charrnn's training graphs."""
    tf, tf1 = load()
    H, L, V = config.hidden_size, config.num_layers, config.vocab_size
    graph = tf.Graph()
    with graph.as_default(), tf1.variable_scope("model"):
        embedding = tf1.get_variable("embedding", [V, H])
        softmax_w = tf1.get_variable("softmax_w", [H, V])
        softmax_b = tf1.get_variable("softmax_b", [V])
        state = tuple(tf1.nn.rnn_cell.LSTMStateTuple(
            *(tf1.get_variable(f"train_state/layer_{l}/{part}", [config.batch_size, H], trainable=False)
              for part in ("c", "h"))) for l in range(L))
        cell = tf1.nn.rnn_cell.MultiRNNCell([tf1.nn.rnn_cell.LSTMCell(H) for _ in range(L)])
        outputs, _ = tf1.nn.dynamic_rnn(cell, tf.nn.embedding_lookup(embedding, x), initial_state=state)
        logits = tf.tensordot(outputs, softmax_w, 1) + softmax_b
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
        params = tf1.trainable_variables()
        grads = [tf.convert_to_tensor(g) for g in tf.gradients(loss, params)]
        saver = tf1.train.Saver(tf1.global_variables())
    with tf1.Session(graph=graph) as session:
        saver.restore(session, checkpoint_path)
        return dict(zip((p.op.name for p in params), session.run(grads)))


def _training_graph_gradients(config, checkpoint_path, x, y):
    """{variable name: gradient of TrainGraph's loss} for one batch, from the checkpoint's weights
    and carried state. Without XLA, TrainGraph's ``loss`` is a plain tensor to differentiate; the
    update is not run."""
    import dataclasses

    tf, tf1 = load()
    graph = tf.Graph()
    with graph.as_default():
        model = TrainGraph(dataclasses.replace(config, xla=False))
        params = tf1.trainable_variables()
        grads = [tf.convert_to_tensor(g) for g in tf.gradients(model.loss, params)]
        saver = tf1.train.Saver()
    with tf1.Session(graph=graph) as session:
        saver.restore(session, checkpoint_path)
        values = session.run(grads, {model.inputs: x, model.targets: y})
    return dict(zip((p.op.name for p in params), values))


@pytest.mark.parametrize("rnn_impl", ["cell", "layerwise"])
def test_training_graph_gradients_equal_tensorflows_derived_ones(write_data, tmp_path, rnn_impl):
    """Every variable's gradient in charrnn's training graphs equals the stock graph's, from a
    carried (non-zero) state, with 3 layers: for layerwise, whose backward pass is written out
    (lstm_layer, matmul_pretransposed), and for the default graph and its state variables."""
    import dataclasses

    tf, tf1 = load()
    config = tiny_config(hidden_size=16, num_layers=3)
    save = str(tmp_path / "save")
    run = trainer.prepare(config, write_data("a quick brown fox jumps over the lazy dog. " * 10), save)
    trainer.train(run, save, str(tmp_path / "logs"), max_steps=3)
    x, y = run.train.batch(3)
    path = tf.train.latest_checkpoint(save)
    reference = _reference_gradients(run.config, path, x, y)

    gradients = _training_graph_gradients(dataclasses.replace(run.config, rnn_impl=rnn_impl), path, x, y)
    assert gradients.keys() == reference.keys() and len(reference) == 3 + 2 * 3
    for name, value in reference.items():
        assert np.abs(value).max() > 0, name
        np.testing.assert_allclose(gradients[name], value, rtol=1e-4, atol=1e-6, err_msg=f"{rnn_impl}: {name}")


@pytest.mark.parametrize("dropout, input_dropout", [(0.0, True), (0.3, True), (0.3, False)])
def test_layerwise_gradients_equal_the_cell_graphs_with_and_without_dropout(write_data, tmp_path, dropout,
                                                                           input_dropout):
    """The layerwise graph's written-out backward pass gives every variable the gradient of the
    MultiRNNCell graph, from a carried (non-zero) state, with and without dropout masks (and
    with output masks only)."""
    tf, tf1 = load()
    config = tiny_config(hidden_size=16, num_layers=3, dropout=dropout, input_dropout=input_dropout)
    save = str(tmp_path / "save")
    run = trainer.prepare(config, write_data("a quick brown fox jumps over the lazy dog. " * 10), save)
    trainer.train(run, save, str(tmp_path / "logs"), max_steps=3)
    x, y = run.train.batch(3)

    def gradients(rnn_impl):
        import dataclasses

        return _training_graph_gradients(dataclasses.replace(run.config, rnn_impl=rnn_impl),
                                         tf.train.latest_checkpoint(save), x, y)

    reference, layerwise = gradients("cell"), gradients("layerwise")
    assert reference.keys() == layerwise.keys() and len(reference) == 3 + 2 * 3
    for name, value in reference.items():
        assert np.abs(value).max() > 0, name
        np.testing.assert_allclose(layerwise[name], value, rtol=1e-4, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("xla", [False, True])
def test_default_graph_reads_the_lstm_weights_once_not_in_every_loop_iteration(xla):
    """The LSTMCell's variables must enter dynamic_rnn's loops as values: read inside every
    iteration (stateful While loops), the XLA step ran 50% slower and took 200 MB more to compile."""
    tf, tf1 = load()
    graph = tf.Graph()
    with graph.as_default():
        TrainGraph(tiny_config(num_layers=2, xla=xla))
        EvalGraph(tiny_config(num_layers=2))  # built after: the variables exist by then
    loops = [op.type for op in graph.get_operations() if op.type in ("While", "StatelessWhile")]
    assert loops and "While" not in loops[:2], loops  # TrainGraph's forward and backward loops


def _drawn_masks(config):
    """The dropout masks a TrainGraph of ``config`` draws at step 0: {"input"?, "output"} arrays."""
    tf, tf1 = load()
    graph = tf.Graph()
    with graph.as_default():
        model = TrainGraph(config)
        masks = model._dropout_masks(config)
        init = tf1.global_variables_initializer()
    with tf1.Session(graph=graph) as session:
        session.run(init)
        return session.run(masks)


@pytest.mark.parametrize("variational", [False, True])
def test_variational_dropout_repeats_each_rows_mask_over_the_window(variational):
    masks = _drawn_masks(tiny_config(vocab_size=5, num_layers=2, seq_length=6, dropout=0.5,
                                     variational_dropout=variational))
    input_mask, output_masks = masks["input"], masks["output"]  # (B, T, H), (B, T, layers, H)
    assert input_mask.shape == (4, 6, 16) and output_masks.shape == (4, 6, 2, 16)
    assert set(np.unique(input_mask)) == {0.0, 2.0}  # dropped, or kept and scaled by 1/keep
    for mask in (input_mask, output_masks):
        same_over_time = all(np.array_equal(mask[:, t], mask[:, 0]) for t in range(6))
        assert same_over_time == variational
        assert not np.array_equal(mask[0], mask[1])  # rows draw their own masks


def test_without_input_dropout_the_output_masks_are_unchanged():
    """--noinput_dropout drops the input mask and nothing else: the layers' output masks are the
    ones a run with input dropout draws at the same step and seed."""
    drawn = {input_dropout: _drawn_masks(tiny_config(vocab_size=5, num_layers=2, seq_length=6, dropout=0.5,
                                                     input_dropout=input_dropout))
             for input_dropout in (True, False)}
    assert sorted(drawn[True]) == ["input", "output"] and list(drawn[False]) == ["output"]
    np.testing.assert_array_equal(drawn[False]["output"], drawn[True]["output"])


def test_weight_drop_draws_one_recurrent_mask_per_step_for_the_whole_batch():
    """--weight_drop: a (layers, H, 4H) mask of 0 and 1/keep on the recurrent kernels, drawn
    from (seed, step), the same for every row (a replica's rows included), new at the next step,
    and leaving the dropout masks of the same step and seed as they were."""
    tf, tf1 = load()
    config = tiny_config(vocab_size=5, num_layers=2, dropout=0.5, weight_drop=0.25)
    from charrnn.model import dropout_masks

    graph = tf.Graph()
    with graph.as_default():
        step = tf1.placeholder(tf.int64, [])
        masks, half = dropout_masks(config, step), dropout_masks(config, step, slice(0, 2))
        plain = dropout_masks(tiny_config(vocab_size=5, num_layers=2, dropout=0.5), step)
    with tf1.Session(graph=graph) as session:
        first, rows, without = session.run([masks, half, plain], {step: 0})
        second = session.run(masks, {step: 1})
    recurrent = first["recurrent"]
    assert recurrent.shape == (2, 16, 64) and set(np.unique(recurrent)) == {0.0, np.float32(1 / 0.75)}
    assert 0.15 < np.mean(recurrent == 0) < 0.35
    assert not np.array_equal(recurrent[0], recurrent[1])  # each layer its own
    np.testing.assert_array_equal(rows["recurrent"], recurrent)  # one mask for all rows
    assert not np.array_equal(second["recurrent"], recurrent)
    for name in ("input", "output"):
        np.testing.assert_array_equal(first[name], without[name])
    assert dropout_masks(tiny_config(), 0) == {}  # neither: nothing drawn


def test_weight_drop_gradients_equal_tensorflows_derived_ones_and_skip_the_dropped_weights():
    """With a DropConnect mask on W_h, the layerwise graph's written-out backward pass gives the
    gradient TensorFlow derives for the same masked math, from a carried (non-zero) state; the
    dropped entries of W_h get exactly 0; and the mask changes the loss."""
    from charrnn.model import ModelWeights, _transposed_kernels, dropout_masks, training_loss

    tf, tf1 = load()
    config = tiny_config(vocab_size=7, num_layers=2, rnn_impl="layerwise", dropout=0.2, weight_drop=0.4)
    B, T, H = config.batch_size, config.seq_length, config.hidden_size
    rng = np.random.RandomState(0)
    x, y = rng.randint(0, 7, (B, T)), rng.randint(0, 7, (B, T))
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(0)
        weights = ModelWeights(config)
        masks = dropout_masks(config, tf.constant(3, tf.int64))
        state = tuple(tf1.nn.rnn_cell.LSTMStateTuple(tf.constant(rng.randn(B, H), tf.float32),
                                                      tf.constant(rng.randn(B, H) * 0.5, tf.float32))
                      for _ in range(2))
        ones = tf.ones([B, T])
        losses, grads = {}, {}
        for name, step_masks, transposed in [
                ("written", masks, _transposed_kernels(weights, masks["recurrent"])),
                ("derived", masks, {}),
                ("unmasked", {k: v for k, v in masks.items() if k != "recurrent"}, {})]:
            losses[name], _ = training_loss(config, weights, x, y, ones, state, step_masks, transposed)
            grads[name] = [tf.convert_to_tensor(g) for g in tf.gradients(losses[name], weights.trainable)]
        init = tf1.global_variables_initializer()
    with tf1.Session(graph=graph) as session:
        session.run(init)
        losses, grads, recurrent_mask, kernels = session.run(
            [losses, grads, masks["recurrent"], weights.kernels])
    assert losses["written"] == pytest.approx(losses["derived"], rel=1e-6)
    assert abs(losses["written"] - losses["unmasked"]) > 1e-4
    for written, derived in zip(grads["written"], grads["derived"]):
        assert np.abs(derived).max() > 0
        np.testing.assert_allclose(written, derived, rtol=1e-4, atol=1e-6)
    for layer, kernel_grad in enumerate(grads["written"][3::2]):  # (2H, 4H): [input; recurrent] rows
        dropped = recurrent_mask[layer] == 0
        assert dropped.any() and np.all(kernel_grad[H:][dropped] == 0)
        assert np.all(kernel_grad[H:][~dropped] != 0)
        assert kernels[layer].shape == kernel_grad.shape


def test_layerwise_step_with_input_dropout_clips_and_applies_the_dense_gradient():
    """With input dropout the layerwise graph looks the embedding up, so TensorFlow derives its
    gradient as IndexedSlices, one row per character of the batch. The step clips the norm of the
    gradient itself (each character's rows summed) and Adam squares that sum, as each worker of a
    cluster sends it (dense): otherwise a cluster of W workers of batch B does not end where one
    process of batch W*B does (here, on a text that repeats its characters, the norm of the rows
    is 2% off, and with it every clipped weight's update)."""
    tf, tf1 = load()
    config = tiny_config(vocab_size=6, rnn_impl="layerwise", dropout=0.2, grad_clip=0.05, seed=3)
    x = np.array([[0, 1, 2, 0, 1, 2, 0, 1]] * 4, np.int32)  # (B, T): each character 8 times or more
    y = np.roll(x, -1, 1)
    graph = tf.Graph()
    with graph.as_default():
        model = TrainGraph(config)
        params = tf1.trainable_variables()
        derived = tf.gradients(model.loss, params)
        assert isinstance(derived[0], tf.IndexedSlices)  # the embedding's, what the step must densify
        dense = [tf.convert_to_tensor(g) for g in derived]
        second_moment = next(v for v in tf1.global_variables() if v.op.name.endswith("/embedding/Adam_1"))
        init = tf1.global_variables_initializer()
    with tf1.Session(graph=graph) as session:
        session.run(init)
        grads, norm, _ = session.run([dense, model.grad_norm, model.train_op], {model.inputs: x, model.targets: y})
        moment = session.run(second_moment)
    true_norm = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads))
    assert true_norm > config.grad_clip  # so the norm scales every weight's update
    assert norm == pytest.approx(true_norm, rel=1e-6)
    clipped = grads[0] * (config.grad_clip / true_norm)  # (V, H)
    np.testing.assert_allclose(moment, (1 - 0.999) * clipped ** 2, rtol=1e-4, atol=1e-16)


def test_weight_drop_needs_the_layerwise_graph():
    from charrnn.errors import ConfigError

    with pytest.raises(ConfigError, match="--weight_drop needs --rnn_impl layerwise"):
        tiny_config(weight_drop=0.3).validate()
    with pytest.raises(ConfigError, match=r"--weight_drop must be in \[0, 1\)"):
        tiny_config(weight_drop=1.0, rnn_impl="layerwise").validate()
    tiny_config(weight_drop=0.3, rnn_impl="layerwise").validate()


def _zoned_lstm_numpy(values, ids, state, preserve, input_mask=None, output_masks=None):
    """A numpy reference: the logits (B, T, V) and final (c, h) per layer of LSTMCell's math with
    zoneout, written from the paper's equations:
    c~ = f c + i j, h~ = o tanh(c~), c = p_c c_prev + (1 - p_c) c~, h = p_h h_prev + (1 - p_h) h~,
    the layer's output h. ``values``: (embedding, softmax_w, softmax_b, [kernel, bias] per layer);
    ``preserve[layer]`` = (p_c, p_h), each a rate or a (T, B, H) mask; dropout masks as the
    training graph takes them (input (B, T, H), output (B, T, layers, H))."""
    def sigmoid(z):
        return 1 / (1 + np.exp(-z))

    embedding, softmax_w, softmax_b, *lstm = (np.asarray(v, np.float64) for v in values)
    x = embedding[ids]  # (B, T, H)
    if input_mask is not None:
        x = x * input_mask
    final = []
    for layer, (kernel, bias) in enumerate(zip(lstm[0::2], lstm[1::2])):
        c, h = (np.asarray(s, np.float64) for s in state[layer])
        outputs = []
        for t in range(ids.shape[1]):
            i, j, f, o = np.split(np.concatenate([x[:, t], h], 1) @ kernel + bias, 4, axis=1)
            candidate = sigmoid(f + 1.0) * c + sigmoid(i) * np.tanh(j)
            new_hidden = sigmoid(o) * np.tanh(candidate)
            p_c, p_h = (p if np.ndim(p) == 0 else p[t] for p in preserve[layer])
            c, h = p_c * c + (1 - p_c) * candidate, p_h * h + (1 - p_h) * new_hidden
            outputs.append(h)
        x = np.stack(outputs, 1)  # (B, T, H)
        if output_masks is not None:
            x = x * output_masks[:, :, layer]
        final.append((c, h))
    return x @ softmax_w + softmax_b, final


def _mean_loss_numpy(logits, targets):
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return -np.take_along_axis(logp, targets[..., None], -1).mean()


def test_zoneout_draws_per_unit_row_and_step_masks_from_seed_and_step():
    """--zoneout_c/--zoneout_h: (layers, T, B, H) masks of 1 (keep the previous value, with the
    rate's probability) and 0, new at every time step, row and step; a replica's rows are its
    rows of the whole batch's; every other mask of the same step and seed is unchanged."""
    tf, tf1 = load()
    regularized = dict(vocab_size=5, num_layers=2, seq_length=6, dropout=0.5, weight_drop=0.25,
                       rnn_impl="layerwise")
    config = tiny_config(zoneout_c=0.5, zoneout_h=0.1, **regularized)
    from charrnn.model import dropout_masks

    graph = tf.Graph()
    with graph.as_default():
        step = tf1.placeholder(tf.int64, [])
        masks, half = dropout_masks(config, step), dropout_masks(config, step, slice(2, 4))
        plain = dropout_masks(tiny_config(**regularized), step)
        cell_only = dropout_masks(tiny_config(zoneout_c=0.5, **regularized), step)
    with tf1.Session(graph=graph) as session:
        first, rows, without, only = session.run([masks, half, plain, cell_only], {step: 0})
        second = session.run(masks, {step: 1})
    assert sorted(first) == ["input", "output", "recurrent", "zoneout_c", "zoneout_h"]
    for name, rate in (("zoneout_c", 0.5), ("zoneout_h", 0.1)):
        mask = first[name]
        assert mask.shape == (2, 6, 4, 16) and set(np.unique(mask)) == {0.0, 1.0}
        assert rate - 0.06 < mask.mean() < rate + 0.06
        assert not np.array_equal(mask[:, 0], mask[:, 1])  # each time step its own
        assert not np.array_equal(mask[:, :, 0], mask[:, :, 1])  # each row its own
        assert not np.array_equal(mask[0], mask[1])  # each layer its own
        np.testing.assert_array_equal(rows[name], mask[:, :, 2:4])
        assert not np.array_equal(second[name], mask)
    assert not np.array_equal(first["zoneout_c"], first["zoneout_h"] > 0)
    for name in ("input", "output", "recurrent"):
        np.testing.assert_array_equal(first[name], without[name])
    assert sorted(only) == ["input", "output", "recurrent", "zoneout_c"]
    np.testing.assert_array_equal(only["zoneout_c"], first["zoneout_c"])


def test_zoneout_gradients_equal_tensorflows_derived_ones():
    """With zoneout masks on c and h (and dropout), the layerwise graph's written-out backward
    pass gives the gradient TensorFlow derives for the same zoned math, from a carried (non-zero)
    state; the loss is the numpy reference's of the paper's equations with those masks; and the
    masks change the loss. Also with h alone zoned (the backward pass then keeps no candidates)."""
    from charrnn.model import ModelWeights, _transposed_kernels, dropout_masks, training_loss

    tf, tf1 = load()
    for rates in ({"zoneout_c": 0.5, "zoneout_h": 0.3}, {"zoneout_h": 0.3}):
        config = tiny_config(vocab_size=7, num_layers=2, rnn_impl="layerwise", dropout=0.2, **rates)
        B, T, H = config.batch_size, config.seq_length, config.hidden_size
        rng = np.random.RandomState(0)
        x, y = rng.randint(0, 7, (B, T)), rng.randint(0, 7, (B, T))
        initial = [(rng.randn(B, H), rng.randn(B, H) * 0.5) for _ in range(2)]
        graph = tf.Graph()
        with graph.as_default():
            tf1.set_random_seed(0)
            weights = ModelWeights(config)
            masks = dropout_masks(config, tf.constant(3, tf.int64))
            state = tuple(tf1.nn.rnn_cell.LSTMStateTuple(*(tf.constant(s, tf.float32) for s in pair))
                          for pair in initial)
            ones = tf.ones([B, T])
            losses, grads = {}, {}
            for name, step_masks, transposed in [
                    ("written", masks, _transposed_kernels(weights)),
                    ("derived", masks, {}),
                    ("unzoned", {k: v for k, v in masks.items() if not k.startswith("zoneout")}, {})]:
                losses[name], _ = training_loss(config, weights, x, y, ones, state, step_masks, transposed)
                grads[name] = [tf.convert_to_tensor(g) for g in tf.gradients(losses[name], weights.trainable)]
            init = tf1.global_variables_initializer()
        with tf1.Session(graph=graph) as session:
            session.run(init)
            losses, grads, drawn, values = session.run([losses, grads, masks, weights.trainable])
        assert losses["written"] == pytest.approx(losses["derived"], rel=1e-6)
        assert abs(losses["written"] - losses["unzoned"]) > 1e-3
        preserve = [tuple(drawn[name][layer] if name in drawn else 0.0 for name in ("zoneout_c", "zoneout_h"))
                    for layer in range(2)]
        logits, _ = _zoned_lstm_numpy(values, x, initial, preserve, drawn["input"], drawn["output"])
        assert losses["written"] == pytest.approx(_mean_loss_numpy(logits, y), rel=1e-5)
        for written, derived in zip(grads["written"], grads["derived"]):
            assert np.abs(derived).max() > 0
            np.testing.assert_allclose(written, derived, rtol=1e-4, atol=1e-6, err_msg=str(rates))


def test_zoneout_evaluation_uses_the_expectation_in_both_graphs():
    """Evaluation with zoneout rates computes p * previous + (1 - p) * update for c and h: the
    layerwise evaluation graph's logits, loss and carried state equal the numpy reference of the
    expectation from a non-zero state, and the cell graph (the sampler's prime reader) agrees."""
    import dataclasses

    tf, tf1 = load()
    config = tiny_config(vocab_size=7, num_layers=2, rnn_impl="layerwise", zoneout_c=0.5, zoneout_h=0.2)
    B, T, H = config.batch_size, config.seq_length, config.hidden_size
    rng = np.random.RandomState(1)
    x, y = rng.randint(0, 7, (B, T)), rng.randint(0, 7, (B, T))
    initial = [(rng.randn(B, H), rng.randn(B, H) * 0.5) for _ in range(2)]
    results = {}
    for rnn_impl in ("layerwise", "cell"):
        c = dataclasses.replace(config, rnn_impl=rnn_impl)  # "cell" is refused for training only
        session, model = _session(c, EvalGraph)
        # embedding, softmax_w, softmax_b, then each layer's kernel and bias, in the order made
        values = session.run(session.graph.get_collection("trainable_variables"))
        for (cell, hidden), (saved_c, saved_h) in zip(model.state.variables, initial):
            cell.load(saved_c, session)
            hidden.load(saved_h, session)
        results[rnn_impl] = session.run([model.logits, model.loss], {model.inputs: x, model.targets: y})
        results[rnn_impl].append(session.run(model.state.variables))
        session.close()
    logits, final = _zoned_lstm_numpy(values, x, initial, [(0.5, 0.2)] * 2)
    plain, _ = _zoned_lstm_numpy(values, x, initial, [(0.0, 0.0)] * 2)
    assert np.abs(logits - plain).max() > 1e-3  # the expectation is not the plain LSTM
    for rnn_impl, (got_logits, loss, state) in results.items():
        np.testing.assert_allclose(got_logits, logits, rtol=1e-4, atol=1e-5, err_msg=rnn_impl)
        assert loss == pytest.approx(_mean_loss_numpy(logits, y), rel=1e-5)
        for got, want in zip(state, final):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=rnn_impl)


def test_zoneout_trains_samples_greedily_along_the_evaluation_graph(write_data, tmp_path):
    """A run with zoneout trains (layerwise), and its greedy sample is, character by character,
    the argmax of the evaluation graph's logits (the expectation) after the text before it."""
    from charrnn.rundir import RunDir
    from charrnn.sample import Sampler

    config = tiny_config(num_layers=2, rnn_impl="layerwise", zoneout_c=0.5, zoneout_h=0.1, num_epochs=3)
    save = str(tmp_path / "save")
    run = trainer.prepare(config, write_data("Now is the winter of our discontent. " * 10), save)
    assert trainer.train(run, save, str(tmp_path / "logs")).status == "complete"
    sampler = Sampler(save)
    prime = "Now is "
    text = "".join(sampler.generate(prime, 40, greedy=True))
    assert "".join(sampler.generate(prime, 40, greedy=True, chunk_size=7)) == text
    sampler.close()
    model = RunDir(save).open_model("auto")
    assert model.config.zoneout_c == 0.5 and model.config.zoneout_h == 0.1
    ids = list(model.vocab.encode(text))
    session, graph = model.restore(lambda c: EvalGraph(c, batch_size=1, seq_length=len(ids) - 1))
    logits = session.run(graph.logits, {graph.inputs: [ids[:-1]], graph.targets: [ids[1:]]})[0]
    session.close()
    assert list(np.argmax(logits, -1)[len(prime) - 1:]) == ids[len(prime):]


def test_zoneout_needs_the_layerwise_graph():
    from charrnn.errors import ConfigError

    with pytest.raises(ConfigError, match="--zoneout_c needs --rnn_impl layerwise"):
        tiny_config(zoneout_c=0.5).validate()
    with pytest.raises(ConfigError, match="--zoneout_c and --zoneout_h need --rnn_impl layerwise"):
        tiny_config(zoneout_c=0.5, zoneout_h=0.05).validate()
    with pytest.raises(ConfigError, match=r"--zoneout_h must be in \[0, 1\)"):
        tiny_config(zoneout_h=1.0, rnn_impl="layerwise").validate()
    tiny_config(zoneout_c=0.5, zoneout_h=0.05, rnn_impl="layerwise").validate()


@pytest.mark.parametrize("model", ["gru", "rnn"])
def test_zoneout_and_weight_drop_are_refused_for_other_cells_in_one_line(model):
    """Not "add --rnn_impl layerwise", which would then refuse the cell: the flags are the problem."""
    from charrnn.errors import ConfigError

    with pytest.raises(ConfigError) as raised:
        tiny_config(model=model, zoneout_c=0.5).validate()
    assert str(raised.value) == (f"--zoneout_c regularizes LSTMs only (written into the layerwise LSTM); "
                                 f"drop it to train --model {model}")
    with pytest.raises(ConfigError) as raised:
        tiny_config(model=model, weight_drop=0.3, zoneout_h=0.1, rnn_impl="layerwise").validate()
    assert str(raised.value) == (f"--weight_drop and --zoneout_h regularize LSTMs only (written into the "
                                 f"layerwise LSTM); drop them to train --model {model}; --rnn_impl layerwise "
                                 f"computes LSTMs only; train --model {model} with --rnn_impl cell")


@pytest.mark.parametrize("graph", [{}, {"rnn_impl": "layerwise", "xla": True}])
def test_weight_decay_shrinks_the_matrices_apart_from_adams_step(write_data, tmp_path, graph):
    """One step with --weight_decay d ends where plain Adam's step ends, minus lr x d x the
    weights before it, for every matrix; biases get Adam's step alone."""
    tf, _ = load()
    run = trainer.prepare(tiny_config(**graph), write_data("abcdefgh abcdefgh " * 10), str(tmp_path / "s"))
    x, y = run.train.batch(0)
    after = {}
    for decay in (0.0, 0.5):
        config = tiny_config(vocab_size=run.config.vocab_size, weight_decay=decay, **graph)
        session, model = _session(config, TrainGraph)
        variables = {v.name: v for v in session.graph.get_collection("trainable_variables")}
        before = session.run(variables)
        session.run(model.train_op, {model.inputs: x, model.targets: y})
        after[decay] = session.run(variables)
        session.close()
    lr = tiny_config().learning_rate
    assert len(before) == 5
    for name, value in before.items():
        shrink = lr * 0.5 * value if value.ndim == 2 else 0.0
        np.testing.assert_allclose(after[0.5][name], after[0.0][name] - shrink, rtol=1e-5, atol=1e-7,
                                   err_msg=name)


@pytest.mark.parametrize("graph", [{}, {"rnn_impl": "layerwise"}, {"layer_norm": True}])
def test_forget_bias_init_starts_each_layers_forget_gate_block_and_nothing_else(graph):
    """--forget_bias_init b: each LSTM layer's bias starts at b in the forget gate's block (i, j, f,
    o order) and 0 elsewhere, in every graph; the math still adds LSTMCell's 1 on top, so with b = 0
    the gate starts as 0.1.0's did, and the kernels start as they do without the flag."""
    _, tf1 = load()

    def start(config):  # each layer's (bias, kernel) at step 0, in layer order
        session, _ = _session(config, TrainGraph)
        with session.graph.as_default():
            named = {v.name: v for v in tf1.trainable_variables()}
        cells = sorted(name[:-len("/kernel:0")] for name in named if name.endswith("lstm_cell/kernel:0"))
        values = session.run([(named[f"{cell}/bias:0"], named[f"{cell}/kernel:0"]) for cell in cells])
        session.close()
        return values

    H = 16
    layers = start(tiny_config(num_layers=2, forget_bias_init=1.5, **graph))
    plain = start(tiny_config(num_layers=2, **graph))
    assert len(layers) == len(plain) == 2
    for (bias, kernel), (plain_bias, plain_kernel) in zip(layers, plain):
        np.testing.assert_array_equal(bias, np.r_[np.zeros(2 * H), np.full(H, 1.5), np.zeros(H)])
        np.testing.assert_array_equal(plain_bias, np.zeros(4 * H))
        np.testing.assert_array_equal(kernel, plain_kernel)


def test_forget_bias_init_is_refused_for_other_cells_and_absent_means_zero():
    from charrnn.config import Config
    from charrnn.errors import ConfigError

    with pytest.raises(ConfigError) as raised:
        tiny_config(model="gru", forget_bias_init=1.0).validate()
    assert str(raised.value) == "--forget_bias_init starts LSTMs' forget gates only; drop it to train --model gru"
    with pytest.raises(ConfigError, match=r"--forget_bias_init must be in \[0, 10\] \(got -1.0\)"):
        tiny_config(forget_bias_init=-1.0).validate()
    tiny_config(model="gru").validate()
    saved = {k: v for k, v in vars(tiny_config(vocab_size=5, data_sha256="x")).items() if k != "forget_bias_init"}
    assert Config.from_dict(saved, "config.json").forget_bias_init == 0.0
