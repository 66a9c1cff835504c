"""The LSTM math, apart from the graphs that use it (as torch-rnn keeps LSTM.lua apart).

LSTMCell's gate layout and forget bias (:func:`lstm_activations`), its state update
(:func:`lstm_update`, with ``--layer_norm``'s normalized cell), layer normalization
(:func:`layer_norm`), zoneout's (:func:`zone_out`), GRUCell's and BasicRNNCell's
(:func:`gru_update`, :func:`rnn_update`: the cells of ``--model gru`` and ``--model rnn``), a whole
layer over time with its backward pass written out (:func:`lstm_layer`), the product whose
gradient uses a pretransposed weight (:func:`matmul_pretransposed`) and the top-k/top-p filter on
logits (:func:`filter_logits`).
charrnn/model.py assembles the training, evaluation and sampling graphs from these; the default
training graph uses LSTMCell itself, and tests check that both agree.
"""
from charrnn.tfcompat import load


def lstm_activations(gates):
    """LSTMCell's gate activations from its pre-activations (B, 4H): input i, candidate j,
    forget f (forget bias 1) and output o, each (B, H)."""
    tf, _ = load()
    i, j, f, o = tf.split(gates, 4, axis=1)
    return tf.sigmoid(i), tf.tanh(j), tf.sigmoid(f + 1.0), tf.sigmoid(o)


def lstm_update(gates, cell, cell_norm=None):
    """LSTMCell's state update from its pre-activations (B, 4H): the new (cell, hidden).

    The layerwise training graph and the sampler use it on LSTMCell's own variables, so their
    math is the cell's exactly (tests compare both against it). ``cell_norm``, --layer_norm's
    (gain, shift) of the cell, (H,) each: the hidden state is o * tanh(LN(c)), while the cell
    itself is carried unnormalized (Ba et al. 2016's LSTM equations).
    """
    tf, _ = load()
    i, j, f, o = lstm_activations(gates)
    cell = f * cell + i * j
    return cell, o * tf.tanh(cell if cell_norm is None else layer_norm(cell, *cell_norm))


LAYER_NORM_EPSILON = 1e-5


def normalize(v):
    """Layer normalization's standardization of v (..., N) over its last axis: (xhat, 1 / sigma),
    xhat = (v - mean) / sigma with sigma = sqrt(variance + LAYER_NORM_EPSILON), (..., N) and (..., 1)."""
    tf, _ = load()
    mean, variance = tf.nn.moments(v, axes=[-1], keepdims=True)
    inverse_sigma = tf.math.rsqrt(variance + LAYER_NORM_EPSILON)
    return (v - mean) * inverse_sigma, inverse_sigma


def layer_norm(v, gain, shift):
    """Layer normalization (Ba, Kiros & Hinton 2016) of v (..., N), statistics per row over the
    last axis: gain * (v - mean) / sigma + shift, gain and shift (N,)."""
    return gain * normalize(v)[0] + shift


def layer_norm_backward(d_y, gain, xhat, inverse_sigma):
    """The gradient of layer_norm's input from its output's d_y (..., N), given the forward
    pass's ``xhat`` and ``inverse_sigma`` (see :func:`normalize`): with dxhat = d_y * gain,
    (1 / sigma) * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), means over the last axis.
    (The gain's and shift's gradients are sums of d_y * xhat and d_y; callers sum them once.)"""
    tf, _ = load()
    d_xhat = d_y * gain
    return inverse_sigma * (d_xhat - tf.reduce_mean(d_xhat, -1, keepdims=True)
                            - xhat * tf.reduce_mean(d_xhat * xhat, -1, keepdims=True))


def zone_out(previous, new, preserve):
    """Zoneout (Krueger et al. 2016) of a state, (B, H): ``previous`` where ``preserve`` is 1 and
    ``new`` where it is 0, for training's Bernoulli masks; with ``preserve`` the rate p (a float),
    the expectation p * previous + (1 - p) * new that evaluation and sampling use (the paper's
    test-time rule). ``new`` itself when ``preserve`` is None or 0, without an op: zoneout off
    leaves the graph as it was."""
    if preserve is None or (isinstance(preserve, (int, float)) and preserve == 0):
        return new
    return preserve * previous + (1.0 - preserve) * new


