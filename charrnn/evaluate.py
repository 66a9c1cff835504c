"""Scoring text under a trained model: bits/char, nats/char and perplexity over every character.

The text is laid out in long rows (EvalStream) and read statefully, as in validation, so each
character is predicted from everything before it in its row, not from a fresh state every
``seq_length`` characters.
"""
import math

from charrnn import checkpoint
from charrnn.config import load_config
from charrnn.data import EvalStream, Vocab, format_chars
from charrnn.errors import ConfigError, DataError
from charrnn.model import EVAL, CharRNN
from charrnn.sample import resolve_checkpoint
from charrnn.tfcompat import load, session_config
from charrnn.train import evaluate  # the loop validation uses, so the numbers agree with it

DEFAULT_SEQ_LENGTH = 200  # long windows: fewer session.run calls; the state carries across them anyway


def evaluate_text(save_dir, text, which="auto", skip_unknown=False, batch_size=None, seq_length=None,
                  source="the text", log=None):
    """Mean loss of ``text`` under the model in ``save_dir``.

    Returns a dict: nats_per_char, bits_per_char, perplexity, characters (targets scored, one
    fewer than the characters read), skipped (unknown characters removed) and checkpoint (the
    path restored). ``batch_size`` defaults to the run's, ``seq_length`` to 200; ``source`` names
    the text in errors and ``log`` (a callable taking a string) hears about progress.
    """
    tf, tf1 = load()
    for name, value in (("batch_size", batch_size), ("seq_length", seq_length)):
        if value is not None and value <= 0:
            raise ConfigError(f"--{name} must be a positive integer (got {value})")
    path = resolve_checkpoint(save_dir, which)
    config = load_config(save_dir)
    vocab = Vocab.load(save_dir)
    if config.vocab_size != len(vocab):
        raise ConfigError(f"{save_dir}: config.json names {config.vocab_size} characters but "
                          f"vocab.json holds {len(vocab)}; the directory is inconsistent")

    missing = vocab.unknown(text)
    skipped = 0
    if missing and not skip_unknown:
        raise DataError(f"{source}: {len(missing)} distinct character(s) the model never saw: "
                        f"{format_chars(missing)}; remove them or pass --skip_unknown")
    if missing:
        kept = text.translate({ord(c): None for c in missing})
        skipped = len(text) - len(kept)
        text = kept
    if len(text) < 2:
        removed = f" after removing {skipped:,} unknown character(s)" if skipped else ""
        raise DataError(f"{source}: has {len(text)} character(s){removed}; scoring needs at least 2 "
                        "(the first character is only context)")

    stream = EvalStream(vocab.encode(text), batch_size or config.batch_size,
                        seq_length or DEFAULT_SEQ_LENGTH)
    graph = tf.Graph()
    with graph.as_default():
        model = CharRNN(config, EVAL, batch_size=stream.batch_size, seq_length=stream.seq_length)
        # The EVAL graph holds only weights as globals (its state variables are locals), so this
        # restores a subset of a training checkpoint: no Adam slots, no training state.
        variables = tf1.global_variables()
        saver = tf1.train.Saver(variables)
        init_local = tf1.local_variables_initializer()
    graph.finalize()

    with tf1.Session(graph=graph, config=session_config(log)) as session:
        session.run(init_local)
        checkpoint.restore(session, saver, variables, path, save_dir)
        if log:
            log(f"restored {path}; scoring {stream.num_targets:,} characters in {stream.batch_size} "
                f"row(s), {stream.num_batches} window(s) of {stream.seq_length}")
        nats = evaluate(session, model, stream)

    return {"nats_per_char": nats, "bits_per_char": nats / math.log(2), "perplexity": math.exp(nats),
            "characters": stream.num_targets, "skipped": skipped, "checkpoint": path}


def format_result(result):
    """The one-line human-readable summary charrnn-eval prints."""
    return (f"bits/char {result['bits_per_char']:.4f}  nats/char {result['nats_per_char']:.4f}  "
            f"perplexity {result['perplexity']:.3f}  ({result['characters']:,} characters, "
            f"{result['skipped']:,} skipped, checkpoint {result['checkpoint']})")
