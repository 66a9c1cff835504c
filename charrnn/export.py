"""Exporting a trained model as a SavedModel that plain TensorFlow and TF Serving load.

The export graph takes strings and returns strings, with the model's own functions in between:

  generate           prime (string), num_chars, temperature, seed -> text: read_prime, then
                     generate_chunk in a loop over chunks of max_chunk(V), carrying the state, as
                     charrnn-sample does between its session.runs, so the text is the same
  generate_filtered  the same with top_k (0 = off) and top_p (1.0 = off)
  score              text -> nats_per_char, bits_per_char, characters: score_window in a loop over
                     windows of the layout charrnn-eval uses (EvalStream's, built here in-graph)

Bad input (characters the model never saw, an empty prime, num_chars out of range, a negative
temperature, ...) fails the signature with an InvalidArgumentError whose message says what is wrong.
The vocabulary and config travel with it as assets, in the save directory's own formats.
"""
import contextlib
import functools
import math
import os
import shutil
import tempfile

import numpy as np

from charrnn.errors import CheckpointError
from charrnn.evaluate import DEFAULT_SEQ_LENGTH
from charrnn.model import ModelWeights, generate_chunk, max_chunk, read_prime, score_window
from charrnn.rundir import CONFIG_FILE, VOCAB_FILE, RunDir
from charrnn.tfcompat import load

MAX_NUM_CHARS = 100_000  # most characters one generate call may ask for (5 s of a 2x256 model here)
SERVING_TAG = "serve"  # the tag TF Serving and saved_model_cli look for


