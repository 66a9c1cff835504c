"""The model's graphs: embedding -> stacked LSTM -> dense -> softmax, one class per job.
(``--model gru`` and ``rnn`` stack GRUCells or BasicRNNCells instead, in the same graphs.)

``ModelWeights`` creates every weight, under the variable scope "model" with the names LSTMCell
gives them, and ``CarriedState`` the state carried from batch to batch. Each job is its own class
that builds its ops in the default graph over those and exposes named handles (the PTB pattern):

  TrainGraph   dropout, the loss and the clipped Adam update (optionally one XLA cluster); its
               carried state, step and learning rate are saved with the checkpoint
  EvalGraph    no dropout, no update; summed loss and weight for exact means over a stream
  SampleGraph  an in-graph loop that reads a prime and generates characters in one session.run

Variables are shared by name (AUTO_REUSE), so a checkpoint written by TrainGraph restores into
EvalGraph and SampleGraph of any batch size. The LSTM math is in charrnn/lstm.py.
"""
import contextlib

from charrnn.lstm import (filter_logits, gru_update, layer_norm, lstm_layer, lstm_update, matmul_pretransposed,
                          rnn_update, zone_out)
from charrnn.tfcompat import load

MAX_CHUNK = 4096  # most characters one sampling session.run generates
NOISE_BLOCK_FLOATS = 1 << 22  # sampling noise per block: 16 MB, whatever the vocabulary
TABLE_FLOATS = 1 << 24  # the sampler's (V, 4H) input table up to 64 MB; larger, one product per character
# XLA's CPU matrix-vector product gives each thread at least this many multiply-adds (kFmaPerTask
# in its dot emitter, TensorFlow 2.16-2.21): a smaller product runs on one core. See
# fuses_recurrent_products.
GEMV_FMA_PER_THREAD = 1 << 19
SCOPE = "model"


def sequence_loss(logits, targets, weights):
    """Weighted mean per-character softmax cross-entropy over batch and time.

    Equivalent to the old ``tf.contrib.seq2seq.sequence_loss`` with both averages on.
    Returns (mean, weighted sum, weight total) so streams can be averaged exactly.
    """
    tf, _ = load()
    crossent = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits)  # (B, T)
    loss_sum = tf.reduce_sum(crossent * weights)
    weight_sum = tf.reduce_sum(weights)
    return loss_sum / tf.maximum(weight_sum, 1e-12), loss_sum, weight_sum


def _scope():
    """The variable scope every variable lives in (entered once: nested, it would be model/model)."""
    _, tf1 = load()
    if tf1.get_variable_scope().name == SCOPE:
        return contextlib.nullcontext()
    return tf1.variable_scope(SCOPE, reuse=tf1.AUTO_REUSE)


# --layer_norm's variables of each LSTM layer, after its kernel and bias, in this order (under its
# LSTMCell's scope): gain (init 1) and shift (init 0) of the input product x @ W_x (4H,), of the
# recurrent product h @ W_h (4H,) and of the cell (H,).
LAYER_NORM_VARIABLES = ("layer_norm/input/gain", "layer_norm/input/shift", "layer_norm/recurrent/gain",
                        "layer_norm/recurrent/shift", "layer_norm/cell/gain", "layer_norm/cell/shift")

# The weights with one slice per character, by variable name, and the axis the characters lie on:
# what charrnn-train --extend_vocab widens (ModelWeights makes them).
VOCAB_AXES = {f"{SCOPE}/embedding": 0, f"{SCOPE}/softmax_w": 1, f"{SCOPE}/softmax_b": 0}

model_scope = _scope  # for training graphs built beside this module's (charrnn/replica.py)


