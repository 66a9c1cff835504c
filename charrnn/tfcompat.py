"""The one place TensorFlow is imported.

TF 2.16+ ships Keras 3, under which ``tf.compat.v1.nn.rnn_cell.LSTMCell`` raises "not available
with Keras 3"; the legacy cells come from tf-keras when ``TF_USE_LEGACY_KERAS=1`` is set before
TensorFlow is first imported. Every charrnn module gets TensorFlow through :func:`load` so users
never have to set anything.
"""
import contextlib
import os
import sys
import warnings

_tf = None


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 (C++ start-up notices that TF_CPP_MIN_LOG_LEVEL no longer
    reaches in TF 2.21). Python exceptions still propagate and print after it is restored."""
    if os.environ.get("CHARRNN_TF_VERBOSE"):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def load():
    """Import TensorFlow in TF1 graph mode with legacy Keras cells; return ``(tf, tf1)``."""
    global _tf
    if _tf is None:
        os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
        # C++ INFO/WARNING/ERROR lines (oneDNN notices, "failed call to cuInit" on CPU-only
        # machines) would bury our progress lines; real failures still surface as exceptions.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        warnings.filterwarnings("ignore", message=r".*is deprecated", category=UserWarning)
        with _quiet_stderr():
            import tensorflow as tf

        tf.get_logger().setLevel("ERROR")
        tf.compat.v1.disable_eager_execution()
        tf.compat.v1.enable_resource_variables()
        _tf = tf
    return _tf, _tf.compat.v1


def release_free_memory():
    """Hand the C heap's free pages back to the OS (glibc ``malloc_trim``; elsewhere a no-op).

    XLA's compilation of the training step or sampler leaves about 130 MB of freed heap that glibc
    keeps mapped; without this the training process stays that much larger for the whole run.
    """
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def session_config(log=None):
    """A ConfigProto that uses a GPU when TensorFlow sees one (memory growth on), else the CPU.

    ``log`` (a callable taking a string) is told which device runs the model.
    """
    tf, tf1 = load()
    with _quiet_stderr():  # CPU-only machines print "failed call to cuInit" here
        gpus = tf.config.list_physical_devices("GPU")
    config = tf1.ConfigProto(allow_soft_placement=True)
    if gpus:
        # Grow GPU memory on demand instead of grabbing it all: other jobs may share the card.
        config.gpu_options.allow_growth = True
        device = "GPU: " + ", ".join(g.name for g in gpus)
    else:
        device = "CPU (no GPU visible to TensorFlow)"
    if log:
        log(f"device: {device}")
    return config