def gru_update(inputs, hidden, recurrent_gates, recurrent_candidate, gates_bias, candidate_bias):
    """GRUCell's state update, the new hidden (B, H): ``inputs`` (B, 3H) are the input's products
    with the input rows of the gates kernel (2H columns: reset r, update u) and of the candidate
    kernel (H columns), without biases; ``recurrent_gates`` (H, 2H) and ``recurrent_candidate``
    (H, H) are those kernels' recurrent rows. GRUCell multiplies [x, h] by the whole kernels;
    the split lets the sampler take the input part as a row of a table."""
    tf, _ = load()
    H = hidden.shape[-1]
    input_gates, input_candidate = inputs[:, :2 * H], inputs[:, 2 * H:]  # (B, 2H), (B, H)
    reset, update = tf.split(tf.sigmoid(input_gates + tf.matmul(hidden, recurrent_gates) + gates_bias), 2, axis=1)
    candidate = tf.tanh(input_candidate + tf.matmul(reset * hidden, recurrent_candidate) + candidate_bias)
    return update * hidden + (1.0 - update) * candidate


def rnn_update(inputs, hidden, recurrent, bias):
    """BasicRNNCell's state update, the new hidden (B, H): tanh(``inputs`` (B, H), the input's
    product with the kernel's input rows, + hidden @ ``recurrent`` (H, H) + bias)."""
    tf, _ = load()
    return tf.tanh(inputs + tf.matmul(hidden, recurrent) + bias)