class ModelWeights:
    """Every trainable variable of the model, created (or reused) in the current graph.

    Each initializer has its own seed under the graph's (``--seed``), so the initial weights do
    not depend on which graph is built or in which order: both training graphs start alike.

    The LSTM layers' kernel and bias are LSTMCell's own variables, by its names. They are made
    when first needed: by the cell itself when the default graph's dynamic_rnn first calls it, so
    the loop reads them once, as values, the way a plain MultiRNNCell graph does. Made here first,
    the loop would read them inside every iteration, and under XLA its step ran 50% slower.
    """

    def __init__(self, config):
        _, tf1 = load()
        self.config = config
        V, H = config.vocab_size, config.hidden_size
        glorot = tf1.glorot_uniform_initializer
        with _scope():
            self.embedding = tf1.get_variable("embedding", [V, H], initializer=glorot(seed=1))  # (V, H)
            self.softmax_w = tf1.get_variable("softmax_w", [H, V], initializer=glorot(seed=2))  # (H, V)
            self.softmax_b = tf1.get_variable("softmax_b", [V], initializer=tf1.zeros_initializer())
        self._lstm = None

    @classmethod
    def from_values(cls, config, values):
        """The same interface over tensors (``values`` in the order of :attr:`trainable`), e.g. the
        weights' values read once, for a compiled function to take as inputs. The layerwise graph
        can use it; the cell graph cannot (LSTMCell reads its own variables)."""
        view = cls.__new__(cls)
        view.config = config
        view.embedding, view.softmax_w, view.softmax_b, *lstm = values
        per_layer = len(lstm) // config.num_layers  # 2 (kernel, bias), + 6 with --layer_norm
        view._lstm = [tuple(lstm[k:k + per_layer]) for k in range(0, len(lstm), per_layer)]
        return view

    def _kernel_initializer(self, layer):
        _, tf1 = load()
        if self.config.model != "gru":
            return tf1.glorot_uniform_initializer(seed=10 + layer)
        # GRUCell takes one initializer for both its kernels: tell them apart by their width
        # (gates 2H, candidate H), so they get different seeds, not the same random stream.
        gates, candidate = (tf1.glorot_uniform_initializer(seed=seed) for seed in (10 + layer, (1 << 20) + layer))
        H = self.config.hidden_size

        def initializer(shape, dtype=None, partition_info=None):
            return (gates if shape[-1] == 2 * H else candidate)(shape, dtype=dtype, partition_info=partition_info)

        return initializer

    def _bias_initializer(self):
        """An LSTM layer's bias (4H,: gates i, j, f, o) starts at 0, the forget gate's block at
        --forget_bias_init (LSTMCell adds 1 to that gate on top)."""
        _, tf1 = load()
        value, H = self.config.forget_bias_init, self.config.hidden_size
        if not value:
            return tf1.zeros_initializer()
        return tf1.constant_initializer([0.0] * (2 * H) + [value] * H + [0.0] * H)

    def cell_variables(self):
        """Each layer's variables in the order its cell creates them (made or reused):
        lstm (kernel (2H, 4H), bias (4H,)); gru (gates kernel (2H, 2H), gates bias (2H,),
        candidate kernel (2H, H), candidate bias (H,)); rnn (kernel (2H, H), bias (H,)).
        Kernels are [input; recurrent] rows, as the cells multiply [x, h] by them."""
        if self.config.model == "lstm":
            return self._lstm_variables()
        if self._lstm is None:
            _, tf1 = load()
            H, self._lstm = self.config.hidden_size, []
            zeros, ones = tf1.zeros_initializer(), tf1.constant_initializer(1.0)
            with _scope():
                for layer in range(self.config.num_layers):
                    kernel = self._kernel_initializer(layer)
                    if self.config.model == "gru":
                        with tf1.variable_scope(f"rnn/multi_rnn_cell/cell_{layer}/gru_cell"):
                            self._lstm.append((
                                tf1.get_variable("gates/kernel", [2 * H, 2 * H], initializer=kernel),
                                tf1.get_variable("gates/bias", [2 * H], initializer=ones),  # GRUCell's
                                tf1.get_variable("candidate/kernel", [2 * H, H], initializer=kernel),
                                tf1.get_variable("candidate/bias", [H], initializer=zeros)))
                    else:
                        with tf1.variable_scope(f"rnn/multi_rnn_cell/cell_{layer}/basic_rnn_cell"):
                            self._lstm.append((tf1.get_variable("kernel", [2 * H, H], initializer=kernel),
                                               tf1.get_variable("bias", [H], initializer=zeros)))
        return self._lstm

    def _lstm_variables(self):
        """[(kernel (2H, 4H): [input; recurrent], bias (4H,)) per layer], made or reused; with
        --layer_norm each layer's tuple goes on with its LAYER_NORM_VARIABLES."""
        if self._lstm is None:
            _, tf1 = load()
            H, self._lstm = self.config.hidden_size, []
            with _scope():
                for layer in range(self.config.num_layers):
                    with tf1.variable_scope(f"rnn/multi_rnn_cell/cell_{layer}/lstm_cell"):
                        variables = (
                            tf1.get_variable("kernel", [2 * H, 4 * H], initializer=self._kernel_initializer(layer)),
                            tf1.get_variable("bias", [4 * H], initializer=self._bias_initializer()))
                        if self.config.layer_norm:
                            variables += _layer_norm_variables(tf1.get_variable, H)
                        self._lstm.append(variables)
        return self._lstm

    @property
    def kernels(self):
        return [layer[0] for layer in self._lstm_variables()]

    @property
    def biases(self):
        return [layer[1] for layer in self._lstm_variables()]

    def layer_norms(self, layer):
        """--layer_norm's ((input gain, shift) (4H,), (recurrent gain, shift) (4H,), (cell gain,
        shift) (H,)) of an LSTM layer, or None without it."""
        if not self.config.layer_norm:
            return None
        norms = self._lstm_variables()[layer][2:]
        return norms[0:2], norms[2:4], norms[4:6]

    def normalize_input(self, layer, projected):
        """An LSTM layer's input product x @ W_x (..., 4H) as its gates take it: layer-normalized
        with --layer_norm (per row, so a row of the table of products is normalized alike), else
        as it is."""
        norms = self.layer_norms(layer)
        return projected if norms is None else layer_norm(projected, *norms[0])

    def normalize_recurrent(self, layer, product):
        """An LSTM layer's recurrent product h @ W_h (B, 4H) as its gates take it (see
        :meth:`normalize_input`)."""
        norms = self.layer_norms(layer)
        return product if norms is None else layer_norm(product, *norms[1])

    def cell_norm(self, layer):
        """lstm_update's ``cell_norm`` of an LSTM layer: (gain, shift) (H,), or None."""
        norms = self.layer_norms(layer)
        return None if norms is None else norms[2]

    @property
    def trainable(self):
        """Every weight, in the order TensorFlow's collection lists them (the gradient clipping's
        sum runs in this order)."""
        return [self.embedding, self.softmax_w, self.softmax_b] + [
            v for layer in self.cell_variables() for v in layer]

    def input_kernel(self, layer):
        """The rows of the layer's kernel(s) that multiply its input: (H, 4H) for lstm, (H, 3H)
        for gru (gates, then candidate), (H, H) for rnn."""
        tf, _ = load()
        H = self.config.hidden_size
        if self.config.model == "gru":
            gates_kernel, _, candidate_kernel, _ = self.cell_variables()[layer]
            return tf.concat([gates_kernel[:H], candidate_kernel[:H]], 1)
        return self.cell_variables()[layer][0][:H]

    def recurrent_update(self, layer):
        """(update, parts) of a gru or rnn layer: ``update(inputs, hidden, *parts)`` is the new
        hidden state from the input's product with :meth:`input_kernel` (B, 3H or H), as
        charrnn.lstm.gru_update / rnn_update compute it on the cell's own variables."""
        H = self.config.hidden_size
        if self.config.model == "gru":
            gates_kernel, gates_bias, candidate_kernel, candidate_bias = self.cell_variables()[layer]
            return gru_update, (gates_kernel[H:], candidate_kernel[H:], gates_bias, candidate_bias)
        kernel, bias = self.cell_variables()[layer]
        return rnn_update, (kernel[H:], bias)

    def recurrent_kernel(self, layer):
        return self.kernels[layer][self.config.hidden_size:]  # (H, 4H)

    def cell_stack(self, dropout=False):
        """A MultiRNNCell of LSTMCells (LayerNormLSTMCells with --layer_norm; GRUCells,
        BasicRNNCells for --model gru, rnn) over these weights; with ``dropout``, each layer's
        output is multiplied by a mask that arrives beside the input (see _masked_cell_class).
        With zoneout rates, each LSTM layer takes zoneout's expectation (evaluation and sampling;
        zoneout's training is the layerwise graph's)."""
        _, tf1 = load()
        H, model = self.config.hidden_size, self.config.model
        if model == "lstm":
            cell_class = _layer_norm_lstm_cell_class() if self.config.layer_norm else tf1.nn.rnn_cell.LSTMCell
            if self.config.forget_bias_init:
                cell_class = _bias_initialized_cell_class(cell_class, self._bias_initializer())
            cells = [cell_class(H, initializer=self._kernel_initializer(layer))
                     for layer in range(self.config.num_layers)]
            if self.config.zoneout_c or self.config.zoneout_h:
                expected = _zoneout_expectation_cell_class()
                cells = [expected(cell, self.config.zoneout_c, self.config.zoneout_h) for cell in cells]
        elif model == "gru":
            cells = [tf1.nn.rnn_cell.GRUCell(H, kernel_initializer=self._kernel_initializer(layer))
                     for layer in range(self.config.num_layers)]
        else:
            seeded = _seeded_rnn_cell_class()
            cells = [seeded(H, self._kernel_initializer(layer)) for layer in range(self.config.num_layers)]
        if dropout:
            masked = _masked_cell_class()
            cells = [masked(cell, layer, len(cells)) for layer, cell in enumerate(cells)]
        return tf1.nn.rnn_cell.MultiRNNCell(cells)

    def project(self, outputs):
        """(..., H) LSTM outputs -> (..., V) logits."""
        tf, _ = load()
        return tf.tensordot(outputs, self.softmax_w, 1) + self.softmax_b

    def input_table(self):
        """embedding @ layer 0's input kernel, (V, 4H): layer 0's input projection is a row of it
        (with --layer_norm, normalized: the norm is per row)."""
        tf, _ = load()
        return self.normalize_input(0, tf.matmul(self.embedding, self.input_kernel(0)))


