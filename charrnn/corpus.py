"""Reading text files into ids: one streaming pass, and the cache of prepared ids.

The files are read in chunks of CHUNK_BYTES, so memory stays flat in the size of the text:
strict UTF-8 (a bad byte or a NUL is reported with its file and position), a character split
across two chunks carried over, a leading byte-order mark dropped from each file, CRLF noted.
The pass counts the characters for the vocabulary and writes the ids (the narrowest unsigned type
that fits) to a file that training and evaluation read with ``numpy.memmap``. numpy does the
per-character work; pure-ASCII chunks skip decoding altogether.

The ids live in a cache folder (``--cache_dir``; default ``$XDG_CACHE_HOME/charrnn``, else
``~/.cache/charrnn``) that several runs may share. One entry per source (a data folder or a
file), options and imposed vocabulary, named by a hash of them (KEY):

    KEY.json        the record: every file's name, size, modification and change times (ns) and
                    inode; the options; the vocabulary; the fingerprint and notes. Written last,
                    by rename, so a record on disk always names a complete ids file.
    KEY.TAG.ids     the ids, raw little-endian, in the dtype the record names
    KEY.lock        flock'd while an entry is checked or built

An entry is reused only if every file still has the size, times and inode it had when it was
read; anything else (a file added, removed, renamed, resized, modified or even touched) rebuilds
it. What is not detected: a change that keeps a file's size, both its times and its inode (which
takes resetting the clock or writing to the disk device directly).
"""
import codecs
import collections
import concurrent.futures
import contextlib
import dataclasses
import errno
import fcntl
import glob
import hashlib
import json
import os
import tempfile
import time

import numpy as np

from charrnn.data import Vocab, format_chars
from charrnn.errors import CharRNNError, DataError
from charrnn.rundir import write_json_atomic

CHUNK_BYTES = 8 << 20
FORMAT_VERSION = 1  # of the cache record
BOM = b"\xef\xbb\xbf"
REPLACEMENT = 0xFFFD  # U+FFFD: what --bad_text replace and --min_char_count fold into
MAX_PENDING = 4  # chunks hashed or written in the background at once
PROGRESS_SECONDS = 5.0
PROGRESS_MIN_BYTES = 64 << 20
_NO_ID = -1


def default_cache_dir():
    """$XDG_CACHE_HOME/charrnn, else ~/.cache/charrnn."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "charrnn")


@dataclasses.dataclass
class Corpus:
    """Prepared text: the ids (a read-only memory map), the vocabulary and the fingerprint."""

    ids: np.ndarray  # (num_chars,) numpy.memmap of uint8/16/32
    vocab: Vocab
    fingerprint: str  # sha256 of the UTF-8 text (0.1.0's data_sha256), with the options if any
    files: list  # the names read, in order
    notes: list  # what the preparation found worth saying (CRLF, skipped files, cleaned text)
    reused: bool  # whether the cache held these ids already
    skipped: int = 0  # characters outside an imposed vocabulary that were dropped


class UnknownCharacters(DataError):
    """The text holds characters outside the imposed vocabulary (``chars``, sorted)."""

    def __init__(self, chars, count):
        super().__init__(f"{len(chars)} distinct character(s) not in the vocabulary: {format_chars(chars)}")
        self.chars, self.count = chars, count


def list_text_files(data_dir):
    """Every ``*.txt`` in ``data_dir`` (full paths, sorted by name)."""
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
    return [os.path.join(data_dir, n) for n in names]


def prepare_dir(data_dir, cache_dir=None, bad_text="refuse", min_char_count=0, log=None, vocab=None):
    """The Corpus of every ``*.txt`` in ``data_dir`` (sorted), from the cache or prepared now.

    With ``vocab`` (a fine-tuning run's, its source model's) the ids are that vocabulary's and
    the counts the text's; a character outside it raises UnknownCharacters."""
    paths = list_text_files(data_dir)
    corpus = _prepare(paths, data_dir, cache_dir, bad_text, min_char_count, vocab, False, log)
    if not corpus.reused and log:
        log(f"data: prepared {data_dir} into {cache_dir or default_cache_dir()}")
    return corpus


