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
            self.initial_state = tuple(tf1.nn.rnn_cell.LSTMStateTuple(cv.read_value(), hv.read_value())
                                       for cv, hv in self._state_vars)

            inputs = tf.nn.embedding_lookup(embedding, self.inputs)  # (B, T, H)
            if dropout > 0:
                keep = 1.0 - dropout
                # One seed per step, derived from (seed, global_step): stateless, so exact on resume.
                step_seed = tf.stack([tf.constant(c.seed, tf.int64), tf.cast(self.global_step, tf.int64)])
                input_mask = tf.random.stateless_uniform([batch_size, seq_length, H], step_seed) < keep
                inputs = inputs * tf.cast(input_mask, tf.float32) / keep
                out_seed = step_seed + tf.constant([0, 1 << 40], tf.int64)
                out_mask = tf.random.stateless_uniform([batch_size, seq_length, L, H], out_seed) < keep
                inputs = (inputs, tf.cast(out_mask, tf.float32) / keep)
            outputs, final_state = tf1.nn.dynamic_rnn(self._cell, inputs, initial_state=self.initial_state)
            if dropout > 0:
                outputs = outputs[0]
            self.final_state = final_state
            self.logits = project(outputs)  # (B, T, V)
            self.loss, self.loss_sum, self.weight_sum = sequence_loss(
                self.logits, self.targets, self.weights)

            self.reset_state_op = tf.group(*[v.assign(tf.zeros_like(v)) for pair in self._state_vars
                                             for v in pair], name="reset_state")
            self.update_state_op = tf.group(
                *[v.assign(t) for pair, s in zip(self._state_vars, final_state)
                  for v, t in zip(pair, (s.c, s.h))], name="update_state")

            if mode == TRAIN:
                self._build_train_op()
            else:
                self.eval_op = self.update_state_op

    def _build_train_op(self):
        tf, tf1 = load()
        c = self.config
        self.lr = tf1.get_variable("learning_rate", [], initializer=tf1.constant_initializer(c.learning_rate),
                                   trainable=False)
        self._new_lr = tf1.placeholder(tf.float32, [], "new_learning_rate")
        self._lr_update = self.lr.assign(self._new_lr)
        params = tf1.trainable_variables()
        grads = tf.gradients(self.loss, params)
        clipped, self.grad_norm = tf.clip_by_global_norm(grads, c.grad_clip)
        optimizer = tf1.train.AdamOptimizer(self.lr)
        apply = optimizer.apply_gradients(zip(clipped, params), global_step=self.global_step)
        self.train_op = tf.group(apply, self.update_state_op, name="train_op")

    def assign_lr(self, session, value):
        session.run(self._lr_update, {self._new_lr: value})

    def _build_sampler(self, embedding, project):
        """A tf.while_loop that reads a prime and then samples, all in one session.run.

        Iteration i feeds character ``prev`` and picks the next: for i < len(prime) - 1 it is
        forced to prime[i + 1] (reading the prime), afterwards it is sampled with a stateless
        draw seeded by (seed, offset + j), j counting generated characters. So generating in
        chunks, with ``offset`` advanced, yields the same text as generating all at once.
        """
        tf, tf1 = load()
        H, L = self.config.hidden_size, self.config.num_layers
        self.prime = tf1.placeholder(tf.int32, [None], "prime")  # (P,), P >= 1
        self.num_chars = tf1.placeholder(tf.int32, [], "num_chars")
        self.seed = tf1.placeholder_with_default(tf.constant(0, tf.int64), [], "seed")
        self.offset = tf1.placeholder_with_default(tf.constant(0, tf.int64), [], "offset")
        self.temperature = tf1.placeholder_with_default(1.0, [], "temperature")
        self.top_k = tf1.placeholder_with_default(0, [], "top_k")
        self.top_p = tf1.placeholder_with_default(1.0, [], "top_p")
        self.greedy = tf1.placeholder_with_default(False, [], "greedy")
        zero = self._cell.zero_state(1, tf.float32)
        self.initial_state = tf.nest.map_structure(
            lambda t: tf1.placeholder_with_default(t, [1, H]), zero)

        num_forced = tf.shape(self.prime)[0] - 1
        total = num_forced + self.num_chars

        def body(i, prev, state, generated):
            with tf1.variable_scope("rnn"):  # the scope dynamic_rnn gives the weights
                output, new_state = self._cell(tf.nn.embedding_lookup(embedding, prev), state)  # (1, H)
            logits = filter_logits(project(output), self.temperature, self.top_k, self.top_p)  # (1, V)
            j = tf.cast(i - num_forced, tf.int64)
            draw = tf.random.stateless_categorical(
                logits, 1, tf.stack([self.seed, self.offset + j]), dtype=tf.int32)[:, 0]
            picked = tf.where(self.greedy, tf.argmax(logits, -1, output_type=tf.int32), draw)
            forced = tf.gather(self.prime, tf.minimum(i + 1, num_forced))[None]
            nxt = tf.where(i < num_forced, forced, picked)
            return i + 1, nxt, new_state, generated.write(i, nxt[0])

        _, last, self.final_state, generated = tf.while_loop(
            lambda i, *_: i < total, body,
            [tf.constant(0), self.prime[:1], self.initial_state,
             tf.TensorArray(tf.int32, size=total, element_shape=[])],
            maximum_iterations=None)
        # The final state has consumed everything but the last generated character: feed that
        # character as the next chunk's one-character prime with this state.
        self.generated = generated.stack()[num_forced:]  # (num_chars,)


def filter_logits(logits, temperature, top_k, top_p):
    """Scale by temperature, then keep the top_k (0 = all) and the top_p nucleus (1 = all)."""
    tf, _ = load()
    logits = logits / tf.maximum(temperature, 1e-6)
    vocab = tf.shape(logits)[-1]
    k = tf.where(top_k > 0, tf.minimum(top_k, vocab), vocab)
    sorted_logits = tf.sort(logits, direction="DESCENDING", axis=-1)
    kth = tf.gather(sorted_logits, k - 1, axis=-1)[..., None]
    logits = tf.where(logits < kth, tf.fill(tf.shape(logits), -1e9), logits)
    sorted_logits = tf.sort(logits, direction="DESCENDING", axis=-1)
    mass_before = tf.cumsum(tf.nn.softmax(sorted_logits), axis=-1, exclusive=True)
    # The smallest set whose mass reaches top_p: every token whose preceding mass is below top_p.
    kept = tf.reduce_sum(tf.cast(mass_before < top_p, tf.int32), axis=-1)
    cutoff = tf.gather(sorted_logits, tf.maximum(kept, 1) - 1, axis=-1, batch_dims=1)[..., None]
    return tf.where(logits < cutoff, tf.fill(tf.shape(logits), -1e9), logits)