class CarriedState:
    """The recurrent state carried from one batch to the next, (B, H) tensors in variables, so no
    step feeds or fetches it: (c, h) of each layer for lstm, h alone for gru and rnn. ``saved``
    puts them among the global variables (the training state goes into checkpoints, so a resumed
    run continues it); else they are local."""

    def __init__(self, name, config, batch_size, saved):
        tf, tf1 = load()
        collections = [tf1.GraphKeys.GLOBAL_VARIABLES if saved else tf1.GraphKeys.LOCAL_VARIABLES]
        self.lstm = config.model == "lstm"
        with _scope():
            self.variables = [
                tuple(tf1.get_variable(f"{name}/layer_{layer}/{part}", [batch_size, config.hidden_size],
                                       initializer=tf1.zeros_initializer(), trainable=False,
                                       collections=collections)
                      for part in (("c", "h") if self.lstm else ("h",)))
                for layer in range(config.num_layers)]
        self.reset_op = tf.group(*[v.assign(tf.zeros_like(v)) for pair in self.variables for v in pair],
                                 name=f"reset_{name}")

    def read(self):
        """The state as the cells take it: one LSTMStateTuple per layer, or one tensor per layer."""
        _, tf1 = load()
        if not self.lstm:
            return tuple(h.read_value() for h, in self.variables)
        return tuple(tf1.nn.rnn_cell.LSTMStateTuple(c.read_value(), h.read_value()) for c, h in self.variables)

    def assign(self, final_state):
        """Ops that store ``final_state`` (as :meth:`read` gives it) for the next batch."""
        tf, _ = load()
        return [v.assign(t) for pair, s in zip(self.variables, final_state) for v, t in zip(pair, tf.nest.flatten(s))]


def lstm_stack(config, weights, ids, initial_state, input_mask=None, masks=None, transposed=None,
               recurrent_mask=None, zoneout_masks=None):
    """Embedding and the LSTM stack: (B, T) ids -> (B, T, H) outputs and the final state per layer.

    ``config.rnn_impl`` picks the graph: "cell" is the design's MultiRNNCell through dynamic_rnn,
    "layerwise" the same math one layer at a time (:func:`_layerwise`). ``input_mask`` (B, T, H)
    and ``masks`` (B, T, layers, H) are dropout masks, ``recurrent_mask`` (layers, H, 4H)
    DropConnect's on the recurrent kernels (layerwise only); ``transposed`` (training with
    layerwise only) the (masked) kernels' transposes for the written-out backward pass.
    ``zoneout_masks`` (training, layerwise only) is zoneout's (cell, hidden) pair of
    (layers, T, B, H) masks, either None where its rate is 0; without it, a config with zoneout
    rates computes their expectation (evaluation).
    """
    tf, tf1 = load()
    if config.rnn_impl == "layerwise":
        return _layerwise(config, weights, ids, initial_state, input_mask, masks, transposed, recurrent_mask,
                          zoneout_masks)
    if recurrent_mask is not None:
        raise ValueError("weight_drop needs rnn_impl 'layerwise'")  # Config.validate says so first
    if any(mask is not None for mask in zoneout_masks or ()):
        raise ValueError("zoneout needs rnn_impl 'layerwise'")  # Config.validate says so first
    inputs = tf.nn.embedding_lookup(weights.embedding, ids)  # (B, T, H)
    if masks is not None:
        inputs = (inputs if input_mask is None else inputs * input_mask, masks)
    with _scope():
        outputs, final_state = tf1.nn.dynamic_rnn(weights.cell_stack(dropout=masks is not None), inputs,
                                                  initial_state=initial_state)
    return (outputs[0] if masks is not None else outputs), final_state


def _layerwise(config, weights, ids, initial_state, input_mask, masks, transposed, recurrent_mask=None,
               zoneout_masks=None):
    """The same LSTM stack, computed one layer at a time (a while_loop over time per layer).

    Exactly the math of LSTMCell (gates i, j, f, o; forget bias 1; tanh) on the same variables,
    so checkpoints are shared with the MultiRNNCell graph. What it saves: each layer's input
    projection is one large matmul over all B*T positions instead of T small ones, and for the
    first layer without input dropout it is a row lookup in embedding @ W_x, (V, 4H). When
    training (``transposed`` given), each layer's backward pass is written out (see
    :func:`charrnn.lstm.lstm_layer`): weight gradients are one large matmul after the loop instead
    of one small matmul and a running sum per time step. Works time-major: (T, B, ...).
    """
    tf, tf1 = load()
    L = config.num_layers
    ids = tf.transpose(ids)  # (T, B)
    if input_mask is None:
        projected = tf.nn.embedding_lookup(weights.input_table(), ids)  # (T, B, 4H), normalized (LN)
    else:
        inputs = tf.nn.embedding_lookup(weights.embedding, ids) * tf.transpose(input_mask, [1, 0, 2])
        projected = weights.normalize_input(0, tf.tensordot(inputs, weights.input_kernel(0), 1))  # (T, B, 4H)
    final_state = []
    for layer in range(L):
        recurrent = weights.recurrent_kernel(layer)  # (H, 4H)
        if recurrent_mask is not None:  # DropConnect: the gradient reaches W_h through the mask
            recurrent = recurrent * recurrent_mask[layer]
        if zoneout_masks is None:  # evaluation: the expectation (rates of 0 are None: off)
            preserve = (config.zoneout_c or None, config.zoneout_h or None)
        else:
            preserve = tuple(None if mask is None else mask[layer] for mask in zoneout_masks)  # (T, B, H)
        # --layer_norm: the input product is normalized outside the loop (TensorFlow derives that
        # gradient), the recurrent product and the cell inside lstm_layer (its backward pass too).
        norms = weights.layer_norms(layer)
        output, cell, hidden = lstm_layer(projected, recurrent,
                                          transposed["recurrent"][layer] if transposed else None,
                                          *initial_state[layer], weights.biases[layer], preserve=preserve,
                                          norms=None if norms is None else norms[1] + norms[2])  # (T, B, H)
        final_state.append(tf1.nn.rnn_cell.LSTMStateTuple(cell, hidden))
        if masks is not None:
            output = output * tf.transpose(masks[:, :, layer], [1, 0, 2])
        if layer + 1 < L:
            if transposed:
                projected = matmul_pretransposed(output, weights.input_kernel(layer + 1),
                                                 transposed["input"][layer])
            else:
                projected = tf.tensordot(output, weights.input_kernel(layer + 1), 1)  # (T, B, 4H)
            projected = weights.normalize_input(layer + 1, projected)
    return tf.transpose(output, [1, 0, 2]), tuple(final_state)


