"""The graph: embedding -> MultiRNNCell of LSTMCells via dynamic_rnn -> dense -> sequence loss.

One class builds every mode; modes differ in what they add, not in copied graph code:
  TRAIN  dropout, clipped Adam update, carried state saved with the checkpoint
  EVAL   no dropout, no update, summed loss for exact means over a stream
  SAMPLE an in-graph loop that consumes a prime and generates characters in one session.run
Weights live under the variable scope "model" and are shared (reuse) between modes, so a
checkpoint written by TRAIN restores into EVAL and SAMPLE graphs of any batch size.
"""
from charrnn.tfcompat import load

TRAIN, EVAL, SAMPLE = "train", "eval", "sample"
MAX_CHUNK = 4096  # most characters one sampling session.run generates


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


def lstm_activations(gates):
    """LSTMCell's gate activations from its pre-activations (B, 4H): input i, candidate j,
    forget f (forget bias 1) and output o, each (B, H)."""
    tf, _ = load()
    i, j, f, o = tf.split(gates, 4, axis=1)
    return tf.sigmoid(i), tf.tanh(j), tf.sigmoid(f + 1.0), tf.sigmoid(o)


def lstm_update(gates, cell):
    """LSTMCell's state update from its pre-activations (B, 4H): the new (cell, hidden).

    The layerwise training graph and the sampler use it on LSTMCell's own variables, so their
    math is the cell's exactly (tests compare both against it).
    """
    tf, _ = load()
    i, j, f, o = lstm_activations(gates)
    cell = f * cell + i * j
    return cell, o * tf.tanh(cell)


def lstm_layer(projected, recurrent, recurrent_t, cell, hidden):
    """One LSTM layer over time: projected (T, B, 4H) input pre-activations (bias included),
    recurrent (H, 4H), initial state (B, H) each -> outputs (T, B, H), final cell, final hidden.

    With ``recurrent_t`` (recurrent transposed, (4H, H)) the gradient is written out instead of
    derived by TensorFlow from the loop: a reverse loop carries (dh, dc) and multiplies by
    ``recurrent_t`` (a plain product; TF's derived loop multiplies by the transpose in place, which
    XLA runs 25-50% slower on this CPU), and the recurrent weights' gradient is one (H, T*B) @ (T*B, 4H)
    product after the loop instead of a small product plus a running sum at every time step.
    The math is lstm_update's; tests compare every gradient with TensorFlow's own.
    """
    tf, _ = load()
    T = tf.shape(projected)[0]
    steps = tf.TensorArray(tf.float32, size=T).unstack(projected)

    if recurrent_t is None:
        def body(t, cell, hidden, outputs):
            cell, hidden = lstm_update(steps.read(t) + tf.matmul(hidden, recurrent), cell)
            return t + 1, cell, hidden, outputs.write(t, hidden)

        _, cell, hidden, outputs = tf.while_loop(
            lambda t, *_: t < T, body, [tf.constant(0), cell, hidden, tf.TensorArray(tf.float32, size=T)])
        return outputs.stack(), cell, hidden

    @tf.custom_gradient
    def layer(projected, recurrent, recurrent_t, cell0, hidden0):
        def body(t, cell, hidden, outputs, cells, activations):
            i, j, f, o = lstm_activations(steps.read(t) + tf.matmul(hidden, recurrent))
            cell = f * cell + i * j  # lstm_update's, keeping the activations for the backward pass
            hidden = o * tf.tanh(cell)
            return (t + 1, cell, hidden, outputs.write(t, hidden), cells.write(t, cell),
                    activations.write(t, tf.concat([i, j, f, o], 1)))

        arrays = [tf.TensorArray(tf.float32, size=T) for _ in range(3)]
        _, cell, hidden, outputs, cells, activations = tf.while_loop(
            lambda t, *_: t < T, body, [tf.constant(0), cell0, hidden0] + arrays)
        outputs, cells, activations = outputs.stack(), cells.stack(), activations.stack()

        def grad(d_outputs, d_cell, d_hidden):
            d_outputs = tf.zeros_like(outputs) if d_outputs is None else d_outputs
            d_cell = tf.zeros_like(cell0) if d_cell is None else d_cell
            d_hidden = tf.zeros_like(hidden0) if d_hidden is None else d_hidden
            # Everything that does not depend on the carried (dh, dc) is computed for all time
            # steps at once, so the reverse loop is one product and one small fusion per step.
            previous_cells = tf.concat([cell0[None], cells[:-1]], 0)  # (T, B, H)
            tanh_cells = tf.tanh(cells)
            i, j, f, o = tf.split(activations, 4, axis=2)
            h_to_c = o * (1.0 - tanh_cells * tanh_cells)  # dc += dh * h_to_c
            # d_gates = [dc, dc, dc, dh] * local, the activations' derivatives times their partners
            local = tf.concat([j * i * (1.0 - i), i * (1.0 - j * j), previous_cells * f * (1.0 - f),
                               tanh_cells * o * (1.0 - o)], 2)  # (T, B, 4H)
            d_steps = tf.TensorArray(tf.float32, size=T)

            def back(k, d_hidden, d_cell, d_steps):
                t = T - 1 - k
                d_h = d_outputs[t] + d_hidden
                d_c = d_cell + d_h * h_to_c[t]
                d_gates = tf.concat([d_c, d_c, d_c, d_h], 1) * local[t]  # (B, 4H)
                return k + 1, tf.matmul(d_gates, recurrent_t), d_c * f[t], d_steps.write(t, d_gates)

            _, d_hidden, d_cell, d_steps = tf.while_loop(
                lambda k, *_: k < T, back, [tf.constant(0), d_hidden, d_cell, d_steps])
            d_steps = d_steps.stack()  # (T, B, 4H): the gradient of `projected`
            previous_hidden = tf.concat([hidden0[None], outputs[:-1]], 0)  # (T, B, H)
            H = tf.shape(hidden0)[1]
            d_recurrent = tf.matmul(tf.reshape(previous_hidden, [-1, H]),
                                    tf.reshape(d_steps, [-1, 4 * H]), transpose_a=True)
            return d_steps, d_recurrent, None, d_cell, d_hidden

        return (outputs, cell, hidden), grad

    return layer(projected, recurrent, recurrent_t, cell, hidden)


