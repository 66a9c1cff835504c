"""The save directory: the one module that knows its files, their formats and its rules.

    config.json              the run's Config (versioned JSON, checked on load)
    vocab.json               the characters and their counts (versioned JSON, never pickle)
    model.ckpt-STEP.*        Saver checkpoints, listed in `checkpoint` with relative paths
    best/                    the checkpoint with the lowest validation loss, and best.json
    loss.png                 the loss curves, drawn when a run ends
    .lock                    held while a charrnn-train runs

Rules: config and vocabulary are written before the checkpoint that needs them; a checkpoint is
read back in full (TensorFlow checks each tensor's CRC32C) before it is trusted, and a damaged
newest one falls back to the previous; a failed save leaves no partial files; every variable's
name and shape is checked before a restore.
"""
import contextlib
import dataclasses
import errno
import fcntl
import glob
import json
import os
import tempfile

import numpy as np

from charrnn.config import Config
from charrnn.data import Vocab
from charrnn.errors import CheckpointError, ConfigError
from charrnn.tfcompat import load, session_config  # load() imports TensorFlow only when called

FORMAT_VERSION = 1  # of config.json and vocab.json
CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.json"
CHECKPOINT_PREFIX = "model.ckpt"
CHECKPOINT_LIST = "checkpoint"  # the Saver's own name for its list of checkpoints
BEST_DIR = "best"
BEST_RECORD = "best.json"
PLOT_FILE = "loss.png"
LOCK_FILE = ".lock"
CHECKPOINT_CHOICES = "auto (best if any, else latest), best, latest, or a checkpoint path prefix"


@dataclasses.dataclass
class TrainedModel:
    """What inference needs from a save directory, every consistency check passed."""

    config: object  # charrnn.config.Config
    vocab: Vocab
    checkpoint: str  # the path prefix to restore
    save_dir: str

    def restore(self, build, log=None, finalize=True):
        """Build ``build(config)`` in a new graph, restore the checkpoint into it; return
        (session, graph object). Only the variables that graph has are read: an evaluation or
        sampling graph takes the weights and leaves Adam's slots and the training state. The
        graph is finalized unless ``finalize`` is false (a SavedModel builder adds to it)."""
        tf, tf1 = load()
        graph = tf.Graph()
        with graph.as_default():
            model = build(self.config)
            variables = tf1.global_variables()
            saver = tf1.train.Saver(variables)
            init_local = tf1.local_variables_initializer()
        if finalize:
            graph.finalize()
        session = tf1.Session(graph=graph, config=session_config(log))
        try:
            session.run(init_local)
            restore(session, saver, variables, self.checkpoint, self.save_dir)
        except BaseException:
            session.close()
            raise
        if log:
            log(f"restored {self.checkpoint}")
        return session, model


