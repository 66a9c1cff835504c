"""Scoring text under a trained model: bits/char, nats/char and perplexity over every character.

The text is laid out in long rows (EvalStream) and read statefully, as in validation, so each
character is predicted from everything before it in its row, not from a fresh state every
``seq_length`` characters.
"""
import functools
import math

from charrnn.corpus import UnknownCharacters, prepare_file
from charrnn.data import EvalStream, format_chars
from charrnn.errors import ConfigError, DataError
from charrnn.model import EvalGraph
from charrnn.rundir import RunDir

DEFAULT_SEQ_LENGTH = 200  # long windows: fewer session.run calls; the state carries across them anyway


def evaluate_stream(session, model, stream):
    """Mean loss in nats/char over every target of ``stream`` (an EvalStream) under ``model``
    (an EvalGraph), carrying state from window to window. Validation during training uses it too,
    so the numbers agree."""
    session.run(model.reset_state_op)
    total, count = 0.0, 0.0
    for k in range(stream.num_batches):
        x, y, w = stream.batch(k)
        loss_sum, weight_sum, _ = session.run([model.loss_sum, model.weight_sum, model.eval_op],
                                              {model.inputs: x, model.targets: y, model.target_weights: w})
        total += loss_sum
        count += weight_sum
    return float(total / count)


def evaluate_text(save_dir, text, which="auto", skip_unknown=False, batch_size=None, seq_length=None,
                  source="the text", log=None):
    """Mean loss of ``text`` (a string) under the model in ``save_dir``.

    Returns a dict: nats_per_char, bits_per_char, perplexity, characters (targets scored, one
    fewer than the characters read), skipped (unknown characters removed) and checkpoint (the
    path restored). ``batch_size`` defaults to the run's, ``seq_length`` to 200; ``source`` names
    the text in errors and ``log`` (a callable taking a string) hears about progress.
    """
    _check_sizes(batch_size, seq_length)
    trained = RunDir(save_dir).open_model(which, log)
    vocab = trained.vocab
    missing = vocab.unknown(text)
    if missing and not skip_unknown:
        raise _unknown_error(source, missing)
    skipped = 0
    if missing:
        kept = text.translate({ord(c): None for c in missing})
        skipped = len(text) - len(kept)
        text = kept
    return _score(trained, vocab.encode(text), skipped, batch_size, seq_length, source, log)


def evaluate_file(save_dir, path, which="auto", skip_unknown=False, batch_size=None, seq_length=None,
                  cache_dir=None, log=None):
    """Mean loss of the UTF-8 file ``path``, read as training reads its text: in one streaming
    pass into memory-mapped ids (cached in ``cache_dir``), never whole. Returns what
    evaluate_text returns."""
    _check_sizes(batch_size, seq_length)
    trained = RunDir(save_dir).open_model(which, log)
    source = f"--text {path}"
    try:
        corpus = prepare_file(path, trained.vocab, cache_dir, skip_unknown, log)
    except UnknownCharacters as e:
        raise _unknown_error(source, e.chars) from None
    return _score(trained, corpus.ids, corpus.skipped, batch_size, seq_length, source, log)


def _check_sizes(batch_size, seq_length):
    for name, value in (("batch_size", batch_size), ("seq_length", seq_length)):
        if value is not None and value <= 0:
            raise ConfigError(f"--{name} must be a positive integer (got {value})")


def _unknown_error(source, missing):
    return DataError(f"{source}: {len(missing)} distinct character(s) the model never saw: "
                     f"{format_chars(missing)}; remove them or pass --skip_unknown")


def _score(trained, ids, skipped, batch_size, seq_length, source, log):
    """Evaluate ``ids`` under ``trained`` (a TrainedModel); the result dict of evaluate_text."""
    if len(ids) < 2:
        removed = f" after removing {skipped:,} unknown character(s)" if skipped else ""
        raise DataError(f"{source}: has {len(ids)} character(s){removed}; scoring needs at least 2 "
                        "(the first character is only context)")
    stream = EvalStream(ids, batch_size or trained.config.batch_size, seq_length or DEFAULT_SEQ_LENGTH)
    # The evaluation graph's state variables are locals: this restores the weights alone.
    session, model = trained.restore(
        functools.partial(EvalGraph, batch_size=stream.batch_size, seq_length=stream.seq_length), log)
    with session:
        if log:
            log(f"scoring {stream.num_targets:,} characters in {stream.batch_size} row(s), "
                f"{stream.num_batches} window(s) of {stream.seq_length}")
        nats = evaluate_stream(session, model, stream)
    return {"nats_per_char": nats, "bits_per_char": nats / math.log(2), "perplexity": math.exp(nats),
            "characters": stream.num_targets, "skipped": skipped, "checkpoint": trained.checkpoint}


def format_result(result):
    """The one-line human-readable summary charrnn-eval prints."""
    return (f"bits/char {result['bits_per_char']:.4f}  nats/char {result['nats_per_char']:.4f}  "
            f"perplexity {result['perplexity']:.3f}  ({result['characters']:,} characters, "
            f"{result['skipped']:,} skipped, checkpoint {result['checkpoint']})")
