import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from charrnn.config import Config


@pytest.fixture(autouse=True, scope="session")
def cache_home(tmp_path_factory):
    """Prepared ids go to a temporary cache for the whole session, never to the user's ~/.cache
    (the installed commands run by run_cli inherit it)."""
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield os.environ["XDG_CACHE_HOME"]
    if previous is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = previous


def tiny_config(**overrides):
    """A model small enough for a real session to train in a second or two."""
    values = dict(hidden_size=16, num_layers=1, batch_size=4, seq_length=8, num_epochs=1,
                  learning_rate=1e-2, val_frac=0.0, print_every=1000, save_every=1000,
                  eval_every=1000, seed=0, xla=False)  # XLA is covered by its own tests
    values.update(overrides)
    return Config(**values)


@pytest.fixture
def write_data(tmp_path):
    """write_data(text, name=...) -> a fresh data dir holding that text."""
    counter = [0]

    def write(text, name="input.txt", encoding="utf-8"):
        counter[0] += 1
        data_dir = tmp_path / f"data{counter[0]}"
        data_dir.mkdir()
        raw = text if isinstance(text, bytes) else text.encode(encoding)
        (data_dir / name).write_bytes(raw)
        return str(data_dir)

    return write


def command(name):
    """The installed entry script, as a user would run it."""
    beside = os.path.join(os.path.dirname(sys.executable), name)
    path = beside if os.path.exists(beside) else shutil.which(name)
    assert path, f"{name} is not installed; pip install -e '.[test]'"
    return path


def run_cli(name, *args, cwd=None, timeout=300):
    return subprocess.run([command(name), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def checkpoint_tensors(path):
    """{variable name: value} of the checkpoint at ``path`` (a prefix, or a directory's latest)."""
    from charrnn.tfcompat import load

    tf, _ = load()
    reader = tf.train.load_checkpoint(path)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def assert_identical(a, b):
    """Two checkpoints' tensors are equal bit for bit."""
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name], b[name]), name


def make_data_dir(root, text, name="t.txt"):
    """root/data holding one text file; returns the folder as a string."""
    data = root / "data"
    data.mkdir(exist_ok=True)
    (data / name).write_text(text)
    return str(data)


def snapshot(directory):
    """{relative path: bytes} of every file below ``directory`` (to prove nothing changed).

    The lock file is left out: it records the pid of whichever process last held it.
    """
    files = {}
    for root, _, names in os.walk(directory):
        for n in names:
            if n == ".lock":
                continue
            path = os.path.join(root, n)
            with open(path, "rb") as f:
                files[os.path.relpath(path, directory)] = f.read()
    return files
