"""Sampling: rebuild the graph for batch 1 from a save directory and generate text in-graph."""
import os

import numpy as np

from charrnn import checkpoint
from charrnn.config import load_config
from charrnn.data import Vocab, format_chars
from charrnn.errors import CheckpointError, ConfigError
from charrnn.model import MAX_CHUNK, SAMPLE, CharRNN
from charrnn.tfcompat import load, session_config


def resolve_checkpoint(save_dir, which="auto", log=None):
    """The checkpoint prefix for ``which``: auto (best if any, else latest), best, latest or a path.

    Damaged checkpoints are skipped with a warning (see checkpoint.usable_checkpoint).
    """
    if not os.path.isdir(save_dir):
        raise CheckpointError(f"--save_dir {save_dir}: no such directory; train a model first")
    if which in ("auto", "best"):
        best_dir = os.path.join(save_dir, checkpoint.BEST_DIR)
        try:
            path = checkpoint.usable_checkpoint(best_dir, log) if os.path.isdir(best_dir) else None
        except CheckpointError:
            if which == "best":
                raise
            path = None  # auto: the latest checkpoint is the next best thing
        if path or which == "best":
            if not path:
                raise CheckpointError(f"{save_dir} has no best checkpoint (it was trained without "
                                      "validation); use --checkpoint latest")
            return path
    if which in ("auto", "latest"):
        path = checkpoint.usable_checkpoint(save_dir, log)
        if not path:
            raise CheckpointError(f"--save_dir {save_dir}: holds no checkpoint; train with "
                                  f"charrnn-train --save_dir {save_dir} first")
        return path
    if not os.path.exists(which + ".index"):
        raise CheckpointError(f"--checkpoint {which}: no such checkpoint (expected {which}.index)")
    problem = checkpoint.verify(which)
    if problem:
        raise CheckpointError(f"--checkpoint {which}: damaged ({problem})")
    return which


class Sampler:
    """A trained model restored for generation. ``generate`` yields text as it is produced."""

    def __init__(self, save_dir, which="auto", log=None):
        tf, tf1 = load()
        self.path = resolve_checkpoint(save_dir, which, log)
        self.config = load_config(save_dir)
        self.vocab = Vocab.load(save_dir)
        if self.config.vocab_size != len(self.vocab):
            raise ConfigError(f"{save_dir}: config.json names {self.config.vocab_size} characters but "
                              f"vocab.json holds {len(self.vocab)}; the directory is inconsistent")
        self.graph = tf.Graph()
        with self.graph.as_default():
            self.model = CharRNN(self.config, SAMPLE)
            variables = tf1.global_variables()
            saver = tf1.train.Saver(variables)
        self.graph.finalize()
        self.session = tf1.Session(graph=self.graph, config=session_config(log))
        try:
            checkpoint.restore(self.session, saver, variables, self.path, save_dir)
        except CheckpointError:
            self.session.close()
            raise
        if log:
            log(f"restored {self.path}")

    def generate(self, prime, n, seed=0, temperature=1.0, top_k=0, top_p=1.0, greedy=False,
                 chunk_size=MAX_CHUNK):
        """Yield ``prime`` then ``n`` generated characters, ``chunk_size`` per session.run.

        An empty prime starts from a character drawn from the vocabulary's frequencies; it counts
        as the first of the ``n`` characters.
        """
        missing = self.vocab.unknown(prime)
        if missing:
            raise ConfigError(f"--prime has characters the model never saw: {format_chars(missing)}; "
                              "remove them")
        if not prime:
            if n == 0:
                return
            counts = np.array(self.vocab.counts, np.float64)
            first = np.random.RandomState(seed).choice(len(counts), p=counts / counts.sum())
            prime = self.vocab.chars[first]
            n -= 1
        yield prime
        m = self.model
        ids = self.vocab.encode(prime).astype(np.int32)
        state, offset = None, 0
        settings = {m.seed: seed, m.temperature: temperature, m.top_k: top_k, m.top_p: top_p,
                    m.greedy: greedy}
        # The filtering loop only when asked: it sorts the vocabulary for every character.
        filtered = top_k > 0 or top_p < 1.0
        fetches = ([m.generated_filtered, _flatten(m.final_state_filtered)] if filtered
                   else [m.generated, _flatten(m.final_state)])
        while offset < n:
            count = min(chunk_size, MAX_CHUNK, n - offset)
            feed = {m.prime: ids, m.num_chars: count, m.offset: offset, **settings}
            if state is not None:
                feed.update(zip(_flatten(m.initial_state), state))
            generated, state = self.session.run(fetches, feed)
            yield self.vocab.decode(generated)
            ids = generated[-1:]
            offset += count

    def close(self):
        self.session.close()


def _flatten(structure):
    tf, _ = load()
    return tf.nest.flatten(structure)
