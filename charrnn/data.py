"""The character vocabulary, and batch layouts for stateful training and evaluation.

The layouts read their ids from any array; for prepared text that is a read-only ``numpy.memmap``
(charrnn/corpus.py). Pages of it that a layout has read are handed back to the kernel every
RELEASE_EVERY batches, so a long run's resident set does not grow to the whole file.
"""
import hashlib
import math
import mmap

import numpy as np

from charrnn.errors import ConfigError, DataError

RELEASE_EVERY = 256  # batches between handing read pages of a memory map back


def release_pages(array):
    """Drop the pages of a memory-mapped ``array`` from this process's resident set. They stay in
    the page cache (a later read is a minor fault); a plain array is left alone."""
    mapped = getattr(array, "_mmap", None)  # numpy.memmap and its views keep their mmap here
    if mapped is not None and hasattr(mapped, "madvise"):
        mapped.madvise(mmap.MADV_DONTNEED)


def fingerprint(text):
    """sha256 of the UTF-8 text (config.json's data_sha256 for text prepared without options)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Vocab:
    """Characters sorted by code point; ids are their positions. Counts feed an empty prime."""

    def __init__(self, chars, counts):
        self.chars = list(chars)
        self.counts = list(counts)
        self.index = {c: i for i, c in enumerate(self.chars)}
        self._codepoints = np.array([ord(c) for c in self.chars], dtype=np.int64)

    @classmethod
    def from_text(cls, text):
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        unique, counts = np.unique(codes, return_counts=True)
        if len(unique) < 2:
            raise DataError(f"the text uses only {len(unique)} distinct character(s); "
                            "there is nothing to learn, use a richer text")
        return cls([chr(c) for c in unique], [int(n) for n in counts])

    def __len__(self):
        return len(self.chars)

    def extended(self, chars):
        """This vocabulary with ``chars`` added, each at its sorted position (so the ids of the
        characters after it shift up by one); the new characters count 0."""
        counts = dict(zip(self.chars, self.counts))
        merged = sorted(set(self.chars) | set(chars))
        return Vocab(merged, [counts.get(c, 0) for c in merged])

    @property
    def id_dtype(self):
        """The narrowest unsigned type that holds every id (compact arrays for large texts)."""
        return self.dtype_for(len(self))

    @staticmethod
    def dtype_for(size):
        """The narrowest unsigned type for the ids of a vocabulary of ``size`` characters."""
        if size <= 256:
            return np.uint8
        return np.uint16 if size <= 65536 else np.uint32

    def unknown(self, text):
        """Sorted characters of ``text`` that are not in the vocabulary."""
        return sorted(set(text) - set(self.index))

    def encode(self, text):
        """Ids of ``text`` as a compact numpy array; every character must be known."""
        missing = self.unknown(text)
        if missing:
            raise DataError(f"characters not in the vocabulary: {format_chars(missing)}")
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        return np.searchsorted(self._codepoints, codes).astype(self.id_dtype)

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids)

    def to_json(self):
        """The vocabulary as a JSON-ready dict (the save directory writes it as vocab.json)."""
        return {"chars": self.chars, "counts": self.counts}

    @classmethod
    def from_json(cls, obj, where):
        """The inverse of to_json, refusing anything but sorted unique single characters with
        one count each; ``where`` names the source in the error."""
        chars, counts = obj.get("chars"), obj.get("counts")
        ok = (isinstance(chars, list) and isinstance(counts, list) and len(chars) == len(counts) >= 2
              and all(isinstance(c, str) and len(c) == 1 for c in chars)
              and all(type(n) is int and n >= 0 for n in counts)
              and chars == sorted(set(chars)))
        if not ok:
            raise ConfigError(f"{where}: not a valid vocabulary (need sorted unique single characters "
                              "with one count each)")
        return cls(chars, counts)


def format_chars(chars, limit=20):
    shown = " ".join(repr(c) for c in chars[:limit])
    return shown + (f" ... ({len(chars)} in all)" if len(chars) > limit else "")


def split_ids(ids, val_frac):
    """Hold out the end of the stream for validation; return (train_ids, val_ids or None)."""
    num_val = int(round(len(ids) * val_frac))
    if val_frac == 0:
        return ids, None
    if num_val < 2:
        raise DataError(f"--val_frac {val_frac} of {len(ids)} characters leaves {num_val} for validation; "
                        "use more text, a larger --val_frac, or --val_frac 0")
    return ids[:len(ids) - num_val], ids[len(ids) - num_val:]


class TextLoader:
    """Lays an id stream out for stateful training.

    The stream is cut into ``batch_size`` contiguous rows, so row r of batch k+1 continues exactly
    where row r of batch k ended; targets are the inputs shifted by one. The incomplete tail is
    dropped rather than wrapped around to the start. ``rows`` (a slice) keeps only those rows of
    the layout: a worker of a cluster trains its own streams of the run's layout, and
    ``batch_size`` is then the number of rows it keeps.
    """

    def __init__(self, ids, batch_size, seq_length, rows=None):
        self.seq_length = seq_length
        chars_per_batch = batch_size * seq_length
        self.num_batches = (len(ids) - 1) // chars_per_batch
        if self.num_batches == 0:
            raise DataError(
                f"the training text has {len(ids)} characters, but --batch_size {batch_size} x "
                f"--seq_length {seq_length} needs at least {chars_per_batch + 1}; "
                "add text or lower --batch_size/--seq_length")
        used = self.num_batches * chars_per_batch
        rows = rows or slice(None)
        self.x = ids[:used].reshape(batch_size, -1)[rows]  # (B, num_batches * T)
        self.y = ids[1:used + 1].reshape(batch_size, -1)[rows]  # (B, num_batches * T)
        self.batch_size = len(self.x)
        self._batches_read = 0

    def batch(self, k):
        """Inputs and targets of batch k of an epoch, each (B, T) int32."""
        t = self.seq_length
        x = self.x[:, k * t:(k + 1) * t].astype(np.int32)
        y = self.y[:, k * t:(k + 1) * t].astype(np.int32)
        self._batches_read += 1
        if self._batches_read % RELEASE_EVERY == 0:
            release_pages(self.x)
        return x, y

    def position(self, step):
        """The (epoch, batch) that global step ``step`` (0-based count of steps done) starts at."""
        return divmod(step, self.num_batches)


class EvalStream:
    """Lays a stream out for stateful evaluation of *every* target.

    Like TextLoader but nothing is dropped: the targets are cut into ``batch_size`` contiguous
    rows of ``row_length``, the last row padded, and padding carries weight zero, so the mean loss
    is exactly over the stream's len(ids) - 1 predictions. Batches are cut from ``ids`` when asked
    for (no copy of the stream is made).
    """

    def __init__(self, ids, batch_size, seq_length):
        num_targets = len(ids) - 1
        if num_targets < 1:
            raise DataError("the evaluation text needs at least 2 characters")
        self.ids = ids
        self.batch_size = min(batch_size, num_targets)
        self.seq_length = seq_length
        self.row_length = math.ceil(num_targets / self.batch_size)
        self.num_batches = math.ceil(self.row_length / seq_length)
        self.num_targets = num_targets
        self._batches_read = 0

    def batch(self, k):
        """Inputs, targets and weights of window k, each (B, T): int32, int32, float32."""
        b, t = self.batch_size, self.seq_length
        x = np.zeros((b, t), np.int32)
        y = np.zeros((b, t), np.int32)
        w = np.zeros((b, t), np.float32)
        for r in range(b):
            row_end = min((r + 1) * self.row_length, self.num_targets)
            lo = r * self.row_length + k * t
            hi = min(lo + t, row_end)
            if lo >= hi:
                continue
            x[r, :hi - lo] = self.ids[lo:hi]
            y[r, :hi - lo] = self.ids[lo + 1:hi + 1]
            w[r, :hi - lo] = 1.0
        self._batches_read += 1
        if self._batches_read % RELEASE_EVERY == 0:
            release_pages(self.ids)
        return x, y, w
