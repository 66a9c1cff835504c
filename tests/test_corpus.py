"""Preparing text: the streaming pass, its refusals and cleaning, and the prepared-data cache."""
import errno
import glob
import os

import numpy as np
import pytest

from charrnn import corpus
from charrnn.corpus import prepare_dir, prepare_file
from charrnn.data import EvalStream, TextLoader, Vocab, fingerprint, split_ids
from charrnn.errors import DataError

MIXED = "\ufeffHéllo wörld, 日本語 and 😀 \r\nline two\r\n" * 40


def _write(directory, files):
    directory.mkdir(exist_ok=True)
    for name, content in files.items():
        (directory / name).write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return str(directory)


def _old_eval_batches(ids, batch_size, seq_length):
    """0.1.0's EvalStream, which built padded copies of the whole stream: the reference."""
    import math

    num_targets = len(ids) - 1
    batch_size = min(batch_size, num_targets)
    row_length = math.ceil(num_targets / batch_size)
    num_batches = math.ceil(row_length / seq_length)
    width = num_batches * seq_length
    x, y, w = (np.zeros(batch_size * width, t) for t in (np.int32, np.int32, np.float32))
    for r in range(batch_size):
        lo, hi = r * row_length, min((r + 1) * row_length, num_targets)
        if lo < hi:
            x[r * width:r * width + hi - lo] = ids[lo:hi]
            y[r * width:r * width + hi - lo] = ids[lo + 1:hi + 1]
            w[r * width:r * width + hi - lo] = 1.0
    x, y, w = (a.reshape(batch_size, width) for a in (x, y, w))
    return [(x[:, k * seq_length:(k + 1) * seq_length], y[:, k * seq_length:(k + 1) * seq_length],
             w[:, k * seq_length:(k + 1) * seq_length]) for k in range(num_batches)]


@pytest.mark.parametrize("chunk", [4, 5, 7, 64, 1 << 20])
def test_prepared_ids_vocab_and_batches_are_0_1_0s(tmp_path, monkeypatch, chunk):
    """Chunk boundaries anywhere (inside a 2-, 3- or 4-byte character, between \\r and \\n), a BOM
    per file, several files: the same vocabulary, ids, fingerprint and batches as reading the
    whole text did in 0.1.0."""
    monkeypatch.setattr(corpus, "CHUNK_BYTES", chunk)
    second = "second file: 😀 ends here"
    data = _write(tmp_path / "data", {"a.txt": MIXED, "b.txt": "\ufeff" + second, "notes.md": "ignored"})
    prepared = prepare_dir(data, str(tmp_path / "cache"))
    text = MIXED[1:] + second  # 0.1.0: each file decoded, its BOM dropped, concatenated
    vocab = Vocab.from_text(text)
    assert prepared.vocab.chars == vocab.chars and prepared.vocab.counts == vocab.counts
    assert isinstance(prepared.ids, np.memmap) and prepared.ids.dtype == vocab.id_dtype
    assert np.array_equal(prepared.ids, vocab.encode(text))
    assert prepared.fingerprint == fingerprint(text)
    assert prepared.files == ["a.txt", "b.txt"]
    assert any("CRLF" in n for n in prepared.notes)

    old_train, old_val = split_ids(vocab.encode(text), 0.1)
    new_train, new_val = split_ids(prepared.ids, 0.1)
    old, new = TextLoader(old_train, 3, 7), TextLoader(new_train, 3, 7)
    assert new.num_batches == old.num_batches
    for k in range(old.num_batches):
        for a, b in zip(old.batch(k), new.batch(k)):
            assert np.array_equal(a, b) and a.dtype == b.dtype
    stream = EvalStream(new_val, 4, 5)
    reference = _old_eval_batches(old_val, 4, 5)
    assert stream.num_batches == len(reference)
    for k, want in enumerate(reference):
        for a, b in zip(want, stream.batch(k)):
            assert np.array_equal(a, b) and a.dtype == b.dtype


def test_wide_vocabularies_widen_the_ids_file(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "CHUNK_BYTES", 1000)  # the 257th character arrives after ids were written
    text = "".join(chr(0x4E00 + i) for i in range(400)) * 3
    data = _write(tmp_path / "data", {"t.txt": "ab" * 700 + text})
    prepared = prepare_dir(data, str(tmp_path / "cache"))
    vocab = Vocab.from_text("ab" * 700 + text)
    assert prepared.ids.dtype == np.uint16
    assert np.array_equal(prepared.ids, vocab.encode("ab" * 700 + text))