def lstm_layer(projected, recurrent, recurrent_t, cell, hidden, bias, preserve=(None, None), norms=None):
    """One LSTM layer over time: projected (T, B, 4H) input pre-activations, recurrent (H, 4H),
    initial state (B, H) each, bias (4H,) -> outputs (T, B, H), final cell, final hidden.
    The gates are projected[t] + h @ recurrent + bias: the bias is added in the loop, so that
    ``projected``'s own buffer is the one the loop overwrites (see below), without a pass that
    makes a biased copy of it first.

    With ``recurrent_t`` (recurrent transposed, (4H, H)) the gradient is written out instead of
    derived by TensorFlow from the loop: a reverse loop carries (dh, dc) and multiplies by
    ``recurrent_t`` (a plain product; TF's derived loop multiplies by the transpose in place, which
    XLA runs 25-50% slower on this CPU), and the recurrent weights' gradient is one (H, T*B) @ (T*B, 4H)
    product after the loop instead of a small product plus a running sum at every time step.
    The math is lstm_update's; tests compare every gradient with TensorFlow's own.

    ``preserve`` is zoneout's (cell, hidden) pair (see :func:`zone_out`), each None (off), a rate
    (the expectation: evaluation) or a (T, B, H) mask of 0 and 1 (training). As in the paper's
    equations, the candidate hidden state is o * tanh(candidate cell), the cell *before* zoneout
    (c~ = f * c + i * j; a unit whose cell is preserved still updates its hidden from c~), and
    the layer outputs the zoned hidden state, which is also what it carries.

    ``norms`` is --layer_norm's (recurrent gain, recurrent shift (4H,), cell gain, cell shift
    (H,)), or None: the gates are then ``projected`` (whose input part the caller has normalized)
    + LN(h @ recurrent), and the candidate hidden state o * tanh(LN(c~)) (see :func:`lstm_update`).
    """
    tf, _ = load()
    T = tf.shape(projected)[0]
    steps = tf.TensorArray(tf.float32, size=T).unstack(projected)
    preserve_cell, preserve_hidden = preserve

    def at(mask, t):  # a mask's (B, H) slice at time t; a rate or None as it is
        return mask[t] if isinstance(mask, tf.Tensor) else mask

    if recurrent_t is None:
        recurrent_norm, cell_norm = (None, None) if norms is None else (norms[:2], norms[2:])

        def body(t, cell, hidden, outputs):
            product = tf.matmul(hidden, recurrent)  # (B, 4H)
            if recurrent_norm is not None:
                product = layer_norm(product, *recurrent_norm)
            gates = steps.read(t) + product
            new_cell, new_hidden = lstm_update(gates + bias, cell, cell_norm)
            cell = zone_out(cell, new_cell, at(preserve_cell, t))
            hidden = zone_out(hidden, new_hidden, at(preserve_hidden, t))
            return t + 1, cell, hidden, outputs.write(t, hidden)

        _, cell, hidden, outputs = tf.while_loop(
            lambda t, *_: t < T, body, [tf.constant(0), cell, hidden, tf.TensorArray(tf.float32, size=T)])
        return outputs.stack(), cell, hidden

    # With the cell zoned out, the backward pass needs the candidate cells c~ (for tanh and the
    # output gate) beside the carried ones (for the forget gate): one more array, only then.
    # With layer norm, it also needs the raw recurrent products h @ W_h (for their statistics).
    keep_candidates = preserve_cell is not None
    normalized = norms is not None

    @tf.custom_gradient
    def layer(projected, recurrent, recurrent_t, cell0, hidden0, bias, *norms):
        recurrent_norm, cell_norm = (norms[:2], norms[2:]) if normalized else (None, None)

        # The activations overwrite the input pre-activations step by step, in the array that
        # holds them: under XLA the loop then updates `projected`'s own buffer in place instead of
        # a new (T, B, 4H) array that is zero-filled and copied every step.
        def body(t, cell, hidden, outputs, cells, activations, *extra):
            product = tf.matmul(hidden, recurrent)  # (B, 4H)
            gates = activations.read(t) + (layer_norm(product, *recurrent_norm) if normalized else product) + bias
            i, j, f, o = lstm_activations(gates)
            candidate = f * cell + i * j  # lstm_update's, keeping the activations for the backward pass
            new_hidden = o * tf.tanh(layer_norm(candidate, *cell_norm) if normalized else candidate)
            cell = zone_out(cell, candidate, at(preserve_cell, t))
            hidden = zone_out(hidden, new_hidden, at(preserve_hidden, t))
            extra = list(extra)
            if keep_candidates:
                extra[0] = extra[0].write(t, candidate)
            if normalized:
                extra[-1] = extra[-1].write(t, product)
            return (t + 1, cell, hidden, outputs.write(t, hidden), cells.write(t, cell),
                    activations.write(t, tf.concat([i, j, f, o], 1))) + tuple(extra)

        arrays = [tf.TensorArray(tf.float32, size=T) for _ in range(2)] + [steps] + [
            tf.TensorArray(tf.float32, size=T) for _ in range(keep_candidates + normalized)]
        _, cell, hidden, outputs, cells, activations, *extra = tf.while_loop(
            lambda t, *_: t < T, body, [tf.constant(0), cell0, hidden0] + arrays)
        outputs, cells, activations = outputs.stack(), cells.stack(), activations.stack()
        candidates = extra[0].stack() if keep_candidates else cells  # (T, B, H): c~

        def grad(d_outputs, d_cell, d_hidden):
            d_outputs = tf.zeros_like(outputs) if d_outputs is None else d_outputs
            d_cell = tf.zeros_like(cell0) if d_cell is None else d_cell
            d_hidden = tf.zeros_like(hidden0) if d_hidden is None else d_hidden
            # Everything that does not depend on the carried (dh, dc) is computed for all time
            # steps at once, so the reverse loop is one product and one small fusion per step.
            previous_cells = tf.concat([cell0[None], cells[:-1]], 0)  # (T, B, H)
            if normalized:
                # The layer norms' statistics, recomputed from their inputs for all steps at once.
                products = extra[-1].stack()  # (T, B, 4H): h @ W_h before its norm
                recurrent_xhat, recurrent_inverse_sigma = normalize(products)  # (T, B, 4H), (T, B, 1)
                cell_xhat, cell_inverse_sigma = normalize(candidates)  # (T, B, H), (T, B, 1)
                tanh_cells = tf.tanh(cell_norm[0] * cell_xhat + cell_norm[1])
            else:
                tanh_cells = tf.tanh(candidates)
            i, j, f, o = tf.split(activations, 4, axis=2)
            h_to_c = o * (1.0 - tanh_cells * tanh_cells)  # dc += dh * h_to_c (with LN: d LN(c~))
            # d_gates = [dc, dc, dc, dh] * local, the activations' derivatives times their partners
            local = tf.concat([j * i * (1.0 - i), i * (1.0 - j * j), previous_cells * f * (1.0 - f),
                               tanh_cells * o * (1.0 - o)], 2)  # (T, B, 4H)
            # d_gates overwrites local[t] in its own array, as the forward loop's activations do.
            d_steps = tf.TensorArray(tf.float32, size=T).unstack(local)
            H = tf.shape(hidden0)[1]
            is_output = tf.range(4 * H) >= 3 * H  # (4H,): the output gate's columns
            # With LN, also d(h @ W_h) (before its norm: W_h's gradient) and d LN(c~) per step.
            d_arrays = [tf.TensorArray(tf.float32, size=T) for _ in range(2 if normalized else 0)]

            def back(k, d_hidden, d_cell, d_steps, *d_arrays):
                t = T - 1 - k
                d_h = d_outputs[t] + d_hidden
                # Zoneout: h = p_h * h_prev + (1 - p_h) * h~, c likewise, so h~ and c~ get the
                # (1 - p) part of the state's gradient and h_prev, c_prev the p part directly.
                # Without it (p None) these are the plain LSTM's lines, adding no op.
                p_h, p_c = at(preserve_hidden, t), at(preserve_cell, t)
                d_new_h = d_h if p_h is None else (1.0 - p_h) * d_h  # d h~
                d_c = d_cell if p_c is None else (1.0 - p_c) * d_cell  # d c~, the carried part
                if normalized:
                    d_cell_norm = d_new_h * h_to_c[t]  # d LN(c~), (B, H)
                    d_c += layer_norm_backward(d_cell_norm, cell_norm[0], cell_xhat[t], cell_inverse_sigma[t])
                else:
                    d_c += d_new_h * h_to_c[t]
                # [dc, dc, dc, dh] * local[t], as a broadcast select: XLA fuses it into the product
                # with local[t], where a concatenation was a separate pass over (B, 4H).
                d_gates = tf.where(is_output, tf.tile(d_new_h, [1, 4]), tf.tile(d_c, [1, 4])) * d_steps.read(t)
                d_product = d_gates  # d (h @ W_h)
                if normalized:
                    d_product = layer_norm_backward(d_gates, recurrent_norm[0], recurrent_xhat[t],
                                                    recurrent_inverse_sigma[t])
                    d_arrays = (d_arrays[0].write(t, d_product), d_arrays[1].write(t, d_cell_norm))
                d_hidden = tf.matmul(d_product, recurrent_t)
                d_hidden = d_hidden if p_h is None else d_hidden + p_h * d_h
                d_cell = d_c * f[t] if p_c is None else d_c * f[t] + p_c * d_cell
                return (k + 1, d_hidden, d_cell, d_steps.write(t, d_gates)) + tuple(d_arrays)

            _, d_hidden, d_cell, d_steps, *d_arrays = tf.while_loop(
                lambda k, *_: k < T, back, [tf.constant(0), d_hidden, d_cell, d_steps] + d_arrays)
            d_steps = d_steps.stack()  # (T, B, 4H): the gradient of `projected`
            d_products = d_arrays[0].stack() if normalized else d_steps  # (T, B, 4H)
            previous_hidden = tf.concat([hidden0[None], outputs[:-1]], 0)  # (T, B, H)
            d_recurrent = tf.matmul(tf.reshape(previous_hidden, [-1, H]),
                                    tf.reshape(d_products, [-1, 4 * H]), transpose_a=True)
            d_bias = tf.reduce_sum(d_steps, [0, 1])  # also the recurrent shift's: both add to the gates
            d_extra = [d_bias]
            if normalized:  # the gains' and shifts' gradients: sums over time and batch
                d_cell_norms = d_arrays[1].stack()  # (T, B, H)
                d_extra += [tf.reduce_sum(d_steps * recurrent_xhat, [0, 1]), d_bias,
                            tf.reduce_sum(d_cell_norms * cell_xhat, [0, 1]), tf.reduce_sum(d_cell_norms, [0, 1])]
            return [d_steps, d_recurrent, None, d_cell, d_hidden] + d_extra

        return (outputs, cell, hidden), grad

    return layer(projected, recurrent, recurrent_t, cell, hidden, bias, *(norms or ()))


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
