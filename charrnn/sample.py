"""Sampling: open a save directory, restore the sampling graph and generate text in chunks."""
import numpy as np

from charrnn.data import format_chars
from charrnn.errors import ConfigError
from charrnn.model import MAX_CHUNK, SampleGraph
from charrnn.rundir import RunDir
from charrnn.tfcompat import load


class Sampler:
    """A trained model restored for generation. ``generate`` yields text as it is produced."""

    def __init__(self, save_dir, which="auto", log=None):
        trained = RunDir(save_dir).open_model(which, log)
        self.path, self.config, self.vocab = trained.checkpoint, trained.config, trained.vocab
        self.session, self.model = trained.restore(SampleGraph, log)

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