class ExportGraph:
    """The graph a SavedModel serves, over the model's variables (PTB style: named handles).

    Inputs: ``prime`` and ``text`` (string scalars), ``num_chars`` (int32), ``temperature``
    (float32), ``seed`` (int64), ``top_k`` (int32, default 0) and ``top_p`` (float32, default 1.0).
    Outputs: ``generated`` (prime + generated text, unfiltered), ``generated_filtered`` (top-k/top-p
    applied when asked), ``nats_per_char``, ``bits_per_char`` (float64) and ``characters`` (int64).
    ``saver`` writes the variables the way SavedModel expects (sharded). With ``xla`` the
    generation loop is XLA-compiled, as charrnn-sample's (TF Serving then needs
    ``--xla_cpu_compilation_enabled``); without, TensorFlow's executor runs it, several times slower.
    """

    def __init__(self, config, vocab, asset_paths=(), xla=True):
        tf, tf1 = load()
        self.config, self.xla = config, xla
        weights = ModelWeights(config)
        codepoints = np.array([ord(c) for c in vocab.chars], np.int32)  # id -> code point
        self._codepoints = tf.constant(codepoints)
        order = np.argsort(codepoints, kind="stable")  # code points sorted, with their ids
        self._sorted_codepoints = tf.constant(codepoints[order])
        self._sorted_ids = tf.constant(order.astype(np.int32))

        self.prime = tf1.placeholder(tf.string, [], "prime")
        self.num_chars = tf1.placeholder(tf.int32, [], "num_chars")
        self.temperature = tf1.placeholder(tf.float32, [], "temperature")
        self.seed = tf1.placeholder(tf.int64, [], "seed")
        self.top_k = tf1.placeholder_with_default(0, [], "top_k")
        self.top_p = tf1.placeholder_with_default(1.0, [], "top_p")
        self.text = tf1.placeholder(tf.string, [], "text")

        with tf.name_scope("generate"):
            self.generated = self._generate(weights, filtering=False)
        with tf.name_scope("generate_filtered"):
            self.generated_filtered = self._generate(weights, filtering=True)
        with tf.name_scope("score"):
            self.nats_per_char, self.characters = self._score(weights)
            self.bits_per_char = tf.identity(self.nats_per_char / math.log(2), name="bits_per_char")

        for path in asset_paths:
            tf1.add_to_collection(tf1.GraphKeys.ASSET_FILEPATHS, tf.constant(path, name="asset"))
        self.saver = tf1.train.Saver(sharded=True, allow_empty=True)

    def signature_def_map(self):
        """{name: SignatureDef} of the three signatures (string in, string or numbers out)."""
        _, tf1 = load()
        build = tf1.saved_model.build_signature_def
        info = tf1.saved_model.build_tensor_info
        method = tf1.saved_model.PREDICT_METHOD_NAME
        sampling = {"prime": self.prime, "num_chars": self.num_chars, "temperature": self.temperature,
                    "seed": self.seed}
        filters = {"top_k": self.top_k, "top_p": self.top_p}

        def signature(inputs, outputs):
            return build({k: info(v) for k, v in inputs.items()}, {k: info(v) for k, v in outputs.items()},
                         method)

        return {"generate": signature(sampling, {"text": self.generated}),
                "generate_filtered": signature({**sampling, **filters}, {"text": self.generated_filtered}),
                "score": signature({"text": self.text}, {"nats_per_char": self.nats_per_char,
                                                         "bits_per_char": self.bits_per_char,
                                                         "characters": self.characters})}

    # ------------------------------------------------------------------ text <-> ids

    def _encode(self, text, name):
        """(ids (N,) int32, code points (N,), check): ``text`` (a UTF-8 string scalar) as ids; the
        check fails on invalid UTF-8 or on characters the model never saw (naming them)."""
        tf, _ = load()
        codes = tf.strings.unicode_decode(text, "UTF-8", errors="replace")  # (N,); U+FFFD where invalid
        # Valid UTF-8, and only valid UTF-8, comes back unchanged (the decoder's own error does
        # not say which input was wrong).
        valid = _check(f"{name}_is_utf8", tf.equal(tf.strings.unicode_encode(codes, "UTF-8"), text),
                       f"{name} is not valid UTF-8")
        position = tf.minimum(tf.searchsorted(self._sorted_codepoints, codes, out_type=tf.int32),
                              tf.size(self._sorted_codepoints) - 1)
        known = tf.equal(tf.gather(self._sorted_codepoints, position), codes)
        unknown = tf.unique(tf.boolean_mask(codes, tf.logical_not(known))).y
        message = tf.strings.join([f"{name} has characters the model never saw: ",
                                   _describe_codepoints(unknown)])
        with tf.control_dependencies([valid]):
            check = _check(f"{name}_is_known", tf.reduce_all(known), message)
        return tf.gather(self._sorted_ids, position), codes, check

    def _decode(self, ids):
        tf, _ = load()
        return tf.strings.unicode_encode(tf.gather(self._codepoints, ids), "UTF-8")

    # ------------------------------------------------------------------ generate

    def _generate(self, weights, filtering):
        """prime + num_chars generated characters, as charrnn-sample prints them."""
        tf, tf1 = load()
        scope = "generate_filtered" if filtering else "generate"
        ids, codes, known = self._encode(self.prime, "prime")
        n, temperature = self.num_chars, self.temperature
        checks = [known,
                  _check("prime_not_empty", tf.size(codes) > 0,
                         "prime is empty: give at least one character to start from"),
                  _check("num_chars_in_range", (n >= 0) & (n <= MAX_NUM_CHARS),
                         tf.strings.join(["num_chars must be in [0, ", str(MAX_NUM_CHARS), "] (got ",
                                          tf.strings.as_string(n), ")"])),
                  _check("temperature_valid", tf.math.is_finite(temperature) & (temperature >= 0),
                         tf.strings.join(["temperature must be 0 (greedy) or a finite positive number (got ",
                                          tf.strings.as_string(temperature), ")"]))]
        top_k, top_p = (self.top_k, self.top_p) if filtering else (tf.constant(0), tf.constant(1.0))
        if filtering:
            checks += [_check("top_k_valid", top_k >= 0, tf.strings.join(
                           ["top_k must be 0 (off) or positive (got ", tf.strings.as_string(top_k), ")"])),
                       _check("top_p_valid", (top_p > 0) & (top_p <= 1), tf.strings.join(
                           ["top_p must be in (0, 1], 1.0 = off (got ", tf.strings.as_string(top_p), ")"]))]
        with tf.control_dependencies(checks):  # every input passes its checks before it is used
            ids, n, temperature, top_k, top_p = (tf.identity(t) for t in (ids, n, temperature, top_k, top_p))
        greedy = tf.equal(temperature, 0.0)  # as charrnn-sample's --temperature 0
        temperature = tf.where(greedy, 1.0, temperature)
        # charrnn-sample runs the filtering loop only when a filter is on (it sorts the vocabulary
        # for every character, and top_p 1.0 may still drop a character by rounding).
        use_filter = (top_k > 0) | (top_p < 1.0)

        zero = weights.cell_stack().zero_state(1, tf.float32)
        state = read_prime(weights, ids, zero)
        size = max_chunk(weights.config.vocab_size)  # the sampler's chunk, so the noise is the same
        num_chunks = (n + size - 1) // size

        def chunk(k, prev, state, pieces):
            offset = k * size
            count = tf.minimum(size, n - offset)
            args = [prev, count, self.seed, tf.cast(offset, tf.int64), temperature, top_k, top_p, greedy,
                    state]
            def compiled(filtered):
                # XLA's pass groups ops by their cluster's name, and each function body (this
                # loop's, a cond's branches) names its first cluster "cluster": a name scope per
                # call site keeps the loops of both signatures and both branches apart.
                with tf.name_scope(f"{scope}_{'filtered' if filtered else 'unfiltered'}"):
                    return generate_chunk(weights, *args, filtered=filtered, xla=self.xla)

            if filtering:
                generated, state = tf.cond(use_filter, lambda: compiled(True), lambda: compiled(False))
                generated = tf.reshape(generated, [-1])  # (count,): the cond loses the shape
            else:
                generated, state = compiled(False)
            # The last character is fed first in the next chunk, as charrnn-sample re-feeds it.
            return k + 1, tf.reshape(generated[-1:], [1]), state, pieces.write(k, generated)

        pieces = tf.TensorArray(tf.int32, size=num_chunks, infer_shape=False, element_shape=[None])
        _, _, _, pieces = tf1.while_loop(lambda k, *_: k < num_chunks, chunk,
                                         [tf.constant(0), tf.reshape(ids[-1:], [1]), state, pieces])
        return tf.strings.join([self.prime, self._decode(pieces.concat())], name="text")

    # ------------------------------------------------------------------ score

    def _score(self, weights):
        """(nats/char (float64), characters scored (int64)) of ``text``, as charrnn-eval computes them."""
        tf, tf1 = load()
        ids, codes, known = self._encode(self.text, "text")
        with tf.control_dependencies([known, _check("text_long_enough", tf.size(codes) >= 2, tf.strings.join(
                ["text has ", tf.strings.as_string(tf.size(codes)),
                 " character(s); scoring needs at least 2 (the first character is only context)"]))]):
            ids = tf.identity(ids)
        x, y, w = eval_layout(ids, self.config.batch_size, DEFAULT_SEQ_LENGTH)  # (B, W) each
        T = DEFAULT_SEQ_LENGTH
        num_windows = tf.shape(x)[1] // T
        state = weights.cell_stack().zero_state(tf.shape(x)[0], tf.float32)

        def window(k, state, loss_total, weight_total):
            cut = slice(k * T, (k + 1) * T)
            _, (_, loss_sum, weight_sum), state = score_window(self.config, weights, x[:, cut], y[:, cut],
                                                               w[:, cut], state)
            # Summed in float64 across windows, as charrnn-eval sums them in Python.
            return (k + 1, state, loss_total + tf.cast(loss_sum, tf.float64),
                    weight_total + tf.cast(weight_sum, tf.float64))

        zero = tf.constant(0.0, tf.float64)
        _, _, loss_total, weight_total = tf1.while_loop(lambda k, *_: k < num_windows, window,
                                                        [tf.constant(0), state, zero, zero])
        return (tf.identity(loss_total / weight_total, name="nats_per_char"),
                tf.cast(tf.size(ids) - 1, tf.int64, name="characters"))