def matmul_pretransposed(x, w, w_t):
    """x (..., K) @ w (K, N), whose input gradient multiplies by ``w_t`` = w^T, a separate input:
    under XLA on a CPU a product with a transposed operand runs 25-50% slower."""
    tf, _ = load()

    @tf.custom_gradient
    def product(x, w, w_t):
        K, N = tf.shape(w)[0], tf.shape(w)[1]
        flat = tf.reshape(x, [-1, K])

        def grad(dy):
            dy = tf.reshape(dy, [-1, N])
            return (tf.reshape(tf.matmul(dy, w_t), tf.shape(x)),
                    tf.matmul(flat, dy, transpose_a=True), None)

        return tf.reshape(tf.matmul(flat, w), tf.concat([tf.shape(x)[:-1], [N]], 0)), grad

    return product(x, w, w_t)


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


class CharRNN:
    """Builds one mode of the model in the default graph and exposes named handles."""

    def __init__(self, config, mode, batch_size=None, seq_length=None):
        tf, tf1 = load()
        self.config, self.mode = config, mode
        c = config
        batch_size = batch_size or c.batch_size
        seq_length = seq_length or c.seq_length
        self.batch_size, self.seq_length = batch_size, seq_length
        V, H, L = c.vocab_size, c.hidden_size, c.num_layers
        dropout = c.dropout if mode == TRAIN else 0.0

        with tf1.variable_scope("model", reuse=tf1.AUTO_REUSE):
            self.global_step = tf1.train.get_or_create_global_step()
            embedding = tf1.get_variable("embedding", [V, H])
            softmax_w = tf1.get_variable("softmax_w", [H, V])
            softmax_b = tf1.get_variable("softmax_b", [V], initializer=tf1.zeros_initializer())
            # An explicit TF1 initializer: the default one of tf-keras draws its seed from Python's
            # random module, so the same --seed would not give the same weights.
            cells = [tf1.nn.rnn_cell.LSTMCell(H, initializer=tf1.glorot_uniform_initializer())
                     for _ in range(L)]
            if dropout > 0:
                masked = _masked_cell_class()
                cells = [masked(cell, layer, L) for layer, cell in enumerate(cells)]
            self._cell = tf1.nn.rnn_cell.MultiRNNCell(cells)

            def project(outputs):  # (..., H) -> (..., V)
                return tf.tensordot(outputs, softmax_w, 1) + softmax_b

            if mode == SAMPLE:
                self._build_sampler(embedding, project)
                return

            self.inputs = tf1.placeholder(tf.int32, [batch_size, seq_length], "inputs")
            self.targets = tf1.placeholder(tf.int32, [batch_size, seq_length], "targets")
            self.weights = tf1.placeholder_with_default(
                tf.ones([batch_size, seq_length]), [batch_size, seq_length], "weights")

            # The carried state lives in variables: no per-step feed/fetch, and (for TRAIN) it is
            # saved with the checkpoint so a resumed run continues the same hidden state.
            collections = ([tf1.GraphKeys.GLOBAL_VARIABLES] if mode == TRAIN
                           else [tf1.GraphKeys.LOCAL_VARIABLES])
            self._state_vars = [
                tuple(tf1.get_variable(f"{mode}_state/layer_{l}/{part}", [batch_size, H],
                                       initializer=tf1.zeros_initializer(), trainable=False,
                                       collections=collections)
                      for part in ("c", "h"))
                for l in range(L)]
            self.reset_state_op = tf.group(*[v.assign(tf.zeros_like(v)) for pair in self._state_vars
                                             for v in pair], name="reset_state")
            if mode == TRAIN:
                self.lr = tf1.get_variable("learning_rate", [], trainable=False,
                                           initializer=tf1.constant_initializer(c.learning_rate))
                self._new_lr = tf1.placeholder(tf.float32, [], "new_learning_rate")
                self._lr_update = self.lr.assign(self._new_lr)

            masks = self._dropout_masks(dropout)
            transposed = self._transposed_kernels() if mode == TRAIN and c.rnn_impl == "layerwise" else []

            def step(inputs, targets, weights, *extra):
                """One batch: forward, loss, state update and (TRAIN) the clipped Adam update."""
                initial_state = tuple(tf1.nn.rnn_cell.LSTMStateTuple(cv.read_value(), hv.read_value())
                                      for cv, hv in self._state_vars)
                outputs, final_state = self._forward(inputs, embedding, initial_state,
                                                     *extra[:len(masks)], transposed=extra[len(masks):])
                logits = project(outputs)  # (B, T, V)
                loss, loss_sum, weight_sum = sequence_loss(logits, targets, weights)
                update_state = [v.assign(t) for pair, s in zip(self._state_vars, final_state)
                                for v, t in zip(pair, (s.c, s.h))]
                if mode != TRAIN:
                    with tf.control_dependencies(update_state):
                        return [tf.identity(t) for t in (loss, loss_sum, weight_sum, logits)]
                params = tf1.trainable_variables()
                grads = tf.gradients(loss, params)
                self.gradients = dict(zip((p.op.name for p in params), grads))  # for tests (no XLA)
                clipped, grad_norm = tf.clip_by_global_norm(grads, c.grad_clip)
                apply = tf1.train.AdamOptimizer(self.lr).apply_gradients(
                    zip(clipped, params), global_step=self.global_step)
                with tf.control_dependencies(update_state + [apply]):
                    return [tf.identity(loss), tf.identity(grad_norm)]

            # Dropout masks are made outside the (possibly XLA-compiled) step: XLA's stateless
            # random numbers differ from the CPU kernel's, and the masks must not depend on the path.
            # The layerwise backward pass multiplies by transposed kernels; they are made here, as
            # inputs, because inside XLA a transpose folds into the product and that product runs
            # 25-50% slower on the CPU.
            feeds = [self.inputs, self.targets, self.weights] + masks + transposed
            if c.xla and mode == TRAIN:
                # Compile the whole step (forward, backward, clipping, Adam) into one XLA cluster:
                # one kernel launch per step instead of thousands of small ops.
                results = tf1.xla.experimental.compile(step, feeds)
            else:
                results = step(*feeds)
            if mode == TRAIN:
                self.loss, self.grad_norm = results
                self.train_op = tf.group(*results, name="train_op")
            else:
                self.loss, self.loss_sum, self.weight_sum, self.logits = results
                self.eval_op = tf.group(*results, name="eval_op")

    def _dropout_masks(self, dropout):
        """[] without dropout, else [input mask (B, T, H), output masks (B, T, layers, H)], scaled by 1/keep.

        One seed per step, derived from (seed, global_step): stateless, so exact on resume.
        """
        if dropout == 0:
            return []
        tf, _ = load()
        c = self.config
        B, T, H, L = self.batch_size, self.seq_length, c.hidden_size, c.num_layers
        keep = 1.0 - dropout
        step_seed = tf.stack([tf.constant(c.seed, tf.int64), tf.cast(self.global_step, tf.int64)])
        input_mask = tf.cast(tf.random.stateless_uniform([B, T, H], step_seed) < keep, tf.float32) / keep
        out_seed = step_seed + tf.constant([0, 1 << 40], tf.int64)
        masks = tf.cast(tf.random.stateless_uniform([B, T, L, H], out_seed) < keep, tf.float32) / keep
        return [input_mask, masks]

    def _forward(self, ids, embedding, initial_state, input_mask=None, masks=None, transposed=()):
        """Embedding and the LSTM stack: (B, T) ids -> (B, T, H) outputs, final state per layer."""
        tf, tf1 = load()
        c = self.config
        if c.rnn_impl == "layerwise":
            return self._layerwise(ids, embedding, initial_state, input_mask, masks, transposed)
        inputs = tf.nn.embedding_lookup(embedding, ids)  # (B, T, H)
        if masks is not None:
            inputs = (inputs * input_mask, masks)
        outputs, final_state = tf1.nn.dynamic_rnn(self._cell, inputs, initial_state=initial_state)
        return (outputs[0] if masks is not None else outputs), final_state

    def _lstm_weights(self):
        """The (kernel (2H, 4H), bias (4H,)) of each layer, by the names LSTMCell gives them."""
        _, tf1 = load()
        H = self.config.hidden_size
        kernels, biases = [], []
        for layer in range(self.config.num_layers):
            with tf1.variable_scope(f"rnn/multi_rnn_cell/cell_{layer}/lstm_cell"):
                kernels.append(tf1.get_variable("kernel", [2 * H, 4 * H],
                                                initializer=tf1.glorot_uniform_initializer()))
                biases.append(tf1.get_variable("bias", [4 * H], initializer=tf1.zeros_initializer()))
        return kernels, biases

    def _transposed_kernels(self):
        """[W_h^T of each layer] + [W_x^T of each layer but the first], for the layerwise backward."""
        tf, _ = load()
        H = self.config.hidden_size
        kernels, _ = self._lstm_weights()
        return ([tf.transpose(k[H:]) for k in kernels] + [tf.transpose(k[:H]) for k in kernels[1:]])

    def _layerwise(self, ids, embedding, initial_state, input_mask, masks, transposed=()):
        """The same LSTM stack, computed one layer at a time (a while_loop over time per layer).

        Exactly the math of LSTMCell (gates i, j, f, o; forget bias 1; tanh) on the same variables,
        so checkpoints are shared with the MultiRNNCell graph. What it saves: each layer's input
        projection is one large matmul over all B*T positions instead of T small ones, and for the
        first layer without input dropout it is a row lookup in embedding @ W_x, (V, 4H). When
        training (``transposed`` given), each layer's backward pass is written out (see
        :func:`lstm_layer`): weight gradients are one large matmul after the loop instead of one
        small matmul and a running sum per time step. Works time-major: (T, B, ...).
        """
        tf, tf1 = load()
        c = self.config
        H, L = c.hidden_size, c.num_layers
        kernels, biases = self._lstm_weights()
        transposed = list(transposed) or None
        ids = tf.transpose(ids)  # (T, B)
        if input_mask is None:
            table = tf.matmul(embedding, kernels[0][:H])  # (V, 4H)
            projected = tf.nn.embedding_lookup(table, ids)  # (T, B, 4H)
        else:
            inputs = tf.nn.embedding_lookup(embedding, ids) * tf.transpose(input_mask, [1, 0, 2])
            projected = tf.tensordot(inputs, kernels[0][:H], 1)  # (T, B, 4H)
        final_state = []
        for layer in range(L):
            recurrent_t = transposed[layer] if transposed else None
            output, cell, hidden = lstm_layer(projected + biases[layer], kernels[layer][H:], recurrent_t,
                                              *initial_state[layer])  # (T, B, H)
            final_state.append(tf1.nn.rnn_cell.LSTMStateTuple(cell, hidden))
            if masks is not None:
                output = output * tf.transpose(masks[:, :, layer], [1, 0, 2])
            if layer + 1 < L:
                if transposed:
                    projected = matmul_pretransposed(output, kernels[layer + 1][:H], transposed[L + layer])
                else:
                    projected = tf.tensordot(output, kernels[layer + 1][:H], 1)  # (T, B, 4H)
        return tf.transpose(output, [1, 0, 2]), tuple(final_state)

    def assign_lr(self, session, value):
        session.run(self._lr_update, {self._new_lr: value})

    def _build_sampler(self, embedding, project):
        """Read a prime, then generate ``num_chars`` characters, in one session.run.

        The prime (all but its last character) goes through dynamic_rnn; the generation loop is
        a tf.while_loop compiled with XLA, which removes the executor's per-op cost that
        dominates at batch 1. Each iteration feeds character ``prev`` and draws the next with a
        stateless draw seeded by (seed, offset + i), so generating in chunks (``offset``
        advanced, the last character as the next prime, ``final_state`` fed back) yields the
        same text as generating all at once.
        """
        tf, tf1 = load()
        H = self.config.hidden_size
        self.prime = tf1.placeholder(tf.int32, [None], "prime")  # (P,), P >= 1
        self.num_chars = tf1.placeholder(tf.int32, [], "num_chars")  # <= MAX_CHUNK
        self.seed = tf1.placeholder_with_default(tf.constant(0, tf.int64), [], "seed")
        self.offset = tf1.placeholder_with_default(tf.constant(0, tf.int64), [], "offset")
        self.temperature = tf1.placeholder_with_default(1.0, [], "temperature")
        self.top_k = tf1.placeholder_with_default(0, [], "top_k")
        self.top_p = tf1.placeholder_with_default(1.0, [], "top_p")
        self.greedy = tf1.placeholder_with_default(False, [], "greedy")
        zero = self._cell.zero_state(1, tf.float32)
        self.initial_state = tf.nest.map_structure(
            lambda t: tf1.placeholder_with_default(t, [1, H]), zero)

        # Read the prime but its last character (which the loop feeds first). A one-character
        # prime runs zero time steps and passes the state through.
        context = tf.nn.embedding_lookup(embedding, self.prime[None, :-1])  # (1, P-1, H)
        _, state = tf1.nn.dynamic_rnn(self._cell, context, initial_state=self.initial_state)
        flat_state = tf.nest.flatten(state)
        kernels, biases = self._lstm_weights()
        # Layer 0's kernel is split once, outside the loop (a slice inside the compiled loop is
        # copied on every iteration); the deeper layers use their whole kernel on [x, h].
        recurrent_weights0 = tf.identity(kernels[0][H:])  # (H, 4H)
        table = tf.matmul(embedding, kernels[0][:H])  # (V, 4H): embedding @ W_x of layer 0

        def generate(filtered, prev, num_chars, noise, temperature, top_k, top_p, *flat):
            inverse_temperature = 1.0 / tf.maximum(temperature, 1e-6)

            def body(i, x, state, generated):
                # LSTMCell's math on its own variables, with the first layer's input projection
                # a row of `table`: at batch 1 the step is bound by reading weights, so this
                # saves a quarter of the bytes per character.
                new_state = []
                for layer, (c, h) in enumerate(state):
                    if layer > 0:
                        gates = tf.matmul(tf.concat([x, h], 1), kernels[layer]) + biases[layer]
                    else:
                        gates = x + tf.matmul(h, recurrent_weights0) + biases[layer]  # (1, 4H)
                    c, x = lstm_update(gates, c)
                    new_state.append(tf1.nn.rnn_cell.LSTMStateTuple(c, x))
                state = tuple(new_state)
                logits = project(x) * inverse_temperature  # (1, V)
                if filtered:
                    logits = filter_logits(logits, top_k, top_p)
                nxt = tf.argmax(logits + noise[i], -1, output_type=tf.int32)  # (1,)
                generated = tf.tensor_scatter_nd_update(generated, [[i]], nxt)
                return i + 1, tf.gather(table, nxt), state, generated

            state = tf.nest.pack_sequence_as(zero, list(flat))
            _, _, state, generated = tf.while_loop(
                lambda i, *_: i < num_chars, body,
                [tf.constant(0), tf.gather(table, prev), state, tf.zeros([MAX_CHUNK], tf.int32)],
                maximum_iterations=MAX_CHUNK)
            return [generated] + tf.nest.flatten(state)

        # Gumbel-max: argmax(logits + Gumbel noise) is a draw from softmax(logits), and unlike
        # stateless_categorical it compiles with XLA. The noise for absolute position p is row
        # p % MAX_CHUNK of a block keyed by (seed, p // MAX_CHUNK), so it depends on (seed, p)
        # alone and generating in chunks gives the same text as one run; a chunk spans at most
        # two blocks. It is drawn before the loop by TensorFlow's own kernels: XLA's CPU log costs
        # more per character than the rest of the sampling. Greedy scales it to 0, and
        # argmax(logits + 0) = argmax(logits).
        V = self.config.vocab_size
        block = self.offset // MAX_CHUNK
        uniform = tf.concat([tf.random.stateless_uniform([MAX_CHUNK, V], tf.stack([self.seed, block + b]),
                                                         minval=1e-20, maxval=1.0)
                             for b in (0, 1)], 0)  # (2 * MAX_CHUNK, V)
        start = tf.cast(self.offset % MAX_CHUNK, tf.int32)
        noise = tf.where(self.greedy, 0.0, 1.0) * -tf.math.log(-tf.math.log(uniform[start:start + MAX_CHUNK]))
        inputs = [tf.reshape(self.prime[-1:], [1]), self.num_chars, noise,
                  self.temperature, self.top_k, self.top_p] + flat_state
        # Two compiled loops, so the common case pays nothing per character for top-k/top-p:
        # `generated` draws from the whole (tempered) distribution, `generated_filtered` applies
        # filter_logits first. XLA compiles each on its first use only.
        for suffix, filtered in (("", False), ("_filtered", True)):
            results = tf1.xla.experimental.compile(
                lambda *args, filtered=filtered: generate(filtered, *args), inputs)
            # (num_chars,). The final state has consumed everything but the last generated
            # character: feed that character as the next chunk's one-character prime with it.
            setattr(self, "generated" + suffix, results[0][:self.num_chars])
            setattr(self, "final_state" + suffix, tf.nest.pack_sequence_as(zero, results[1:]))


def filter_logits(logits, top_k, top_p):
    """Keep the top_k logits (0 = all), then the smallest set with probability >= top_p."""
    tf, _ = load()
    vocab = tf.shape(logits)[-1]
    k = tf.where(top_k > 0, tf.minimum(top_k, vocab), vocab)
    sorted_logits = tf.sort(logits, direction="DESCENDING", axis=-1)
    kth = tf.gather(sorted_logits, k - 1, axis=-1)[..., None]
    logits = tf.where(logits < kth, tf.fill(tf.shape(logits), -1e9), logits)
    sorted_logits = tf.sort(logits, direction="DESCENDING", axis=-1)
    mass_before = tf.cumsum(tf.nn.softmax(sorted_logits), axis=-1, exclusive=True)
    # Every token whose preceding mass is below top_p: the smallest set reaching top_p.
    kept = tf.reduce_sum(tf.cast(mass_before < top_p, tf.int32), axis=-1)
    cutoff = tf.gather(sorted_logits, tf.maximum(kept, 1) - 1, axis=-1, batch_dims=1)[..., None]
    return tf.where(logits < cutoff, tf.fill(tf.shape(logits), -1e9), logits)