class RunDir:
    """A save directory (which may not exist yet). Relative and absolute paths behave the same."""

    def __init__(self, path):
        self.path = path
        self.best_path = os.path.join(path, BEST_DIR)
        self.plot_path = os.path.join(path, PLOT_FILE)

    # ------------------------------------------------------------------ config and vocabulary

    def read_config(self):
        """The saved Config, every field checked (a 0.1.0 config.json loads unchanged)."""
        path = os.path.join(self.path, CONFIG_FILE)
        raw = _read_json(path, "config").get("config")
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: no 'config' object")
        return Config.from_dict(raw, path)

    def read_vocab(self):
        path = os.path.join(self.path, VOCAB_FILE)
        return Vocab.from_json(_read_json(path, "vocabulary"), path)

    def write_config_and_vocab(self, config, vocab):
        """Both files atomically (a crash never leaves half a file)."""
        write_json_atomic(os.path.join(self.path, CONFIG_FILE),
                           {"format_version": FORMAT_VERSION, "config": dataclasses.asdict(config)})
        write_json_atomic(os.path.join(self.path, VOCAB_FILE),
                           {"format_version": FORMAT_VERSION, **vocab.to_json()})

    def open_model(self, which="auto", log=None):
        """The checkpoint ``which`` names (see :meth:`resolve`) with its config and vocabulary,
        after checking that they agree; the one way inference opens a save directory."""
        path = self.resolve(which, log)
        config, vocab = self.read_config(), self.read_vocab()
        if config.vocab_size != len(vocab):
            raise ConfigError(f"{self.path}: config.json names {config.vocab_size} characters but "
                              f"vocab.json holds {len(vocab)}; the directory is inconsistent")
        return TrainedModel(config, vocab, path, self.path)

    # ------------------------------------------------------------------ checkpoints

    def has_checkpoint(self):
        """Whether the directory holds any checkpoint (intact or not: see usable_checkpoint)."""
        return _has_checkpoint(self.path)

    def resolve(self, which="auto", log=None):
        """The checkpoint prefix for ``which``: auto (best if any, else latest), best, latest or a
        path prefix. Damaged checkpoints are skipped with a warning (see usable_checkpoint)."""
        if not os.path.isdir(self.path):
            raise CheckpointError(f"--save_dir {self.path}: no such directory; train a model first")
        if which in ("auto", "best"):
            try:
                path = usable_checkpoint(self.best_path, log) if os.path.isdir(self.best_path) else None
            except CheckpointError:
                if which == "best":
                    raise
                path = None  # auto: the latest checkpoint is the next best thing
            if path or which == "best":
                if not path:
                    raise CheckpointError(f"{self.path} has no best checkpoint (it was trained without "
                                          "validation); use --checkpoint latest")
                return path
        if which in ("auto", "latest"):
            path = usable_checkpoint(self.path, log)
            if not path:
                raise CheckpointError(f"--save_dir {self.path}: holds no checkpoint; train with "
                                      f"charrnn-train --save_dir {self.path} first")
            return path
        if not os.path.exists(which + ".index"):
            raise CheckpointError(f"--checkpoint {which}: no such checkpoint (expected {which}.index)")
        problem = verify(which)
        if problem:
            raise CheckpointError(f"--checkpoint {which}: damaged ({problem})")
        return which

    def latest_usable(self, log=None):
        return usable_checkpoint(self.path, log)

    def save(self, saver, session, step, config, vocab):
        """Write config and vocabulary (atomically), then the step's checkpoint; return its path.

        Written only here, so a checkpoint never exists without them and a run that fails before
        its first save changes nothing on disk.
        """
        def write():
            self.write_config_and_vocab(config, vocab)
            return saver.save(session, os.path.join(self.path, CHECKPOINT_PREFIX), global_step=step)

        return _saving(self.path, step, write)

    def read_best(self):
        """(step, validation loss) of the best checkpoint, or None."""
        try:
            with open(os.path.join(self.best_path, BEST_RECORD), encoding="utf-8") as f:
                obj = json.load(f)
            return int(obj["step"]), float(obj["val_loss"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save_best(self, saver, session, step, val_loss):
        """Keep this step's weights as the best checkpoint, with its record."""
        def write():
            os.makedirs(self.best_path, exist_ok=True)
            path = saver.save(session, os.path.join(self.best_path, CHECKPOINT_PREFIX), global_step=step)
            write_json_atomic(os.path.join(self.best_path, BEST_RECORD),
                              {"step": step, "val_loss": val_loss, "bits_per_char": val_loss / np.log(2)})
            return path

        return _saving(self.best_path, step, write)

    # ------------------------------------------------------------------ a training run's hold

    @contextlib.contextmanager
    def training(self, fresh=False):
        """Hold the directory for a training run: create it if needed, prove it writable, take the
        lock and (``fresh``) remove a previous run's files. A run that fails before its first save
        leaves no directory it created behind."""
        created = not os.path.exists(self.path)
        try:
            os.makedirs(self.path, exist_ok=True)
            probe = os.path.join(self.path, f".write-test-{os.getpid()}")
            with open(probe, "w") as f:
                f.write("ok")
            os.unlink(probe)
        except OSError as e:
            raise CheckpointError(f"--save_dir {self.path}: not writable ({e.strerror}); "
                                  "choose another directory, free space or fix its permissions")
        lock_path = os.path.join(self.path, LOCK_FILE)
        try:
            with _Lock(lock_path):
                if fresh:
                    self._remove_run_files()
                yield self
        finally:
            if created and not self.has_checkpoint():
                with contextlib.suppress(OSError):
                    os.unlink(lock_path)
                    os.rmdir(self.path)

    def _remove_run_files(self):
        """Delete a previous run's checkpoints, config, vocabulary and best (for --fresh)."""
        patterns = [CHECKPOINT_PREFIX + "-*", CHECKPOINT_LIST, CONFIG_FILE, VOCAB_FILE, PLOT_FILE,
                    os.path.join(BEST_DIR, "*")]
        for pattern in patterns:
            for path in glob.glob(os.path.join(self.path, pattern)):
                if os.path.isfile(path):
                    os.unlink(path)


def write_json_atomic(path, obj):
    """Write JSON via a temporary file and rename, so a crash never leaves half a file (the save
    directory's files and the prepared-data cache's records)."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, ensure_ascii=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read_json(path, kind):
    """Load a charrnn JSON file, checking its format version; ``kind`` names it in errors."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: missing {kind} file; is this a charrnn save directory?")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: unreadable {kind} file ({e}); restore it or train with --fresh")
    if not isinstance(obj, dict) or obj.get("format_version") != FORMAT_VERSION:
        version = obj.get("format_version") if isinstance(obj, dict) else None
        raise ConfigError(f"{path}: {kind} format version {version!r} is not {FORMAT_VERSION}; "
                          "it was written by another charrnn version")
    return obj


def _has_checkpoint(directory):
    return (os.path.exists(os.path.join(directory, CHECKPOINT_LIST))
            or bool(glob.glob(os.path.join(directory, CHECKPOINT_PREFIX + "-*.index"))))


def _saving(directory, step, write):
    """Run ``write()``; if it fails, remove the files it left and raise one clear line.

    TensorFlow writes a checkpoint's data under a temporary name and updates the checkpoint list
    only when the files are complete, so the previous checkpoint stays the one a resume loads;
    what a failure leaves (the temporary data file, a partial index or meta file) would otherwise
    stay on a disk that is likely full.
    """
    tf, _ = load()
    pattern = os.path.join(directory, f"{CHECKPOINT_PREFIX}-{step}.*")
    before = set(glob.glob(pattern))
    try:
        return write()
    except (OSError, tf.errors.OpError) as e:
        for path in set(glob.glob(pattern)) - before:
            with contextlib.suppress(OSError):
                os.unlink(path)
        raise CheckpointError(f"could not save the step-{step} checkpoint in {directory} ({_reason(e)}); "
                              "free disk space and run again: the previous checkpoint is kept")


def _reason(error):
    """The operating system's words for a failed write, else the error's first line."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = str(getattr(error, "message", "") or error)
    for code in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EIO):
        if os.strerror(code) in text:
            return os.strerror(code)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    meaningful = [line for line in lines if line.rstrip(":") != "Graph execution error"]
    return ((meaningful or lines or [type(error).__name__])[0])[:160]


def _candidates(directory):
    """Checkpoint prefixes in ``directory``, newest first: those the list file names, then any
    other ``model.ckpt-STEP.index`` on disk (the list file itself may be the damaged part)."""
    tf, _ = load()
    listed = []
    try:
        state = tf.train.get_checkpoint_state(directory)
        if state:
            # get_checkpoint_state already joins relative entries to ``directory``.
            listed = list(state.all_model_checkpoint_paths) + [state.model_checkpoint_path]
    except Exception:  # a truncated or garbled list file: fall back to the files
        listed = []
    on_disk = [path[:-len(".index")] for path in glob.glob(os.path.join(directory, CHECKPOINT_PREFIX + "-*.index"))]

    def step(prefix):
        tail = prefix.rsplit("-", 1)[-1]
        return int(tail) if tail.isdigit() else -1

    return sorted(set(os.path.normpath(p) for p in listed + on_disk), key=step, reverse=True)


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
    damaged = []
    for prefix in _candidates(directory):
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
    _check_shapes(tf.train.load_checkpoint(path), variables, path, save_dir)
    with _restore_errors(path):
        saver.restore(session, path)


def _check_shapes(reader, variables, path, save_dir, saved_shape=lambda name, shape: shape):
    """Raise CheckpointError unless checkpoint ``path`` (read by ``reader``) holds every variable
    with the shape ``saved_shape(name, its shape in the graph)``."""
    shapes = reader.get_variable_to_shape_map()
    problems = []
    for v in variables:
        name = v.op.name
        shape = saved_shape(name, v.shape.as_list())
        if name not in shapes:
            problems.append(f"{name} is missing")
        elif shapes[name] != shape:
            problems.append(f"{name} is {shapes[name]}, the config needs {shape}")
    if problems:
        raise CheckpointError(f"{path}: does not match {save_dir}/config.json and vocab.json "
                              f"({'; '.join(problems[:3])}); the directory is inconsistent")


@contextlib.contextmanager
def _restore_errors(path):
    """TensorFlow's errors while restoring ``path`` as one-line CheckpointErrors."""
    tf, _ = load()
    try:
        yield
    except tf.errors.OpError as e:
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{path}: cannot be restored ({first_line[:200]})")


def restore_into(session, variables, path, save_dir, vocab_axes, positions):
    """Load ``variables`` (initialised already) from checkpoint ``path``, whose vocabulary may be
    a subset of this graph's: along each variable's axis in ``vocab_axes`` ({name: axis}), the
    saved slice of character id i goes to slice ``positions[i]`` and the other slices keep their
    initial values; every other variable is loaded whole. Names and shapes are checked first.

    (A fine-tuning run's start: with the source's vocabulary unchanged, ``positions`` is
    0..V-1 and this is a plain restore of the weights.)
    """
    tf, _ = load()
    positions = np.asarray(positions, np.int64)
    reader = tf.train.load_checkpoint(path)

    def saved_shape(name, shape):  # the source's vocabulary along the characters' axis
        if name in vocab_axes:
            shape[vocab_axes[name]] = len(positions)
        return shape

    _check_shapes(reader, variables, path, save_dir, saved_shape)
    with _restore_errors(path):
        for v in variables:
            name = v.op.name
            saved = reader.get_tensor(name)
            if name in vocab_axes:
                value = session.run(v)  # the initial values: the new characters' slices keep them
                where = [slice(None)] * value.ndim
                where[vocab_axes[name]] = positions
                value[tuple(where)] = saved
            else:
                value = saved
            v.load(value, session)  # feeds the variable's initializer: no new op in the graph


class _Lock:
    """An exclusive flock on the lock file: the kernel drops it when the holder dies."""

    def __init__(self, path):
        self.path = path
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