def _transposed_kernels(weights, recurrent_mask=None):
    """{"recurrent": W_h^T of every layer, "input": W_x^T of every layer but the first}, (4H, H)
    each, for the layerwise backward pass; with ``recurrent_mask`` (layers, H, 4H), DropConnect's,
    the masked W_h's. Made outside the XLA cluster and passed in: inside it a transpose folds into
    the product, and that product runs 25-50% slower on the CPU."""
    tf, _ = load()
    layers = range(len(weights.kernels))
    recurrent = [weights.recurrent_kernel(layer) for layer in layers]
    if recurrent_mask is not None:
        recurrent = [kernel * recurrent_mask[layer] for layer, kernel in enumerate(recurrent)]
    return {"recurrent": [tf.transpose(kernel) for kernel in recurrent],
            "input": [tf.transpose(weights.input_kernel(layer)) for layer in layers[1:]]}


def _layer_norm_variables(get_variable, H):
    """--layer_norm's variables of one LSTM layer (LAYER_NORM_VARIABLES), made by ``get_variable``
    (tf1.get_variable, or a cell's add_weight in its scope): gains 1, shifts 0."""
    _, tf1 = load()
    ones, zeros = tf1.ones_initializer(), tf1.zeros_initializer()
    return tuple(get_variable(name, shape=[H if "/cell/" in name else 4 * H],
                              initializer=ones if name.endswith("gain") else zeros)
                 for name in LAYER_NORM_VARIABLES)


def _bias_initialized_cell_class(cell_class, initializer):
    """``cell_class`` (LSTMCell or LayerNormLSTMCell), whose build makes its bias with
    ``initializer`` instead of zeros (--forget_bias_init); same name, so the same variable names."""

    class Cell(cell_class):
        def add_weight(self, name, *args, **kwargs):
            if name == "bias":
                kwargs["initializer"] = initializer
            return super().add_weight(name, *args, **kwargs)

    Cell.__name__ = Cell.__qualname__ = cell_class.__name__  # LSTMCell's default scope: lstm_cell
    return Cell


def _layer_norm_lstm_cell_class():
    """LSTMCell with layer normalization (--layer_norm; Ba, Kiros & Hinton 2016), the idea of TF1
    contrib's LayerNormBasicLSTMCell, on LSTMCell's own kernel and bias plus the
    LAYER_NORM_VARIABLES, made in its build under its scope (so the loop reads them once, as
    values, like LSTMCell's): gates = LN(x @ W_x) + LN(h @ W_h) + bias, and charrnn.lstm's
    lstm_update with the cell's norm. The layerwise graph and the sampler compute the same math."""
    tf, tf1 = load()

    class LayerNormLSTMCell(tf1.nn.rnn_cell.LSTMCell):
        def __init__(self, num_units, initializer):
            super().__init__(num_units, initializer=initializer, name="lstm_cell")  # LSTMCell's scope

        def build(self, inputs_shape):
            super().build(inputs_shape)  # kernel (depth + H, 4H) and bias (4H,), LSTMCell's
            self.built = False  # LSTMCell's build ends built, and a built layer's add_weight only reuses
            self._norms = _layer_norm_variables(self.add_weight, self._num_units)
            self.built = True

        def call(self, inputs, state):
            cell, hidden = state  # (B, H) each
            depth = inputs.shape[-1]
            input_gain, input_shift, recurrent_gain, recurrent_shift, *cell_norm = self._norms
            gates = (layer_norm(tf.matmul(inputs, self._kernel[:depth]), input_gain, input_shift)
                     + layer_norm(tf.matmul(hidden, self._kernel[depth:]), recurrent_gain, recurrent_shift)
                     + self._bias)  # (B, 4H)
            cell, hidden = lstm_update(gates, cell, cell_norm)
            return hidden, tf1.nn.rnn_cell.LSTMStateTuple(cell, hidden)

    return LayerNormLSTMCell


def _seeded_rnn_cell_class():
    """BasicRNNCell with a kernel initializer (the class takes none; its default's seed would
    depend on the order the graph is built in), under BasicRNNCell's own variable names."""
    _, tf1 = load()

    class SeededRNNCell(tf1.nn.rnn_cell.BasicRNNCell):
        def __init__(self, num_units, kernel_initializer):
            super().__init__(num_units, name="basic_rnn_cell")
            self._kernel_initializer = kernel_initializer

        def build(self, inputs_shape):
            depth, H = int(inputs_shape[-1]), self._num_units
            self._kernel = self.add_variable("kernel", shape=[depth + H, H], initializer=self._kernel_initializer)
            self._bias = self.add_variable("bias", shape=[H], initializer=tf1.zeros_initializer())
            self.built = True

    return SeededRNNCell


def _zoneout_expectation_cell_class():
    """A DropoutWrapper subclass that replaces its LSTMCell's new state by zoneout's expectation,
    p_c * c_prev + (1 - p_c) * c~ and the same for h with p_h, and outputs that h: the math of the
    layerwise graph's evaluation (charrnn.lstm.zone_out), for the graphs built on cells (reading
    the sampler's prime). DropoutWrapper is the base because it adds no variable scope (see
    _masked_cell_class)."""
    _, tf1 = load()

    class ZoneoutExpectationCell(tf1.nn.rnn_cell.DropoutWrapper):
        def __init__(self, cell, preserve_cell, preserve_hidden):
            super().__init__(cell)
            self._preserve = preserve_cell, preserve_hidden

        def _call_wrapped_cell(self, inputs, state, cell_call_fn, **kwargs):
            _, (new_cell, new_hidden) = cell_call_fn(inputs, state, **kwargs)
            cell = zone_out(state.c, new_cell, self._preserve[0])
            hidden = zone_out(state.h, new_hidden, self._preserve[1])
            return hidden, tf1.nn.rnn_cell.LSTMStateTuple(cell, hidden)

    return ZoneoutExpectationCell


