"""The save directory: checkpoints, the run's config and vocabulary, and its lock."""
import errno
import fcntl
import glob
import os

import numpy as np

from charrnn.errors import CheckpointError
from charrnn.tfcompat import load  # imports TensorFlow only when called

CHECKPOINT_PREFIX = "model.ckpt"
BEST_DIR = "best"
LOCK_FILE = ".lock"


def has_checkpoint(directory):
    """Whether ``directory`` holds any checkpoint (intact or not: see usable_checkpoint)."""
    return (os.path.exists(os.path.join(directory, "checkpoint"))
            or bool(glob.glob(os.path.join(directory, CHECKPOINT_PREFIX + "-*.index"))))


def _candidates(directory):
    """Checkpoint prefixes in ``directory``, newest first: those the state file lists, then any
    other ``model.ckpt-STEP.index`` on disk (the state file itself may be the damaged part)."""
    tf, _ = load()
    listed = []
    try:
        state = tf.train.get_checkpoint_state(directory)
        if state:
            # get_checkpoint_state already joins relative entries to ``directory``.
            listed = list(state.all_model_checkpoint_paths) + [state.model_checkpoint_path]
    except Exception:  # a truncated or garbled 'checkpoint' text file: fall back to the files
        listed = []
    on_disk = [path[:-len(".index")] for path in glob.glob(os.path.join(directory, CHECKPOINT_PREFIX + "-*.index"))]

    def step(prefix):
        tail = prefix.rsplit("-", 1)[-1]
        return int(tail) if tail.isdigit() else -1

    ordered = sorted(set(os.path.normpath(p) for p in listed + on_disk), key=step, reverse=True)
    return ordered


def verify(prefix):
    """None if every tensor of checkpoint ``prefix`` reads back intact (TensorFlow checks each
    tensor's CRC32C) and is finite; otherwise a short description of the damage."""
    tf, _ = load()
    if not os.path.exists(prefix + ".index"):
        return "its .index file is missing"
    try:
        reader = tf.train.load_checkpoint(prefix)
        for name in reader.get_variable_to_shape_map():
            value = reader.get_tensor(name)
            if isinstance(value, np.ndarray) and value.dtype.kind == "f" and not np.isfinite(value).all():
                return f"{name} holds non-finite values"
    except Exception as e:  # DataLossError, NotFoundError, OutOfRangeError, parse errors ...
        lines = str(e).strip().splitlines() or [type(e).__name__]
        return lines[0][:160]
    return None


def usable_checkpoint(directory, log=None):
    """The newest intact checkpoint in ``directory`` (None if there is none at all).

    A damaged newer one is skipped with a warning naming it, so a crash during a save or a
    corrupted file falls back to the previous good checkpoint instead of loading garbage.
    """
    candidates = _candidates(directory)
    damaged = []
    for prefix in candidates:
        problem = verify(prefix)
        if problem is None:
            return prefix
        damaged.append(prefix)
        if log:
            log(f"warning: checkpoint {prefix} is damaged ({problem}); using an older one")
    if damaged:
        raise CheckpointError(f"{directory}: every checkpoint is damaged (newest: {damaged[0]}); "
                              "restore them from a backup or train again with --fresh")
    return None


def restore(session, saver, variables, path, save_dir):
    """Restore ``variables`` from checkpoint ``path`` after checking every name and shape.

    Resource variables accept an assignment of another shape, so without this check a checkpoint
    of another vocabulary or size would load as garbage instead of failing.
    """
    tf, _ = load()
    shapes = tf.train.load_checkpoint(path).get_variable_to_shape_map()
    problems = []
    for v in variables:
        name, shape = v.op.name, v.shape.as_list()
        if name not in shapes:
            problems.append(f"{name} is missing")
        elif shapes[name] != shape:
            problems.append(f"{name} is {shapes[name]}, the config needs {shape}")
    if problems:
        raise CheckpointError(f"{path}: does not match {save_dir}/config.json and vocab.json "
                              f"({'; '.join(problems[:3])}); the directory is inconsistent")
    try:
        saver.restore(session, path)
    except tf.errors.OpError as e:
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{path}: cannot be restored ({first_line[:200]})")


def prepare_save_dir(save_dir):
    """Create ``save_dir`` if needed and prove it is writable, without touching what is there."""
    try:
        os.makedirs(save_dir, exist_ok=True)
        probe = os.path.join(save_dir, f".write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.unlink(probe)
    except OSError as e:
        raise CheckpointError(f"--save_dir {save_dir}: not writable ({e.strerror}); "
                              "choose another directory, free space or fix its permissions")


def remove_run_files(save_dir):
    """Delete a previous run's checkpoints, config and vocabulary (for --fresh)."""
    patterns = [CHECKPOINT_PREFIX + "-*", "checkpoint", "config.json", "vocab.json",
                os.path.join(BEST_DIR, "*")]
    for pattern in patterns:
        for path in glob.glob(os.path.join(save_dir, pattern)):
            if os.path.isfile(path):
                os.unlink(path)


class SaveDirLock:
    """An exclusive flock on ``save_dir/.lock``: the kernel drops it when the holder dies."""

    def __init__(self, save_dir):
        self.path = os.path.join(save_dir, LOCK_FILE)
        self._file = None

    def __enter__(self):
        self._file = open(self.path, "a+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            self._file.seek(0)
            holder = self._file.read().strip() or "another process"
            self._file.close()
            raise CheckpointError(f"--save_dir {os.path.dirname(self.path)} is in use by a running "
                                  f"charrnn-train ({holder}); wait for it or use another --save_dir")
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"pid {os.getpid()}\n")
        self._file.flush()
        return self

    def __exit__(self, *exc):
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()