def prepare_file(path, vocab, cache_dir=None, skip_unknown=False, log=None):
    """The Corpus of one file under an imposed ``vocab`` (evaluation). Characters outside it raise
    UnknownCharacters, or with ``skip_unknown`` are dropped and counted in ``skipped``."""
    return _prepare([path], path, cache_dir, "refuse", 0, vocab, skip_unknown, log)


def _prepare(paths, source, cache_dir, bad_text, min_char_count, vocab, skip_unknown, log):
    cache_dir = cache_dir or default_cache_dir()
    manifest = [_stat(p) for p in paths]
    options = {"bad_text": bad_text, "min_char_count": min_char_count, "skip_unknown": skip_unknown,
               "vocab": vocab.chars if vocab else None}
    key = hashlib.sha256(json.dumps({"source": os.path.realpath(source), **options},
                                    ensure_ascii=False).encode("utf-8")).hexdigest()[:24]
    try:
        os.makedirs(cache_dir, exist_ok=True)
    except OSError as e:
        raise DataError(f"--cache_dir {cache_dir}: cannot create it ({e.strerror}); pass another --cache_dir")
    entry = os.path.join(cache_dir, key)
    with _locked(entry + ".lock", cache_dir, log):
        corpus = _reuse(entry, manifest, options)
        if corpus is None:
            corpus = _build(entry, paths, manifest, options, vocab, log)
    return corpus


def _stat(path):
    """[name, size, mtime_ns, ctime_ns, inode]: what the cache compares to see a file changed."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror}); check the path and its permissions")
    return [os.path.basename(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


@contextlib.contextmanager
def _locked(path, cache_dir, log):
    """Hold an exclusive flock on ``path``, waiting (and saying so) while another run holds it."""
    try:
        f = open(path, "a+")
    except OSError as e:
        raise DataError(f"--cache_dir {cache_dir}: not writable ({e.strerror}); pass another --cache_dir")
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            if log:
                log(f"data: waiting for another run preparing the same data ({path})")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _reuse(entry, manifest, options):
    """The Corpus an entry's record describes, if it matches exactly and its ids file is whole."""
    try:
        with open(entry + ".json", encoding="utf-8") as f:
            record = json.load(f)
        if (record.get("format_version") != FORMAT_VERSION or record.get("files") != manifest
                or record.get("options") != options):
            return None
        path = os.path.join(os.path.dirname(entry), record["ids_file"])
        dtype = np.dtype(record["dtype"])
        if os.path.getsize(path) != record["num_ids"] * dtype.itemsize:
            return None
        vocab = Vocab.from_json(record["vocab"], entry + ".json")
    except (OSError, ValueError, KeyError, TypeError, CharRNNError):
        return None
    return Corpus(_map(path, dtype), vocab, record["fingerprint"], [m[0] for m in manifest],
                  record["notes"], True, record["skipped"])


def _map(path, dtype):
    if os.path.getsize(path) == 0:
        return np.zeros(0, dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def _build(entry, paths, manifest, options, vocab, log):
    """Run the streaming pass into a temporary file, then record it (rename) and drop old ids."""
    directory = os.path.dirname(entry)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(entry) + ".", suffix=".tmp")
    os.close(fd)
    try:
        encoder = _Encoder(tmp, vocab, options["bad_text"], options["skip_unknown"])
        try:
            encoder.read_files(paths, manifest, log)
            vocab, dtype, notes = encoder.finish(options["min_char_count"])
            fingerprint = encoder.fingerprint(options)
            tag = fingerprint[:12]
            ids_file = f"{os.path.basename(entry)}.{tag}.ids"
            os.replace(tmp, os.path.join(directory, ids_file))
        except OSError as e:
            raise DataError(f"cannot write the prepared data to {directory} ({e.strerror or e}); "
                            "free disk space or pass another --cache_dir") from None
        finally:
            encoder.close()
        record = {"format_version": FORMAT_VERSION, "files": manifest, "options": options,
                  "vocab": vocab.to_json(), "dtype": np.dtype(dtype).name, "num_ids": encoder.num_ids,
                  "ids_file": ids_file, "fingerprint": fingerprint, "notes": notes,
                  "skipped": encoder.skipped}
        try:
            write_json_atomic(entry + ".json", record)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, ids_file))
            raise DataError(f"cannot write the prepared data to {directory} ({e.strerror or e}); "
                            "free disk space or pass another --cache_dir") from None
        for old in glob.glob(glob.escape(entry) + ".*.ids"):
            if os.path.basename(old) != ids_file:
                with contextlib.suppress(OSError):
                    os.unlink(old)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    path = os.path.join(directory, ids_file)
    return Corpus(_map(path, dtype), vocab, fingerprint, [m[0] for m in manifest], notes, False,
                  encoder.skipped)


