"""Loss curves from the TensorBoard event files training writes, drawn to a PNG with matplotlib."""
import glob
import math
import os
import uuid

import numpy as np

from charrnn.errors import CharRNNError
from charrnn.tfcompat import load

TRAIN_RUN, VAL_RUN = "train", "val"


class PlotError(CharRNNError):
    """A log directory holds nothing to plot, or the picture cannot be written."""


def read_scalars(run_dir):
    """{tag: [(step, value), ...] sorted by step} from every event file in ``run_dir``.

    A resumed or restarted run appends a new event file and writes steps again from where its
    checkpoint was. Files are read oldest first (by the wall time of their first event); each
    file's points replace the older points of the same tag from its first step on, so a step
    written twice keeps the newest value and the abandoned tail of an interrupted run is dropped.
    """
    tf, tf1 = load()
    files = []
    for path in glob.glob(os.path.join(run_dir, "events.out.tfevents.*")):
        points, first_wall_time = {}, math.inf
        try:
            for event in tf1.train.summary_iterator(path):
                first_wall_time = min(first_wall_time, event.wall_time)
                for value in event.summary.value:
                    if value.HasField("simple_value"):
                        points.setdefault(value.tag, {})[event.step] = value.simple_value
        except tf.errors.DataLossError:
            pass  # a writer killed mid-record leaves a truncated tail; keep what precedes it
        files.append((first_wall_time, path, points))
    merged = {}
    for _, _, points in sorted(files, key=lambda f: (f[0], f[1])):
        for tag, by_step in points.items():
            start = min(by_step)
            kept = {s: v for s, v in merged.get(tag, {}).items() if s < start}
            kept.update(by_step)
            merged[tag] = kept
    return {tag: sorted(by_step.items()) for tag, by_step in merged.items()}


def smooth(values, weight):
    """Exponential smoothing without lag: at each point, a straight line fitted to all points with
    weights ``weight ** distance``, evaluated there.

    Not TensorBoard's one-sided moving average: on a falling loss its lag of about
    weight / (1 - weight) points draws the curve above all the data it smooths. A two-sided mean
    fixes the middle but still bends towards the middle at both ends; the local line does not.
    """
    y = np.asarray(values, np.float64)
    if weight == 0 or len(y) < 3:
        return y.tolist()
    i = np.arange(len(y), dtype=np.float64)

    def kernel_sum(x):  # (n,): sum over j of weight ** |i - j| * x[j], in two linear passes
        forward, backward = np.empty_like(x), np.empty_like(x)
        total = 0.0
        for k in range(len(x)):
            total = total * weight + x[k]
            forward[k] = total
        total = 0.0
        for k in reversed(range(len(x))):
            total = total * weight + x[k]
            backward[k] = total
        return forward + backward - x

    s0, s1, s2 = kernel_sum(np.ones_like(y)), kernel_sum(i), kernel_sum(i * i)
    t0, t1 = kernel_sum(y), kernel_sum(i * y)
    # Weighted least squares for y ~ a + b (j - i), with moments taken about i.
    m1, m2, u1 = s1 - i * s0, s2 - 2 * i * s1 + i * i * s0, t1 - i * t0
    return ((m2 * t0 - m1 * u1) / (s0 * m2 - m1 * m1)).tolist()


def plot_losses(log_dir, out_path, smoothing=0.6):
    """Draw train loss (raw and smoothed), validation loss and learning rate against step.

    Reads ``log_dir/train`` and ``log_dir/val``; writes ``out_path`` as a PNG atomically and
    returns it. Validation points and the learning rate are drawn when present.
    """
    if not 0 <= smoothing < 1:
        raise PlotError(f"--smoothing must be in [0, 1) (got {smoothing})")
    if not os.path.isdir(log_dir):
        raise PlotError(f"--log_dir {log_dir}: no such directory; pass the --log_dir given to "
                        "charrnn-train")
    train_dir = os.path.join(log_dir, TRAIN_RUN)
    if not glob.glob(os.path.join(train_dir, "events.out.tfevents.*")):
        raise PlotError(f"--log_dir {log_dir}: no TensorBoard event files in {train_dir}; pass the "
                        "--log_dir given to charrnn-train")
    train = read_scalars(train_dir)
    if not train.get("loss"):
        raise PlotError(f"--log_dir {log_dir}: {train_dir} holds no train loss yet (training writes it "
                        "every --print_every steps)")
    val = read_scalars(os.path.join(log_dir, VAL_RUN))

    figure = _draw(log_dir, train["loss"], val.get("loss", []), train.get("learning_rate", []),
                   smoothing)
    return _save_png(figure, out_path)


def _draw(log_dir, train_loss, val_loss, learning_rate, smoothing):
    # Figure + Agg canvas rather than pyplot: no global backend switch and no figure left open, so
    # the training loop (or a notebook) can call this without side effects.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 6), dpi=120)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    steps, losses = zip(*train_loss)
    few = len(steps) < 2  # a single point draws no line; give it a marker
    ax.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=1, marker="o" if few else None,
            label="train loss")
    if smoothing > 0 and not few:
        ax.plot(steps, smooth(losses, smoothing), color="tab:blue", linewidth=2,
                label=f"train loss, smoothed ({smoothing:g})")
    if val_loss:
        val_steps, val_losses = zip(*val_loss)
        ax.plot(val_steps, val_losses, color="tab:orange", linewidth=1.5, marker="o", markersize=4,
                label="validation loss")
        best_step, best = min(val_loss, key=lambda p: p[1])
        ax.plot([best_step], [best], linestyle="none", marker="*", markersize=14, color="tab:red",
                label=f"best validation {best:.4f} nats/char ({best / math.log(2):.3f} bits/char) "
                      f"at step {best_step:,}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/char)")
    ax.grid(True, alpha=0.3)
    ax.set_title(f"charrnn training loss: {_shorten(log_dir)}")
    handles, labels = ax.get_legend_handles_labels()

    if learning_rate:
        lr_axis = ax.twinx()
        lr_steps, rates = zip(*learning_rate)
        low, high = min(rates), max(rates)
        span = f"{high:.2e}" if low == high else f"{rates[0]:.2e} to {rates[-1]:.2e}"
        lr_axis.plot(lr_steps, rates, color="tab:green", linestyle="--", linewidth=1.2,
                     marker="." if len(lr_steps) < 2 else None, label=f"learning rate ({span})")
        if low > 0:
            lr_axis.set_yscale("log")
            # Pad to less than a decade around the data so the log axis labels values near the
            # line, not only the powers of ten a constant rate would be centred between.
            lr_axis.set_ylim(low / 1.5, high * 1.5)
        lr_axis.set_ylabel("learning rate", color="tab:green")
        lr_axis.tick_params(axis="y", which="both", colors="tab:green")
        more_handles, more_labels = lr_axis.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    ax.legend(handles, labels, loc="upper right", framealpha=0.9)
    figure.tight_layout()
    return figure


def _shorten(path, limit=70):
    return path if len(path) <= limit else "..." + path[-(limit - 3):]


def _save_png(figure, out_path):
    """Write through a temporary file in the same folder and rename, so readers never see half."""
    directory = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(directory):
        raise PlotError(f"--out {out_path}: folder {directory} does not exist; create it first")
    tmp = os.path.join(directory, f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}.png")
    try:
        with open(tmp, "xb") as f:  # not mkstemp: the picture gets the umask's permissions, not 0600
            figure.savefig(f, format="png")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out_path)
    except OSError as e:
        raise PlotError(f"--out {out_path}: cannot write ({e.strerror or e})")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out_path
