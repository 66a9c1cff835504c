"""Reading text, the character vocabulary, and batch layouts for stateful training and evaluation."""
import hashlib
import math
import os

import numpy as np

from charrnn.errors import ConfigError, DataError

BOM = "\ufeff"


def read_text_file(path):
    """Read one file as strict UTF-8, dropping a leading byte-order mark."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror}); check the path and its permissions")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 at byte offset {e.start} (byte 0x{raw[e.start]:02x}); "
                        "convert it, e.g. iconv -f latin1 -t utf-8")
    if "\x00" in text:
        raise DataError(f"{path}: contains NUL bytes at character {text.index(chr(0))}; "
                        "this looks like a binary file, not text")
    return text[1:] if text.startswith(BOM) else text


def read_text_dir(data_dir):
    """Concatenate every ``*.txt`` in ``data_dir`` in sorted name order; return (text, file names)."""
    if not os.path.exists(data_dir):
        raise DataError(f"--data_dir {data_dir}: no such directory; point it at a folder of .txt files")
    if not os.path.isdir(data_dir):
        raise DataError(f"--data_dir {data_dir}: is a file, not a directory; "
                        "pass the folder that holds it")
    try:
        names = sorted(n for n in os.listdir(data_dir)
                       if n.endswith(".txt") and os.path.isfile(os.path.join(data_dir, n)))
    except OSError as e:
        raise DataError(f"--data_dir {data_dir}: cannot list ({e.strerror}); check its permissions")
    if not names:
        raise DataError(f"--data_dir {data_dir}: holds no .txt files; put UTF-8 text files there")
    text = "".join(read_text_file(os.path.join(data_dir, n)) for n in names)
    if not text.strip():
        raise DataError(f"--data_dir {data_dir}: the text is empty or only whitespace "
                        f"({len(text)} characters in {len(names)} file(s)); add some text")
    return text, names


def fingerprint(text):
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

    @property
    def id_dtype(self):
        """The narrowest unsigned type that holds every id (compact arrays for large texts)."""
        if len(self) <= 256:
            return np.uint8
        return np.uint16 if len(self) <= 65536 else np.uint32

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
    dropped rather than wrapped around to the start.
    """

    def __init__(self, ids, batch_size, seq_length):
        self.batch_size, self.seq_length = batch_size, seq_length
        chars_per_batch = batch_size * seq_length
        self.num_batches = (len(ids) - 1) // chars_per_batch
        if self.num_batches == 0:
            raise DataError(
                f"the training text has {len(ids)} characters, but --batch_size {batch_size} x "
                f"--seq_length {seq_length} needs at least {chars_per_batch + 1}; "
                "add text or lower --batch_size/--seq_length")
        used = self.num_batches * chars_per_batch
        self.x = ids[:used].reshape(batch_size, -1)  # (B, num_batches * T)
        self.y = ids[1:used + 1].reshape(batch_size, -1)  # (B, num_batches * T)

    def batch(self, k):
        """Inputs and targets of batch k of an epoch, each (B, T) int32."""
        t = self.seq_length
        return (self.x[:, k * t:(k + 1) * t].astype(np.int32),
                self.y[:, k * t:(k + 1) * t].astype(np.int32))

    def position(self, step):
        """The (epoch, batch) that global step ``step`` (0-based count of steps done) starts at."""
        return divmod(step, self.num_batches)


class EvalStream:
    """Lays a stream out for stateful evaluation of *every* target.

    Like TextLoader but nothing is dropped: rows are padded at the end and padding carries weight
    zero, so the mean loss is exactly over the stream's len(ids) - 1 predictions.
    """

    def __init__(self, ids, batch_size, seq_length):
        num_targets = len(ids) - 1
        if num_targets < 1:
            raise DataError("the evaluation text needs at least 2 characters")
        self.batch_size = min(batch_size, num_targets)
        self.seq_length = seq_length
        row_length = math.ceil(num_targets / self.batch_size)
        self.num_batches = math.ceil(row_length / seq_length)
        width = self.num_batches * seq_length
        x = np.zeros(self.batch_size * width, np.int32)
        y = np.zeros(self.batch_size * width, np.int32)
        w = np.zeros(self.batch_size * width, np.float32)
        for r in range(self.batch_size):
            lo, hi = r * row_length, min((r + 1) * row_length, num_targets)
            if lo >= hi:
                continue
            x[r * width:r * width + hi - lo] = ids[lo:hi]
            y[r * width:r * width + hi - lo] = ids[lo + 1:hi + 1]
            w[r * width:r * width + hi - lo] = 1.0
        self.x, self.y, self.w = (a.reshape(self.batch_size, width) for a in (x, y, w))
        self.num_targets = num_targets

    def batch(self, k):
        t = self.seq_length
        cut = slice(k * t, (k + 1) * t)
        return self.x[:, cut], self.y[:, cut], self.w[:, cut]