def write_ids(f, ids):
    """Append ``ids`` to the open file ``f`` (one place, so a test can make the disk fill)."""
    f.write(ids.data)


class _BadTextCount:
    """Counts the invalid UTF-8 sequences a decode dropped or replaced (codecs error handlers
    are registered once per process, so the count lives here)."""

    count = 0

    @classmethod
    def drop(cls, error):
        cls.count += 1
        return "", error.end

    @classmethod
    def replace(cls, error):
        cls.count += 1
        return "\ufffd", error.end


codecs.register_error("charrnn-drop", _BadTextCount.drop)
codecs.register_error("charrnn-replace", _BadTextCount.replace)


class _Encoder:
    """The streaming pass: chunks of bytes to code points to ids, written as they come.

    With an imposed vocabulary, ids are final from the start. Without one, characters get
    provisional ids in the order they first appear (the file's dtype widens if they outgrow it)
    and ``finish`` remaps them to the sorted vocabulary in one pass over the ids.
    """

    def __init__(self, path, vocab, bad_text, skip_unknown):
        self.path, self.bad_text, self.skip_unknown = path, bad_text, skip_unknown
        self.table = np.full(0x110000, _NO_ID, np.int32)  # code point -> id
        self.imposed = vocab
        # Training text may be cleaned (--bad_text); a text scored under a model is taken as it is.
        self.bad_text_hint = "" if vocab else ", or pass --bad_text drop|replace"
        if vocab:
            self.codepoints = [ord(c) for c in vocab.chars]
            self.dtype = np.dtype(vocab.id_dtype)
        else:
            self.codepoints = []  # of the provisional ids, in first-seen order
            self.dtype = np.dtype(np.uint8)
        self.table[self.codepoints] = np.arange(len(self.codepoints), dtype=np.int32)
        self.counts = np.zeros(max(len(self.codepoints), 256), np.int64)
        self.unknown = set()
        self.skipped = 0
        self.num_ids = 0
        self.sha = hashlib.sha256()
        self._worker = concurrent.futures.ThreadPoolExecutor(1)
        self._pending = collections.deque()
        self.crlf = False
        self.last_byte = b""
        self.file_notes = []
        self.out = open(path, "wb")

    def close(self):
        """Stop the background work (its errors were raised by finish, or another is on its way
        up) and close the file."""
        for pending in self._pending:
            pending.cancel()
        self._worker.shutdown(wait=True)
        self._pending.clear()
        if not self.out.closed:
            self.out.close()

    def _in_background(self, function, *args):
        """Run ``function(*args)`` in the second thread, in order: hashing and writing let go of
        the GIL, so they overlap numpy's work on the next chunk. At most MAX_PENDING wait."""
        while len(self._pending) >= MAX_PENDING:
            self._pending.popleft().result()
        self._pending.append(self._worker.submit(function, *args))

    def _drain(self):
        """Wait for the background work (and raise its error, e.g. a full disk)."""
        while self._pending:
            self._pending.popleft().result()

    def _hash(self, data):
        self._in_background(self.sha.update, data)

    def _write(self, ids):
        self._in_background(write_ids, self.out, ids)

    # ------------------------------------------------------------------ reading

    def read_files(self, paths, manifest, log):
        total = sum(m[1] for m in manifest)
        progress = _Progress(total, log)
        for path, (_, size, mtime, _, _) in zip(paths, manifest):
            if size == 0:
                self.file_notes.append(f"data: {path} is empty; skipped")
                continue
            bad_before = _BadTextCount.count
            nuls = self._read_file(path, size, mtime, progress)
            bad = _BadTextCount.count - bad_before
            if bad or nuls:
                done = "dropped" if self.bad_text == "drop" else "replaced with U+FFFD"
                self.file_notes.append(f"data: {path}: {bad:,} invalid UTF-8 sequence(s) and {nuls:,} "
                                       f"NUL(s) {done} (--bad_text {self.bad_text})")
        progress.done()

    def _read_file(self, path, size, mtime, progress):
        """Encode one file; return how many NULs were dropped or replaced."""
        try:
            f = open(path, "rb")
        except OSError as e:
            raise DataError(f"{path}: cannot read ({e.strerror}); check the path and its permissions")
        nuls = 0
        with f:
            offset, chars, carry, read = 0, 0, b"", 0
            while True:
                block = f.read(CHUNK_BYTES)
                read += len(block)
                if offset == 0 and not carry and block.startswith(BOM):
                    block, offset, chars = block[len(BOM):], len(BOM), 1
                last = not block
                data = carry + block if carry else block
                if not last:
                    cut = _complete_prefix(data)
                    data, carry = data[:cut], data[cut:]
                else:
                    carry = b""
                if data:
                    self._hash(data)
                    codes, n_chars, n_nul = self._codes(data, path, offset, chars)
                    nuls += n_nul
                    self._note_crlf(data)
                    self._encode(codes)
                    offset += len(data)
                    chars += n_chars
                progress.add(len(block))
                if last:
                    break
            st = os.fstat(f.fileno())
        if read != size or st.st_size != size or st.st_mtime_ns != mtime:
            raise DataError(f"{path}: changed while it was being prepared (size {size:,} -> {st.st_size:,} "
                            "bytes or its modification time moved); run again once nothing writes to it")
        return nuls

    def _codes(self, data, path, offset, chars):
        """Code points of a chunk of whole characters, NULs and bad bytes handled per --bad_text;
        returns (codes, characters decoded, NULs found)."""
        raw = np.frombuffer(data, np.uint8)
        if raw.max() < 0x80:  # ASCII: the bytes are the code points
            codes, decoded = raw, None
        else:
            errors = {"refuse": "strict", "drop": "charrnn-drop", "replace": "charrnn-replace"}[self.bad_text]
            try:
                decoded = data.decode("utf-8", errors)
            except UnicodeDecodeError as e:
                raise DataError(f"{path}: not valid UTF-8 at byte offset {offset + e.start} "
                                f"(byte 0x{data[e.start]:02x}); convert it, e.g. iconv -f latin1 -t utf-8"
                                + self.bad_text_hint) from None
            codes = np.frombuffer(decoded.encode("utf-32-le"), np.uint32)
        n_chars = len(codes)
        if codes.all():
            return codes, n_chars, 0
        nul = codes == 0
        if self.bad_text == "refuse":
            at = int(np.argmax(nul))
            raise DataError(f"{path}: contains NUL bytes at character {chars + at}; "
                            "this looks like a binary file, not text" + self.bad_text_hint)
        n_nul = int(nul.sum())
        if self.bad_text == "drop":
            return codes[~nul], n_chars, n_nul
        codes = codes.astype(np.uint32)
        codes[nul] = REPLACEMENT
        return codes, n_chars, n_nul

    def _note_crlf(self, data):
        if not self.crlf and (self.last_byte == b"\r" or b"\r" in data) and (
                b"\r\n" in data or (self.last_byte == b"\r" and data[:1] == b"\n")):
            self.crlf = True
        self.last_byte = data[-1:]

    def _encode(self, codes):
        """Count the characters of ``codes`` and append their ids to the file."""
        if codes.dtype == np.uint8 and self._encode_bytes(codes):
            return
        ids = self.table[codes]  # int32, _NO_ID where the character has no id yet
        missing = ids < 0
        if missing.any():
            new = np.unique(codes[missing])
            if self.imposed:
                self.unknown.update(int(c) for c in new)
                self.skipped += int(missing.sum())
                ids = ids[~missing]
            else:
                self._add_characters(new)
                ids = self.table[codes]
        counts = np.bincount(ids, minlength=len(self.codepoints))
        self._grow_counts(len(counts))
        self.counts[:len(counts)] += counts
        if not (self.imposed and self.unknown and not self.skip_unknown):
            self._write(ids.astype(self.dtype))
        self.num_ids += len(ids)

    def _encode_bytes(self, codes):
        """The fast path for a chunk of ASCII: counts from pairs of bytes, and ids by
        ``bytes.translate`` while every id fits a byte (numpy's gather and bincount are
        several times slower per character). False if the general path must take the chunk."""
        counts = _byte_counts(codes)
        present = np.flatnonzero(counts)
        ids_of = self.table[present]
        if (ids_of < 0).any():
            if self.imposed:
                return False  # characters outside the vocabulary: the general path drops them
            self._add_characters(present[ids_of < 0])
            ids_of = self.table[present]
        self._grow_counts(len(self.codepoints))
        self.counts[ids_of] += counts[present]
        if self.dtype == np.uint8:
            lookup = np.where(self.table[:256] < 0, 0, self.table[:256]).astype(np.uint8).tobytes()
            ids = np.frombuffer(codes.tobytes().translate(lookup), np.uint8)
        else:
            ids = self.table[codes].astype(self.dtype)
        self._write(ids)
        self.num_ids += len(ids)
        return True

    def _grow_counts(self, size):
        if size > len(self.counts):
            self.counts = np.concatenate([self.counts, np.zeros(size - len(self.counts), np.int64)])

    def _add_characters(self, new):
        start = len(self.codepoints)
        self.codepoints.extend(int(c) for c in new)
        self.table[new] = np.arange(start, len(self.codepoints), dtype=np.int32)
        needed = np.dtype(Vocab.dtype_for(len(self.codepoints)))
        if needed.itemsize > self.dtype.itemsize:
            self._rewrite(np.arange(start, dtype=np.int64), needed)

    def _rewrite(self, mapping, dtype):
        """Pass over the ids written so far: id -> mapping[id], stored as ``dtype`` (in place
        when the width stays)."""
        self._drain()
        self.out.flush()
        old_dtype, n = self.dtype, self.num_ids
        if dtype == old_dtype:
            with open(self.path, "r+b") as f:
                for start in range(0, n, CHUNK_BYTES):
                    f.seek(start * old_dtype.itemsize)
                    chunk = np.fromfile(f, old_dtype, min(CHUNK_BYTES, n - start))
                    f.seek(start * old_dtype.itemsize)
                    write_ids(f, _remap(chunk, mapping, dtype))
                f.flush()
            return
        tmp = self.path + ".rewrite"
        try:
            with open(self.path, "rb") as src, open(tmp, "wb") as dst:
                for start in range(0, n, CHUNK_BYTES):
                    chunk = np.fromfile(src, old_dtype, min(CHUNK_BYTES, n - start))
                    write_ids(dst, _remap(chunk, mapping, dtype))
            self.out.close()
            os.replace(tmp, self.path)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        self.out = open(self.path, "ab")
        self.dtype = np.dtype(dtype)

    # ------------------------------------------------------------------ the end of the pass

    def finish(self, min_char_count):
        """Check the text, build the vocabulary, remap provisional ids and fsync; return
        (vocab, dtype, notes)."""
        self._drain()
        notes = list(self.file_notes)
        if self.imposed:
            if self.unknown and not self.skip_unknown:
                raise UnknownCharacters(sorted(chr(c) for c in self.unknown), self.skipped)
            vocab = Vocab(self.imposed.chars, [int(n) for n in self.counts[:len(self.imposed)]])
        else:
            vocab, mapping, folded = self._sorted_vocab(min_char_count)
            if folded:
                notes.append(f"data: {len(folded):,} character(s) seen fewer than {min_char_count} times "
                             f"folded into U+FFFD ({sum(folded.values()):,} occurrences): "
                             f"{format_chars(sorted(folded))}")
            needed = np.dtype(vocab.id_dtype)
            if needed != self.dtype or not np.array_equal(mapping, np.arange(len(mapping))):
                self._rewrite(mapping, needed)
        if self.crlf:
            notes.append("data: the text has CRLF line ends; they are kept as characters")
        self._drain()
        self.out.flush()
        os.fsync(self.out.fileno())
        self.out.close()
        return vocab, self.dtype, notes

    def _sorted_vocab(self, min_char_count):
        """(vocab, provisional id -> final id, {folded char: count}), the text checked."""
        codepoints = np.array(self.codepoints, np.int64)
        counts = self.counts[:len(codepoints)]
        chars_total = int(counts.sum())
        if chars_total == 0 or all(chr(c).isspace() for c in codepoints):
            raise DataError(f"the text is empty or only whitespace ({chars_total} characters); add some text")
        folded = {}
        if min_char_count > 1:
            rare = counts < min_char_count
            folded = {chr(c): int(n) for c, n in zip(codepoints[rare], counts[rare]) if c != REPLACEMENT}
        kept = sorted(set(int(c) for c in codepoints) - set(ord(c) for c in folded)
                      | ({REPLACEMENT} if folded else set()))
        if len(kept) < 2:
            raise DataError(f"the text uses only {len(kept)} distinct character(s); "
                            "there is nothing to learn, use a richer text")
        final = {c: i for i, c in enumerate(kept)}
        mapping = np.array([final.get(int(c), final.get(REPLACEMENT, 0)) for c in codepoints], np.int64)
        final_counts = np.zeros(len(kept), np.int64)
        np.add.at(final_counts, mapping, counts)
        return Vocab([chr(c) for c in kept], [int(n) for n in final_counts]), mapping, folded

    def fingerprint(self, options):
        """sha256 of the UTF-8 text, as 0.1.0 recorded it; with cleaning or folding asked for,
        the hash of that and the options, so those choices are part of the fingerprint."""
        self._drain()
        text_sha = self.sha.hexdigest()
        if options["bad_text"] == "refuse" and options["min_char_count"] <= 1:
            return text_sha
        tail = f"bad_text={options['bad_text']};min_char_count={options['min_char_count']}"
        return hashlib.sha256(f"{text_sha};{tail}".encode()).hexdigest()