def _masked_cell_class():
    """A DropoutWrapper subclass that applies a precomputed per-step mask to its cell's output.

    Dropout masks must come from stateless random ops keyed by the global step, so a resumed run
    draws exactly the masks an uninterrupted one would. The masks enter dynamic_rnn as a second
    input stream (B, T, layers, H) and ride along each layer's output to the next layer.
    DropoutWrapper is the base because it adds no variable scope: weight names stay those of a
    bare LSTMCell, so checkpoints are shared with the dropout-free graphs.
    """
    tf, tf1 = load()

    class MaskedOutputCell(tf1.nn.rnn_cell.DropoutWrapper):
        def __init__(self, cell, layer, num_layers):
            super().__init__(cell)
            self._layer, self._num_layers = layer, num_layers

        @property
        def output_size(self):
            return (self.cell.output_size, tf.TensorShape([self._num_layers, self.cell.output_size]))

        def _call_wrapped_cell(self, inputs, state, cell_call_fn, **kwargs):
            x, masks = inputs
            output, new_state = cell_call_fn(x, state, **kwargs)
            return (output * masks[:, self._layer], masks), new_state

    return MaskedOutputCell


class TrainGraph:
    """One training step: forward with dropout, loss, clipped Adam update, state carried.

    Handles: ``inputs`` and ``targets`` (B, T) int32 placeholders; ``train_op`` runs the step;
    ``loss`` and ``grad_norm`` are that step's (fetch them with ``train_op``); ``global_step``;
    ``lr`` with :meth:`assign_lr`; ``reset_state_op`` zeroes the carried state. With
    ``config.xla`` the whole step is one XLA cluster; without it, ``loss`` is the plain tensor
    and callers may take gradients of it themselves (the tests do).
    """

    def __init__(self, config):
        tf, tf1 = load()
        c = config
        if c.xla is None:
            raise ValueError("config.xla is None ('auto'): decide it first (charrnn.autotune.choose_xla)")
        B, T = c.batch_size, c.seq_length
        with _scope():
            self.global_step = tf1.train.get_or_create_global_step()
            weights = ModelWeights(c)
            self.state = CarriedState("train_state", c, B, saved=True)
            self.lr = tf1.get_variable("learning_rate", [], trainable=False,
                                       initializer=tf1.constant_initializer(c.learning_rate))
            self._new_lr = tf1.placeholder(tf.float32, [], "new_learning_rate")
            self._lr_update = self.lr.assign(self._new_lr)
            self.inputs = tf1.placeholder(tf.int32, [B, T], "inputs")
            self.targets = tf1.placeholder(tf.int32, [B, T], "targets")
            # All ones; an input rather than a constant, so XLA cannot fold it into the loss.
            loss_weights = tf1.placeholder_with_default(tf.ones([B, T]), [B, T], "weights")

            # Dropout masks are made outside the (possibly XLA-compiled) step: XLA's stateless
            # random numbers differ from the CPU kernel's, and the masks must not depend on the path.
            masks = self._dropout_masks(c)
            transposed = _transposed_kernels(weights, masks.get("recurrent")) if c.rnn_impl == "layerwise" else {}

            def step(inputs, targets, loss_weights, masks, transposed):
                """Forward, loss and the update ops: (loss, gradient norm, [state and Adam updates])."""
                loss, final_state = training_loss(c, weights, inputs, targets, loss_weights, self.state.read(),
                                                  masks, transposed)
                params = weights.trainable
                # The cell graph keeps TensorFlow's IndexedSlices for the embedding (0.1.0's update);
                # the layerwise graph's are dense, as a cluster's workers send theirs (charrnn/replica.py).
                grads = dense_gradients(loss, params) if c.rnn_impl == "layerwise" else tf.gradients(loss, params)
                apply, grad_norm = clipped_adam(c, self.lr, grads, params, self.global_step)
                return loss, grad_norm, self.state.assign(final_state) + [apply]

            feeds = [self.inputs, self.targets, loss_weights, masks, transposed]  # nested: XLA keeps the structure
            if c.xla:
                def compiled_step(*args):
                    loss, grad_norm, updates = step(*args)
                    with tf.control_dependencies(updates):
                        return [tf.identity(loss), tf.identity(grad_norm)]

                # One XLA cluster for forward, backward, clipping and Adam: one kernel launch per
                # step instead of thousands of small ops.
                self.loss, self.grad_norm = tf1.xla.experimental.compile(compiled_step, feeds)
                self.train_op = tf.group(self.loss, self.grad_norm, name="train_op")
            else:
                self.loss, self.grad_norm, updates = step(*feeds)
                self.train_op = tf.group(*updates, name="train_op")

    @property
    def reset_state_op(self):
        return self.state.reset_op

    def assign_lr(self, session, value):
        session.run(self._lr_update, {self._new_lr: value})

    def _dropout_masks(self, config):
        return dropout_masks(config, self.global_step)


def dropout_masks(config, step, rows=None):
    """The training step's masks, scaled by 1/keep, for global step ``step`` (a tensor): with
    ``dropout``, {"output": (B, T, layers, H), "input": (B, T, H), unless not ``input_dropout``};
    with ``weight_drop``, {"recurrent": (layers, H, 4H)}, DropConnect's on the recurrent kernels,
    one for the whole batch; with ``zoneout_c`` / ``zoneout_h``, {"zoneout_c" / "zoneout_h":
    (layers, T, B, H)}, 1 (probability p: keep the previous value) or 0 (update), not scaled.
    {} without any. ``rows`` (a slice) keeps those rows of the dropout and zoneout masks of all
    B rows.

    One seed per step, derived from (seed, step): stateless, so exact on resume, and a replica
    that trains some of the rows draws exactly their rows of a single process's masks (and the
    same recurrent mask). With ``variational_dropout`` each row draws one mask per step and
    repeats it over time.
    """
    tf, _ = load()
    c = config
    B, T, H, L = c.batch_size, c.seq_length, c.hidden_size, c.num_layers
    step_seed = tf.stack([tf.constant(c.seed, tf.int64), tf.cast(step, tf.int64)])
    masks = {}
    if c.weight_drop > 0:
        uniform = tf.random.stateless_uniform([L, H, 4 * H], step_seed + tf.constant([0, 2 << 40], tf.int64))
        masks["recurrent"] = tf.cast(uniform >= c.weight_drop, tf.float32) / (1.0 - c.weight_drop)
    # Zoneout per unit, row and time step, time-major as the layerwise loop reads it; each part
    # from its own seed offset, so turning one on leaves every other mask as it was.
    for name, rate, offset in (("zoneout_c", c.zoneout_c, 3 << 40), ("zoneout_h", c.zoneout_h, 4 << 40)):
        if rate > 0:
            uniform = tf.random.stateless_uniform([L, T, B, H], step_seed + tf.constant([0, offset], tf.int64))
            mask = tf.cast(uniform < rate, tf.float32)
            masks[name] = mask if rows is None else mask[:, :, rows]
    if c.dropout == 0:
        return masks
    drawn = 1 if c.variational_dropout else T  # time steps that draw their own mask
    keep = 1.0 - c.dropout
    out_seed = step_seed + tf.constant([0, 1 << 40], tf.int64)  # the same with or without input dropout
    drawn_masks = {"output": tf.random.stateless_uniform([B, drawn, L, H], out_seed)}
    if c.input_dropout:
        drawn_masks["input"] = tf.random.stateless_uniform([B, drawn, H], step_seed)
    for name, uniform in drawn_masks.items():
        mask = tf.cast(uniform < keep, tf.float32) / keep
        if c.variational_dropout:
            mask = tf.tile(mask, [1, T] + [1] * (mask.shape.ndims - 2))
        masks[name] = mask if rows is None else mask[rows]
    return masks