def eval_layout(ids, batch_size, seq_length):
    """EvalStream's layout of ``ids`` (N,) as tensors: inputs, targets (B, W) int32 and weights
    (B, W) float32, B = min(batch_size, N - 1) contiguous rows padded to W, a multiple of
    ``seq_length``; padding is 0 with weight 0. tests/test_export.py checks it against EvalStream."""
    tf, _ = load()
    num_targets = tf.size(ids) - 1
    rows = tf.minimum(batch_size, num_targets)
    row_length = (num_targets + rows - 1) // rows
    width = (row_length + seq_length - 1) // seq_length * seq_length
    column = tf.range(width)[None, :]  # (1, W)
    position = tf.range(rows)[:, None] * row_length + column  # (B, W) index of each input in ids
    valid = (column < row_length) & (position < num_targets)
    x = tf.where(valid, tf.gather(ids, tf.minimum(position, num_targets)), 0)
    y = tf.where(valid, tf.gather(ids, tf.minimum(position + 1, num_targets)), 0)
    return x, y, tf.cast(valid, tf.float32)


def _check(name, condition, message):
    """An assertion that fails the signature with InvalidArgumentError: ``message``."""
    tf, _ = load()
    return tf.debugging.Assert(condition, [message], name=name)


def _describe_codepoints(codes):
    """Q (U+0051), U+0007, ... for (K,) int32 code points: the character itself where printable."""
    tf, _ = load()
    digits = tf.constant(list("0123456789ABCDEF"))
    wide = codes > 0xFFFF
    nibbles = tf.stack([tf.bitwise.bitwise_and(tf.bitwise.right_shift(codes, shift), 15) for shift in (20, 16, 12, 8, 4, 0)], 1)  # (K, 6)
    hex6 = tf.strings.reduce_join(tf.gather(digits, nibbles), axis=1)
    hex_code = tf.where(wide, hex6, tf.strings.substr(hex6, 2, 4))
    control = (codes < 0x20) | ((codes >= 0x7F) & (codes < 0xA0))
    # No quotes: the assertion's message escapes them.
    literal = tf.strings.join([tf.strings.unicode_encode(codes[:, None], "UTF-8"), " "])
    code = tf.strings.join(["U+", hex_code])
    shown = tf.where(control, code, tf.strings.join([literal, "(", code, ")"]))
    return tf.strings.reduce_join(shown, separator=", ")


