"""The one place TensorFlow is imported.

TF 2.16+ ships Keras 3, under which ``tf.compat.v1.nn.rnn_cell.LSTMCell`` raises "not available
with Keras 3"; the legacy cells come from tf-keras when ``TF_USE_LEGACY_KERAS=1`` is set before
TensorFlow is first imported. Every charrnn module gets TensorFlow through :func:`load` so users
never have to set anything.
"""
import contextlib
import os
import re
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


# XLA code-generation options for sampling, where each character at batch 1 is a matrix-vector
# product per layer bound by reading the weights (3 MB per character at 2x256): with 512-bit
# vectors and a vector-product tiling factor of 4 (XLA's default is 8) generation ran 6-10% faster
# in alternated runs on the AVX-512 CPU we measure on (README). Training's step was no faster with
# them (and the default graph at 512 slightly slower), so only sampling processes ask for them.
SAMPLING_XLA_FLAGS = ("--xla_cpu_prefer_vector_width=512",
                      "--xla_backend_extra_options=xla_llvm_dot_tiling_factor=4")
# Run on 2.21 only (XLA has had both flags for years); a newer TensorFlow gets them once checked.
_SAMPLING_XLA_FLAGS_CHECKED = ((2, 16), (2, 21))


def use_sampling_xla_flags():
    """Add SAMPLING_XLA_FLAGS to the XLA_FLAGS environment variable; return the flags added.

    XLA reads XLA_FLAGS once, at the process's first compilation, so this must run before it
    (charrnn-sample calls it first thing). A flag the user already set keeps the user's value.
    XLA aborts the process on a flag it does not know, so nothing is added on TensorFlow versions
    outside those checked.
    """
    tf, _ = load()
    version = tuple(int(part) for part in re.findall(r"\d+", tf.__version__)[:2])
    low, high = _SAMPLING_XLA_FLAGS_CHECKED
    if not low <= version <= high:
        return []
    current = os.environ.get("XLA_FLAGS", "")
    added = [flag for flag in SAMPLING_XLA_FLAGS if flag.split("=")[0] not in current]
    if added:
        os.environ["XLA_FLAGS"] = " ".join([current] + added).strip()
    return added


def release_free_memory():
    """Hand the C heap's free pages back to the OS (glibc ``malloc_trim``; elsewhere a no-op).

    XLA's compilation of the training step or sampler leaves about 130 MB of freed heap that glibc
    keeps mapped; without this the training process stays that much larger for the whole run.
    """
    malloc_trim = _glibc("malloc_trim")
    if malloc_trim:
        malloc_trim(0)


def _glibc(name):
    """glibc's function ``name`` through ctypes, or None where there is no glibc (macOS, musl)."""
    import ctypes

    try:
        return getattr(ctypes.CDLL("libc.so.6"), name)
    except (OSError, AttributeError):
        return None


# glibc's mallopt parameters and the values steady_malloc sets.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest: blocks above it are still mapped on their own
TRIM_THRESHOLD = 1 << 30


def steady_malloc():
    """Make glibc's malloc serve a training step's tensors at its steady speed from the first step.

    glibc maps each block above its mmap threshold (128 KB at first) with a fresh mmap() and raises
    the threshold only as such blocks are freed; until it settles, a step's megabyte tensors are
    mapped, page-faulted and unmapped anew. At 2x384 (AMD EPYC) the first ~45 steps took 291
    ms/step instead of 230, and the start-up measurement of a time budget (charrnn.autotune),
    which times steps 4-12, came out 10-25% pessimistic: a 30-minute run ended minutes early.
    Fixed thresholds (heap blocks up to 32 MB; the top of the heap trimmed above 1 GB, and by
    :func:`release_free_memory`) give 230 from the first step. Elsewhere a no-op.
    """
    mallopt = _glibc("mallopt")
    if mallopt:
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)


def cpu_model():
    """The CPU's model name as lscpu shows it (e.g. "AMD EPYC"), or the platform's word for it.

    Speed figures depend on it (AMD and Intel parts rank our graphs differently), so benchmarks
    print it beside every result and the training log names it.
    """
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


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
        device = f"CPU, {cpu_model()} (no GPU visible to TensorFlow)"
    if log:
        log(f"device: {device}")
    return config