def _remap(ids, mapping, dtype):
    """``mapping[ids]`` as ``dtype``; by ``bytes.translate`` when both are bytes (several times
    faster than numpy's gather)."""
    if ids.dtype == np.uint8 and np.dtype(dtype) == np.uint8:
        lookup = np.zeros(256, np.uint8)
        lookup[:len(mapping)] = mapping
        return np.frombuffer(ids.tobytes().translate(lookup.tobytes()), np.uint8)
    return mapping[ids].astype(dtype)


def _byte_counts(codes):
    """How often each byte value occurs in the uint8 array ``codes``: a bincount over pairs of
    bytes (half the elements, 65,536 bins) summed both ways."""
    even = len(codes) // 2 * 2
    pairs = np.bincount(codes[:even].view(np.uint16), minlength=65536).reshape(256, 256)
    counts = pairs.sum(axis=0) + pairs.sum(axis=1)
    if even < len(codes):
        counts[codes[-1]] += 1
    return counts


def _complete_prefix(data):
    """Length of the longest prefix of ``data`` that does not end inside a UTF-8 character."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:
            return len(data)
        if byte >= 0xC0:
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return len(data) - back if need > back else len(data)
    return len(data)


class _Progress:
    """A progress line every PROGRESS_SECONDS for inputs above PROGRESS_MIN_BYTES."""

    def __init__(self, total, log):
        self.total, self.log = total, log if total >= PROGRESS_MIN_BYTES else None
        self.bytes = 0
        self.started = self.last = time.time()

    def add(self, n):
        self.bytes += n
        now = time.time()
        if self.log and now - self.last >= PROGRESS_SECONDS:
            self.last = now
            rate = self.bytes / (now - self.started)
            eta = (self.total - self.bytes) / rate if rate else 0
            self.log(f"preparing: {self.bytes / 1e6:,.0f}/{self.total / 1e6:,.0f} MB  "
                     f"{rate / 1e6:.0f} MB/s  ETA {int(eta) // 60}m{int(eta) % 60:02d}s")

    def done(self):
        if self.log:
            seconds = time.time() - self.started
            self.log(f"preparing: {self.total / 1e6:,.0f} MB in {seconds:.1f} s "
                     f"({self.total / 1e6 / max(seconds, 1e-9):.0f} MB/s)")