# ---------------------------------------------------------------------- writing it out

def next_version_dir(base):
    """``base``/N for the next free number N (1 if none): the layout TF Serving watches."""
    versions = [int(name) for name in os.listdir(base) if name.isascii() and name.isdigit()]
    return os.path.join(base, str(max(versions, default=0) + 1))


def export(save_dir, out, which="auto", xla=True, log=None):
    """Write the model in ``save_dir`` (checkpoint ``which``) as a SavedModel in ``out``/N, the
    next free version number; return that path. ``xla``: see ExportGraph. A failed export leaves nothing behind: it is
    written beside the versions under a dot-name (TF Serving ignores those) and renamed when done."""
    tf, tf1 = load()
    if os.path.exists(out) and not os.path.isdir(out):
        raise CheckpointError(f"--out {out}: is a file; give a folder (the SavedModel goes into --out/N)")
    trained = RunDir(save_dir).open_model(which, log)
    created = not os.path.exists(out)
    try:
        os.makedirs(out, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".export-", dir=out)
    except OSError as e:
        raise CheckpointError(f"--out {out}: not writable ({e.strerror}); choose another folder or fix "
                              "its permissions")
    try:
        assets = os.path.join(staging, "assets")
        os.makedirs(assets)
        RunDir(assets).write_config_and_vocab(trained.config, trained.vocab)
        build = functools.partial(ExportGraph, vocab=trained.vocab, xla=xla,
                                  asset_paths=[os.path.join(assets, name) for name in (CONFIG_FILE, VOCAB_FILE)])
        session, graph = trained.restore(build, log, finalize=False)
        model_dir = os.path.join(staging, "model")
        with session:
            builder = tf1.saved_model.Builder(model_dir)
            builder.add_meta_graph_and_variables(
                session, [SERVING_TAG], signature_def_map=graph.signature_def_map(),
                assets_collection=session.graph.get_collection(tf1.GraphKeys.ASSET_FILEPATHS),
                saver=graph.saver, strip_default_attrs=True)
            builder.save()
        while True:  # another export may take a number between our listing and our rename
            version = next_version_dir(out)
            try:
                os.rename(model_dir, version)
                break
            except OSError:
                if not os.path.exists(version):
                    raise
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(out)
        if isinstance(e, (OSError, tf.errors.OpError)):
            reason = getattr(e, "strerror", None) or (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise CheckpointError(f"--out {out}: could not write the SavedModel ({reason[:200]}); "
                                  "nothing was exported")
        raise
    shutil.rmtree(staging, ignore_errors=True)
    if log:
        log(f"exported {trained.checkpoint} to {version}")
    return version