def training_loss(config, weights, inputs, targets, loss_weights, initial_state, masks, transposed):
    """The training forward pass from ``initial_state``: (mean loss over (B, T), final state per
    layer). ``masks`` are dropout's, DropConnect's and zoneout's (see :func:`dropout_masks`; {}
    without any), ``transposed`` the layerwise kernels' (or {})."""
    outputs, final_state = lstm_stack(config, weights, inputs, initial_state, masks.get("input"), masks.get("output"),
                                      transposed=transposed or None, recurrent_mask=masks.get("recurrent"),
                                      zoneout_masks=(masks.get("zoneout_c"), masks.get("zoneout_h")))
    loss, _, _ = sequence_loss(weights.project(outputs), targets, loss_weights)  # (B, T, V) logits
    return loss, final_state


def dense_gradients(loss, params):
    """The gradients of ``loss`` with respect to ``params``, as dense tensors.

    Through an embedding lookup TensorFlow derives IndexedSlices, one row per character of the
    batch, and clip_by_global_norm then takes the norm of those rows, not of the gradient (each
    character's rows summed): the clip factor, and the norm the log reports, are off whenever a
    character repeats in the batch (0.36% at hidden 16 with dropout 0.2). Dense, the norm is the
    gradient's, so a cluster's workers, which average dense gradients, end where one process of
    their whole batch does. (Adam itself sums repeated rows before its sparse update.)
    """
    tf, _ = load()
    return [tf.convert_to_tensor(g) for g in tf.gradients(loss, params)]


def clipped_adam(config, lr, grads, params, global_step):
    """Clip ``grads`` to the global norm ``config.grad_clip`` and apply them with Adam at rate
    ``lr`` (AdamW with ``config.weight_decay``), incrementing ``global_step``: (the update op,
    the norm before clipping)."""
    tf, tf1 = load()
    clipped, grad_norm = tf.clip_by_global_norm(grads, config.grad_clip)
    if not config.weight_decay:
        apply = tf1.train.AdamOptimizer(lr).apply_gradients(zip(clipped, params), global_step=global_step)
        return apply, grad_norm
    # AdamW: w -= lr * weight_decay * w, decoupled from Adam's moments (so not a gradient term),
    # on the weights before this step's update; matrices only.
    matrices = [p for p in params if p.shape.ndims == 2]
    shrink = [lr * config.weight_decay * p.read_value() for p in matrices]
    with tf.control_dependencies(shrink):
        apply = tf1.train.AdamOptimizer(lr).apply_gradients(zip(clipped, params), global_step=global_step)
    with tf.control_dependencies([apply]):
        decay = tf.group(*[p.assign_sub(d) for p, d in zip(matrices, shrink)])
    return decay, grad_norm


class EvalGraph:
    """Loss over a stream without updates or dropout, carrying state across windows.

    Handles: ``inputs``, ``targets`` (B, T) int32 and ``target_weights`` (B, T) float32 (0 for padding,
    default 1); ``eval_op`` runs a window and carries the state; ``loss``, ``loss_sum``,
    ``weight_sum`` and ``logits`` (B, T, V) are that window's; ``reset_state_op``. The state is a
    local variable: it is never saved.
    """

    def __init__(self, config, batch_size=None, seq_length=None):
        tf, tf1 = load()
        B, T = batch_size or config.batch_size, seq_length or config.seq_length
        self.batch_size, self.seq_length = B, T
        weights = ModelWeights(config)
        self.state = CarriedState("eval_state", config, B, saved=False)
        self.inputs = tf1.placeholder(tf.int32, [B, T], "inputs")
        self.targets = tf1.placeholder(tf.int32, [B, T], "targets")
        self.target_weights = tf1.placeholder_with_default(tf.ones([B, T]), [B, T], "target_weights")
        self.logits, (loss, loss_sum, weight_sum), final_state = score_window(
            config, weights, self.inputs, self.targets, self.target_weights, self.state.read())
        with tf.control_dependencies(self.state.assign(final_state)):
            self.loss, self.loss_sum, self.weight_sum = (tf.identity(t) for t in (loss, loss_sum, weight_sum))
        self.eval_op = tf.group(self.loss, self.loss_sum, self.weight_sum, name="eval_op")

    @property
    def reset_state_op(self):
        return self.state.reset_op


def score_window(config, weights, inputs, targets, target_weights, initial_state):
    """The evaluation forward pass over one window: (B, T) ids, targets and weights from
    ``initial_state`` -> logits (B, T, V), (mean, sum, weight total) of the loss, final state.
    EvalGraph runs it on placeholders; the exported ``score`` signature in a loop over windows."""
    outputs, final_state = lstm_stack(config, weights, inputs, initial_state)
    logits = weights.project(outputs)  # (B, T, V)
    return logits, sequence_loss(logits, targets, target_weights), final_state