def test_cache_reused_until_a_file_changes(tmp_path):
    data = tmp_path / "data"
    _write(data, {"a.txt": "first text. " * 20, "b.txt": "second text! " * 20})
    cache = str(tmp_path / "cache")
    first = prepare_dir(str(data), cache)
    assert not first.reused
    again = prepare_dir(str(data), cache)
    assert again.reused and np.array_equal(again.ids, first.ids) and again.fingerprint == first.fingerprint

    def changed(change):
        change()
        result = prepare_dir(str(data), cache)
        assert not result.reused, change
        assert prepare_dir(str(data), cache).reused  # and the rebuilt entry is reused after
        text = "".join((data / n).read_text() for n in sorted(os.listdir(data)) if n.endswith(".txt"))
        assert result.fingerprint == fingerprint(text) and np.array_equal(
            result.ids, Vocab.from_text(text).encode(text))

    changed(lambda: (data / "c.txt").write_text("added! "))
    changed(lambda: (data / "c.txt").unlink())
    changed(lambda: os.rename(data / "b.txt", data / "z.txt"))
    changed(lambda: (data / "a.txt").write_text("first text, resized. " * 20))
    st = os.stat(data / "a.txt")
    # Same size, same modification time, other content: the change time still moves.
    changed(lambda: ((data / "a.txt").write_text("FIRST TEXT, RESIZED. " * 20),
                     os.utime(data / "a.txt", ns=(st.st_atime_ns, st.st_mtime_ns))))
    changed(lambda: os.utime(data / "a.txt"))  # touched only
    assert len(glob.glob(os.path.join(cache, "*.ids"))) == 1  # replaced entries leave no ids behind


def test_cleaning_options_and_imposed_vocabulary_are_other_entries(tmp_path):
    data = _write(tmp_path / "data", {"t.txt": "abcabc\x00abc"})
    cache = str(tmp_path / "cache")
    dropped = prepare_dir(data, cache, bad_text="drop")
    replaced = prepare_dir(data, cache, bad_text="replace")
    assert not replaced.reused and dropped.fingerprint != replaced.fingerprint
    assert "\ufffd" in replaced.vocab.chars and "\ufffd" not in dropped.vocab.chars
    vocab = Vocab(list("abcd"), [1, 1, 1, 1])
    other = _write(tmp_path / "other", {"t.txt": "abcabcabc"})
    natural = prepare_dir(other, cache)
    imposed = prepare_file(os.path.join(other, "t.txt"), vocab, cache)
    assert not imposed.reused and imposed.vocab.chars == list("abcd")
    assert np.array_equal(natural.ids, imposed.ids)  # here the ids agree; the entries do not mix
    assert prepare_file(os.path.join(other, "t.txt"), vocab, cache).reused


def _no_trusted_entry(cache):
    return not glob.glob(os.path.join(cache, "*.json")) and not glob.glob(os.path.join(cache, "*.ids")) \
        and not glob.glob(os.path.join(cache, "*.tmp*"))


def test_disk_full_while_writing_is_one_line_and_leaves_no_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "CHUNK_BYTES", 64)
    data = _write(tmp_path / "data", {"t.txt": "some text to prepare. " * 50})
    cache = str(tmp_path / "cache")
    calls = []

    def full(f, ids):
        calls.append(1)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        f.write(ids.data)

    monkeypatch.setattr(corpus, "write_ids", full)
    with pytest.raises(DataError, match=r"cannot write the prepared data to .*No space left on device"
                                        r".*--cache_dir") as info:
        prepare_dir(data, cache)
    assert "\n" not in str(info.value)
    assert _no_trusted_entry(cache)
    monkeypatch.setattr(corpus, "write_ids", lambda f, ids: f.write(ids.data))
    assert not prepare_dir(data, cache).reused  # the next run prepares from scratch


def test_interrupted_preparation_leaves_nothing_trusted(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "CHUNK_BYTES", 64)
    data = _write(tmp_path / "data", {"t.txt": "some text to prepare. " * 50})
    cache = str(tmp_path / "cache")
    calls = []

    def interrupted(f, ids):
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt
        f.write(ids.data)

    monkeypatch.setattr(corpus, "write_ids", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_dir(data, cache)
    assert _no_trusted_entry(cache)


def test_a_file_that_changes_while_it_is_prepared_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "CHUNK_BYTES", 64)
    data = _write(tmp_path / "data", {"t.txt": "some text to prepare. " * 50})
    cache = str(tmp_path / "cache")
    written = []

    def growing(f, ids):
        if not written:
            with open(os.path.join(data, "t.txt"), "a") as g:
                g.write("appended while reading")
        written.append(1)
        f.write(ids.data)

    monkeypatch.setattr(corpus, "write_ids", growing)
    with pytest.raises(DataError, match=r"t\.txt: changed while it was being prepared"):
        prepare_dir(data, cache)
    assert _no_trusted_entry(cache)


