import json

import numpy as np
import pytest

from charrnn.data import EvalStream, TextLoader, Vocab, split_ids
from charrnn.errors import DataError


def test_loader_exact_batches_rows_continue_and_targets_shift():
    ids = np.arange(26, dtype=np.uint8)  # 'a'..'z' as 0..25
    loader = TextLoader(ids, batch_size=2, seq_length=3)
    # (26 - 1) // 6 = 4 batches; 24 inputs used, the tail (ids 24, 25 as inputs) is dropped.
    assert loader.num_batches == 4
    x0, y0 = loader.batch(0)
    x1, y1 = loader.batch(1)
    assert x0.tolist() == [[0, 1, 2], [12, 13, 14]]
    assert y0.tolist() == [[1, 2, 3], [13, 14, 15]]
    # Row r of batch 1 continues exactly where row r of batch 0 ended.
    assert x1.tolist() == [[3, 4, 5], [15, 16, 17]]
    assert y1.tolist() == [[4, 5, 6], [16, 17, 18]]
    x3, y3 = loader.batch(3)
    assert x3.tolist() == [[9, 10, 11], [21, 22, 23]]
    assert y3.tolist() == [[10, 11, 12], [22, 23, 24]]  # no wrap-around to id 0
    assert x0.dtype == np.int32


def test_loader_position_from_step():
    loader = TextLoader(np.arange(100, dtype=np.uint8), batch_size=3, seq_length=4)
    assert loader.num_batches == 8
    assert loader.position(0) == (0, 0)
    assert loader.position(7) == (0, 7)
    assert loader.position(8) == (1, 0)
    assert loader.position(21) == (2, 5)


def test_loader_too_short_says_how_many_characters_are_needed():
    with pytest.raises(DataError, match=r"has 20 characters.*needs at least 21"):
        TextLoader(np.zeros(20, np.uint8), batch_size=4, seq_length=5)


def test_eval_stream_covers_every_target_once():
    ids = np.arange(23, dtype=np.int32)
    stream = EvalStream(ids, batch_size=3, seq_length=4)
    xs, ys, ws = zip(*(stream.batch(k) for k in range(stream.num_batches)))
    x, y, w = (np.concatenate(a, axis=1) for a in (xs, ys, ws))
    assert w.sum() == 22 == stream.num_targets
    pairs = sorted(zip(x[w > 0].tolist(), y[w > 0].tolist()))
    assert pairs == [(i, i + 1) for i in range(22)]
    # Rows are contiguous: row 1 starts where row 0's targets end.
    assert x[1, 0] == y[0, int(w[0].sum()) - 1]


def test_split_holds_out_the_end():
    ids = np.arange(100)
    train, val = split_ids(ids, 0.1)
    assert train.tolist() == list(range(90)) and val.tolist() == list(range(90, 100))
    assert split_ids(ids, 0.0)[1] is None


def test_vocab_is_sorted_and_round_trips(tmp_path):
    vocab = Vocab.from_text("hello world")
    assert vocab.chars == sorted(set("hello world"))
    assert vocab.counts[vocab.index["l"]] == 3
    ids = vocab.encode("world")
    assert ids.dtype == np.uint8
    assert vocab.decode(ids) == "world"
    again = Vocab.from_json(json.loads(json.dumps(vocab.to_json())), "vocab.json")
    assert again.chars == vocab.chars and again.counts == vocab.counts


def test_extended_vocab_puts_new_characters_at_their_sorted_places():
    vocab = Vocab(["b", "d"], [3, 4])
    extended = vocab.extended(["e", "a", "c", "d"])  # "d" is already there
    assert extended.chars == ["a", "b", "c", "d", "e"] and extended.counts == [0, 3, 0, 4, 0]
    assert list(extended.encode("abcde")) == [0, 1, 2, 3, 4]
    assert vocab.chars == ["b", "d"]  # the original is unchanged


def test_vocab_wider_ids_for_large_alphabets():
    text = "".join(chr(0x4E00 + i) for i in range(300))  # 300 distinct: more than uint8 holds
    vocab = Vocab.from_text(text)
    assert vocab.id_dtype == np.uint16
    assert vocab.decode(vocab.encode(text[:50])) == text[:50]


def test_vocab_of_one_character_is_refused():
    with pytest.raises(DataError, match="nothing to learn"):
        Vocab.from_text("aaaa")


def _rss_file_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssFile:"))


def test_loaders_hand_read_pages_of_a_memory_map_back(tmp_path, monkeypatch):
    """A long run over a memory-mapped text keeps few of its pages resident: every RELEASE_EVERY
    batches the pages read so far leave the resident set, and the batches do not change."""
    import charrnn.data as data

    path = tmp_path / "ids.bin"
    rng = np.random.default_rng(0)
    rng.integers(0, 50, 48 << 20, dtype=np.uint8).tofile(path)
    ids = np.memmap(path, dtype=np.uint8, mode="r")
    monkeypatch.setattr(data, "RELEASE_EVERY", 4)
    loader = TextLoader(ids, batch_size=8, seq_length=(48 << 20) // 8 // 3)  # 3 batches read it all
    reference = TextLoader(np.fromfile(path, np.uint8), batch_size=8, seq_length=loader.seq_length)
    before = _rss_file_kib()
    for k in range(3):
        assert all(np.array_equal(a, b) for a, b in zip(loader.batch(k), reference.batch(k)))
    assert _rss_file_kib() - before > 24 << 10  # most of the 48 MiB were read through the map
    loader.batch(0)  # the 4th batch hands them back
    assert _rss_file_kib() - before < 8 << 10


def test_a_loader_can_keep_some_rows_of_the_layout():
    """A cluster worker's loader: its rows of the layout of all streams, batch by batch."""
    ids = np.arange(1 + 6 * 2 * 3, dtype=np.uint8)  # 6 rows, 2 batches of 3 characters
    whole = TextLoader(ids, 6, 3)
    part = TextLoader(ids, 6, 3, rows=slice(2, 4))
    assert part.batch_size == 2 and part.num_batches == whole.num_batches == 2
    for k in range(2):
        for a, b in zip(part.batch(k), whole.batch(k)):
            np.testing.assert_array_equal(a, b[2:4])