class SampleGraph:
    """Read a prime, then generate ``num_chars`` characters, in one session.run.

    Inputs: ``prime`` (P,) int32 ids, P >= 1; ``num_chars`` (<= ``max_chunk``); ``seed``, ``offset``
    (the absolute position of this chunk's first character), ``temperature``, ``greedy``,
    ``top_k``, ``top_p``; ``initial_state`` (default zeros). Outputs: ``generated`` (num_chars,)
    ids and ``final_state``, drawn from the whole tempered distribution, and
    ``generated_filtered`` and ``final_state_filtered``, with top-k/top-p applied first. Each is a
    compiled loop of its own, so the common case pays nothing per character for filtering.

    The prime (all but its last character) goes through dynamic_rnn; the generation loop is a
    tf.while_loop compiled with XLA, which removes the executor's per-op cost that dominates at
    batch 1. The final state has consumed everything but the last generated character: feed that
    character as the next chunk's one-character prime with it, and ``offset`` advanced, and the
    chunks give the same text as one run.
    """

    def __init__(self, config):
        tf, tf1 = load()
        H = config.hidden_size
        weights = ModelWeights(config)
        self.max_chunk = max_chunk(config.vocab_size)  # num_chars may not exceed it
        self.prime = tf1.placeholder(tf.int32, [None], "prime")  # (P,)
        self.num_chars = tf1.placeholder(tf.int32, [], "num_chars")
        self.seed = tf1.placeholder_with_default(tf.constant(0, tf.int64), [], "seed")
        self.offset = tf1.placeholder_with_default(tf.constant(0, tf.int64), [], "offset")
        self.temperature = tf1.placeholder_with_default(1.0, [], "temperature")
        self.top_k = tf1.placeholder_with_default(0, [], "top_k")
        self.top_p = tf1.placeholder_with_default(1.0, [], "top_p")
        self.greedy = tf1.placeholder_with_default(False, [], "greedy")
        zero = weights.cell_stack().zero_state(1, tf.float32)
        self.initial_state = tf.nest.map_structure(lambda t: tf1.placeholder_with_default(t, [1, H]), zero)

        state = read_prime(weights, self.prime, self.initial_state)
        inputs = [tf.reshape(self.prime[-1:], [1]), self.num_chars, self.seed, self.offset,
                  self.temperature, self.top_k, self.top_p, self.greedy, state]
        self.generated, self.final_state = generate_chunk(weights, *inputs, filtered=False)
        self.generated_filtered, self.final_state_filtered = generate_chunk(weights, *inputs, filtered=True)


def read_prime(weights, prime, initial_state):
    """The state after reading ``prime`` (P,) ids but its last character, which the generation
    loop feeds first. A one-character prime runs zero time steps and passes the state through."""
    tf, tf1 = load()
    context = tf.nn.embedding_lookup(weights.embedding, prime[None, :-1])  # (1, P-1, H)
    with _scope():
        _, state = tf1.nn.dynamic_rnn(weights.cell_stack(), context, initial_state=initial_state)
    return state


def generate_chunk(weights, prev, num_chars, seed, offset, temperature, top_k, top_p, greedy, state,
                   filtered, xla=True):
    """Feed ``prev`` (1,) after ``state`` and draw ``num_chars`` (<= max_chunk(V)) characters, the
    first at absolute position ``offset``, in one XLA-compiled loop: (ids (num_chars,), final
    state). ``filtered`` applies top-k/top-p; ``xla=False`` leaves the loop to TensorFlow's
    executor. SampleGraph builds it on placeholders; the exported SavedModel in a loop over
    chunks, so both give the same text. Where :func:`fuses_recurrent_products` says it pays, layer
    0's next recurrent product is computed in layer 1's (see below)."""
    tf, tf1 = load()
    V, H = weights.config.vocab_size, weights.config.hidden_size
    if weights.config.model == "lstm":
        # Layer 0's recurrent kernel is split once, outside the loop (a slice inside the compiled
        # loop is copied on every iteration); the deeper layers use their whole kernel on [x, h].
        recurrent0 = tf.identity(weights.recurrent_kernel(0))  # (H, 4H)
        if weights.config.layer_norm:
            # Layer norm normalizes each layer's input and recurrent products apart: every layer's
            # kernel is split outside the loop, (input kernel (H, 4H), recurrent kernel (H, 4H)).
            recurrent0 = [(None, recurrent0)] + [
                (tf.identity(weights.input_kernel(layer)), tf.identity(weights.recurrent_kernel(layer)))
                for layer in range(1, weights.config.num_layers)]
    else:
        # gru and rnn: every layer's pieces are split outside the loop, for the same reason:
        # (update function, input kernel of layers above the first, recurrent parts) per layer.
        recurrent0 = [(update, None if layer == 0 else tf.identity(weights.input_kernel(layer)),
                       [tf.identity(part) for part in parts])
                      for layer, (update, parts) in enumerate(map(weights.recurrent_update,
                                                                  range(weights.config.num_layers)))]
    fused = None
    if fuses_recurrent_products(weights.config):
        # Layer 0's recurrent product for the next character, h0 @ W_h0, needs only the h0 that
        # layer 1 multiplies now: one product [h0, h1] @ [[W_h0, W_x1], [0, W_h1]], (2H, 8H),
        # gives both. XLA's GEMV splits the one product over two threads where it ran each of the
        # two on one (README: Speed). The same math; only rounding differs (apart, XLA adds the
        # input row into the product's sum), so a seed's text can differ from before where a draw
        # falls within rounding of a tie, and in any chunking it is the same as in one run.
        kernel1 = weights.kernels[1]  # (2H, 4H): [W_x1; W_h1]
        fused = tf.concat([tf.concat([recurrent0, kernel1[:H]], 1),
                           tf.concat([tf.zeros([H, 4 * H]), kernel1[H:]], 1)], 0)  # (2H, 8H)
    if V * 4 * H <= TABLE_FLOATS:
        table = weights.input_table()  # (V, 4H)

        def input_gates(ids):  # layer 0's input pre-activations of ids (1,): (1, 4H)
            return tf.gather(table, ids)
    else:  # a huge vocabulary: keep the table's memory, pay one (1, H) x (H, 4H) product
        input0 = tf.identity(weights.input_kernel(0))  # (H, 4H), split outside the loop too

        def input_gates(ids):
            return weights.normalize_input(0, tf.matmul(tf.gather(weights.embedding, ids), input0))
    noise = _gumbel_noise(seed, offset, V, greedy)  # (max_chunk(V), V)
    inputs = [prev, num_chars, noise, temperature, top_k, top_p, state]  # nested: XLA keeps the structure

    def loop(*args):
        return _generation_loop(weights, input_gates, recurrent0, filtered, *args, fused=fused)

    # XLA compiles it on its first run only.
    generated, final_state = tf1.xla.experimental.compile(loop, inputs) if xla else loop(*inputs)
    return generated[:num_chars], final_state