def test_thousands_of_small_files_and_an_empty_one(tmp_path):
    files = {f"{i:05d}.txt": f"file {i}: some words.\n" for i in range(3000)}
    files["02500.txt"] = ""
    data = _write(tmp_path / "data", files)
    prepared = prepare_dir(data, str(tmp_path / "cache"))
    text = "".join(files[n] for n in sorted(files))
    assert len(prepared.files) == 3000 and np.array_equal(prepared.ids, Vocab.from_text(text).encode(text))
    assert any("02500.txt is empty; skipped" in n for n in prepared.notes)
    assert prepare_dir(data, str(tmp_path / "cache")).reused


@pytest.mark.parametrize("content, message", [
    ("caf\u00e9 au lait".encode("latin-1"), r"bad\.txt: not valid UTF-8 at byte offset 3 \(byte 0xe9\)"),
    (b"\xef\xbb\xbfok text\x00more", r"bad\.txt: contains NUL bytes at character 8; .*binary file"),
    ("héllo\x00".encode() * 3, r"bad\.txt: contains NUL bytes at character 5;"),
    (b"", r"empty or only whitespace"),
    (b" \n\t\r\n ", r"empty or only whitespace"),
    (b"aaaa", r"only 1 distinct character"),
])
def test_refusals_name_the_file_and_position(tmp_path, content, message):
    data = _write(tmp_path / "data", {"bad.txt": content})
    with pytest.raises(DataError, match=message):
        prepare_dir(data, str(tmp_path / "cache"))
    assert _no_trusted_entry(str(tmp_path / "cache"))


def test_bad_byte_offset_is_the_files_across_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "CHUNK_BYTES", 16)
    data = _write(tmp_path / "data", {"a.txt": "fine", "bad.txt": ("é" * 30 + "x").encode() + b"\xff tail"})
    with pytest.raises(DataError, match=r"bad\.txt: not valid UTF-8 at byte offset 61 \(byte 0xff\)"):
        prepare_dir(data, str(tmp_path / "cache"))


@pytest.mark.parametrize("bad_text", ["drop", "replace"])
def test_bad_text_dropped_or_replaced_and_counted_per_file(tmp_path, bad_text):
    raw = b"good \xff\xfe text\x00 and \xe2\x82 more" + b" clean" * 5
    data = _write(tmp_path / "data", {"a.txt": raw, "b.txt": "clean text\x00\x00"})
    prepared = prepare_dir(data, str(tmp_path / "cache"), bad_text=bad_text)
    cleaned = raw.decode("utf-8", "replace").replace("\x00", "\ufffd") + "clean text\ufffd\ufffd"
    if bad_text == "drop":
        cleaned = cleaned.replace("\ufffd", "")
    assert prepared.vocab.decode(prepared.ids) == cleaned
    notes = " | ".join(prepared.notes)
    # \xff and \xfe are two invalid sequences, \xe2\x82 one (a truncated character).
    assert "a.txt: 3 invalid UTF-8 sequence(s) and 1 NUL(s)" in notes
    assert "b.txt: 0 invalid UTF-8 sequence(s) and 2 NUL(s)" in notes
    assert prepared.fingerprint != fingerprint(cleaned)  # the choice is part of the fingerprint


def test_rare_characters_fold_into_one(tmp_path):
    text = "abcabcabc" * 10 + "xyz" + "q" * 5
    data = _write(tmp_path / "data", {"t.txt": text})
    prepared = prepare_dir(data, str(tmp_path / "cache"), min_char_count=2)
    assert prepared.vocab.chars == sorted("abcq\ufffd")
    assert prepared.vocab.counts[prepared.vocab.index["\ufffd"]] == 3
    assert prepared.vocab.decode(prepared.ids) == "abcabcabc" * 10 + "\ufffd" * 3 + "q" * 5
    assert any("3 character(s) seen fewer than 2 times folded into U+FFFD" in n for n in prepared.notes)
    plain = prepare_dir(data, str(tmp_path / "cache"))
    assert plain.fingerprint == fingerprint(text) != prepared.fingerprint
