"""The save directory: checkpoints, the run's config and vocabulary, and its lock."""
import errno
import fcntl
import glob
import os

from charrnn.errors import CheckpointError

CHECKPOINT_PREFIX = "model.ckpt"
BEST_DIR = "best"
LOCK_FILE = ".lock"


def has_checkpoint(directory):
    return os.path.exists(os.path.join(directory, "checkpoint"))


def latest_checkpoint(directory):
    """The newest checkpoint prefix in ``directory``, or None. Paths resolve relative to it."""
    from charrnn.tfcompat import load

    tf, _ = load()
    return tf.train.latest_checkpoint(directory)


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
                              "choose another directory or fix its permissions")


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