def fuses_recurrent_products(config):
    """Whether the sampler computes layer 0's next recurrent product inside layer 1's (see
    generate_chunk): for an LSTM of two or more layers without --layer_norm whose layer-1 product,
    (2H, 4H), runs on one core in XLA's matrix-vector product and whose fused one, (2H, 8H), is
    split over two (2x192 to 2x256). At 2x256 it samples 31% faster on the AMD EPYC here; at
    2x128 the fused product would still run on one core, reading the zero block for nothing
    (25% slower), and at 2x512 each product is already split (README: Speed)."""
    H = config.hidden_size
    return (config.model == "lstm" and not config.layer_norm and config.num_layers >= 2
            and 8 * H * H <= GEMV_FMA_PER_THREAD < 16 * H * H)


def max_chunk(vocab_size):
    """Most characters one sampling session.run generates: MAX_CHUNK, or fewer for vocabularies
    of more than 1,024 characters, so that the noise of a chunk stays NOISE_BLOCK_FLOATS per block
    (a 70,000-character vocabulary would otherwise draw 2.3 GB of noise per chunk)."""
    return max(1, min(MAX_CHUNK, NOISE_BLOCK_FLOATS // vocab_size))


def _gumbel_noise(seed, offset, vocab_size, greedy):
    """Gumbel noise for the max_chunk(V) positions from ``offset`` on, (max_chunk, V); zeros if
    ``greedy``.

    Gumbel-max: argmax(logits + Gumbel noise) is a draw from softmax(logits), and unlike
    stateless_categorical it compiles with XLA. The noise for absolute position p is row p % R of
    a block of R = max_chunk(V) rows keyed by (seed, p // R), so it depends on (seed, p) alone and
    generating in chunks gives the same text as one run; a chunk spans at most two blocks. (For
    vocabularies up to 1,024 characters R is MAX_CHUNK, the layout of release 0.1.0.) It is drawn
    before the loop by TensorFlow's own kernels: XLA's CPU log costs more per character than the
    rest of the sampling. Greedy scales it to 0, and argmax(logits + 0) = argmax(logits).
    """
    tf, _ = load()
    rows = max_chunk(vocab_size)
    block = offset // rows
    uniform = tf.concat([tf.random.stateless_uniform([rows, vocab_size], tf.stack([seed, block + b]),
                                                     minval=1e-20, maxval=1.0)
                         for b in (0, 1)], 0)  # (2 * rows, V)
    start = tf.cast(offset % rows, tf.int32)
    window = tf.reshape(uniform[start:start + rows], [rows, vocab_size])  # the static shape, for the loop
    return tf.where(greedy, 0.0, 1.0) * -tf.math.log(-tf.math.log(window))


def _generation_loop(weights, input_gates, recurrent0, filtered, prev, num_chars, noise, temperature, top_k,
                     top_p, state, fused=None):
    """Feed character ``prev`` (1,), draw the next, and repeat ``num_chars`` times: returns the
    drawn ids (one per row of ``noise``), of which the first ``num_chars`` count, and the final
    state.

    LSTMCell's math on its own variables, with the first layer's input pre-activations from
    ``input_gates(ids)`` (a row of embedding @ W_x, except for huge vocabularies) and its
    recurrent kernel ``recurrent0``: at batch 1 each character is bound by reading the weights,
    so the row saves a quarter of the bytes per character. With --layer_norm, ``recurrent0``
    holds every layer's (input kernel, recurrent kernel), split (see generate_chunk). For gru
    and rnn, ``recurrent0`` holds every layer's (update, input kernel, recurrent parts) (see
    ModelWeights.recurrent_update). With ``fused`` ((2H, 8H), see generate_chunk) the loop carries
    layer 0's input row plus its recurrent product, h0 @ W_h0, which layer 1's product computes
    one character ahead.
    """
    tf, tf1 = load()
    inverse_temperature = 1.0 / tf.maximum(temperature, 1e-6)
    size = noise.shape[0]
    H = weights.config.hidden_size

    def next_recurrent(hidden0, hidden1):  # ([h0, h1] @ fused) split: (h0 @ W_h0, layer 1's gates)
        both = tf.matmul(tf.concat([hidden0, hidden1], 1), fused)  # (1, 8H)
        return both[:, :4 * H], both[:, 4 * H:]

    def body(i, x, state, generated):
        new_state = []
        if weights.config.model == "lstm":
            for layer, (c, h) in enumerate(state):
                if weights.config.layer_norm:  # the products normalized apart (layer 0's row already is)
                    input_kernel, recurrent = recurrent0[layer]
                    if layer > 0:
                        x = weights.normalize_input(layer, tf.matmul(x, input_kernel))
                    gates = x + weights.normalize_recurrent(layer, tf.matmul(h, recurrent)) + weights.biases[layer]
                elif layer == 1 and fused is not None:
                    recurrent_next, gates = next_recurrent(x, h)
                    gates = gates + weights.biases[layer]
                elif layer > 0:
                    gates = tf.matmul(tf.concat([x, h], 1), weights.kernels[layer]) + weights.biases[layer]
                elif fused is not None:
                    gates = x + weights.biases[layer]  # x holds input row + h0 @ W_h0 already
                else:
                    gates = x + tf.matmul(h, recurrent0) + weights.biases[layer]  # (1, 4H)
                new_c, new_h = lstm_update(gates, c, weights.cell_norm(layer))
                # zoneout's expectation, as evaluation computes it (no op without zoneout)
                c = zone_out(c, new_c, weights.config.zoneout_c)
                x = zone_out(h, new_h, weights.config.zoneout_h)
                new_state.append(tf1.nn.rnn_cell.LSTMStateTuple(c, x))
        else:
            for layer, (h, (update, input_kernel, parts)) in enumerate(zip(state, recurrent0)):
                x = update(x if layer == 0 else tf.matmul(x, input_kernel), h, *parts)  # (1, H)
                new_state.append(x)
        logits = weights.project(x) * inverse_temperature  # (1, V)
        if filtered:
            logits = filter_logits(logits, top_k, top_p)
        nxt = tf.argmax(logits + noise[i], -1, output_type=tf.int32)  # (1,)
        generated = tf.tensor_scatter_nd_update(generated, [[i]], nxt)
        x = input_gates(nxt)
        if fused is not None:
            x = x + recurrent_next
        return i + 1, x, tuple(new_state), generated

    x = input_gates(prev)
    if fused is not None:  # the first character's recurrent product, as the loop computes the others
        x = x + next_recurrent(state[0][1], state[1][1])[0]
    _, _, state, generated = tf.while_loop(
        lambda i, *_: i < num_chars, body,
        [tf.constant(0), x, state, tf.zeros([size], tf.int32)],
        maximum_iterations=size)
    return generated, state
