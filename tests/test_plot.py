"""Loss plots from TensorBoard event files: reading resumed runs, the PNG, the installed command."""
import os

import pytest

from charrnn import train as trainer
from charrnn.plot import PlotError, plot_losses, read_scalars, smooth
from charrnn.tfcompat import load
from conftest import make_data_dir, run_cli, tiny_config

TEXT = "Once more unto the breach, dear friends, once more; or close the wall up with our English dead. " * 6
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    """The log dir of a real tiny training run with validation points."""
    root = tmp_path_factory.mktemp("plot")
    data = make_data_dir(root, TEXT)
    config = tiny_config(val_frac=0.2, eval_every=4, print_every=1, num_epochs=3, decay_rate=0.8)
    run = trainer.prepare(config, data, str(root / "save"))
    trainer.train(run, str(root / "save"), str(root / "logs"))
    return root / "logs", run.train.num_batches * 3


def _write_events(run_dir, suffix, wall_time, points):
    """One event file in ``run_dir`` holding {tag: [(step, value), ...]} at ``wall_time``."""
    _, tf1 = load()
    writer = tf1.summary.FileWriter(str(run_dir), filename_suffix=suffix)
    for tag, values in points.items():
        for step, value in values:
            summary = tf1.Summary(value=[tf1.Summary.Value(tag=tag, simple_value=value)])
            writer.add_event(tf1.Event(wall_time=wall_time, step=step, summary=summary))
    writer.close()


def _assert_png(path):
    with open(path, "rb") as f:
        data = f.read()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 20_000  # a drawn 1200x720 figure, not an empty canvas
    assert not [n for n in os.listdir(os.path.dirname(path)) if n.startswith(".tmp-")]


def test_reads_every_step_of_a_real_run_once(logs):
    log_dir, total_steps = logs
    train = read_scalars(str(log_dir / "train"))
    assert {"loss", "learning_rate", "grad_norm", "chars_per_sec", "bits_per_char"} <= set(train)
    assert [step for step, _ in train["loss"]] == list(range(1, total_steps + 1))
    assert [v for _, v in train["learning_rate"]][-1] == pytest.approx(1e-2 * 0.8 ** 2)
    val = read_scalars(str(log_dir / "val"))
    assert len(val["loss"]) >= 3


def test_resumed_run_newest_value_wins_and_abandoned_tail_is_dropped(tmp_path):
    run_dir = tmp_path / "logs" / "train"
    # Written first but newer by wall time: a name-sorted read would get the order wrong.
    _write_events(run_dir, ".b", 2000.0, {"loss": [(20, 5.0), (40, 6.0)]})
    _write_events(run_dir, ".a", 1000.0, {"loss": [(10, 1.0), (20, 2.0), (30, 3.0), (50, 9.0)],
                                          "learning_rate": [(10, 0.1)]})
    scalars = read_scalars(str(run_dir))
    assert scalars["loss"] == [(10, 1.0), (20, 5.0), (40, 6.0)]
    assert scalars["learning_rate"] == [(10, pytest.approx(0.1))]


def test_smoothing_follows_a_trend_without_lag_and_averages_noise():
    assert smooth([4.0, 4.0, 4.0], 0.9) == pytest.approx([4.0, 4.0, 4.0])
    assert smooth([1.0, 3.0, 2.0], 0.0) == [1.0, 3.0, 2.0]
    ramp = [5.0 - 0.01 * k for k in range(300)]
    assert smooth(ramp, 0.95) == pytest.approx(ramp)  # a straight line is kept, ends included
    noisy = [2.0 + (0.5 if k % 2 else -0.5) for k in range(400)]
    assert smooth(noisy, 0.9)[200] == pytest.approx(2.0, abs=0.06)


def test_plot_of_a_real_run(logs, tmp_path):
    log_dir, _ = logs
    out = str(tmp_path / "loss.png")
    assert plot_losses(str(log_dir), out) == out
    _assert_png(out)
    plot_losses(str(log_dir), out, smoothing=0.0)  # replaces the picture in place
    _assert_png(out)


def test_plot_without_validation_or_learning_rate(tmp_path):
    _write_events(tmp_path / "logs" / "train", "", 1000.0,
                  {"loss": [(s, 4.0 / s ** 0.3) for s in range(1, 60)]})
    out = str(tmp_path / "loss.png")
    plot_losses(str(tmp_path / "logs"), out)
    _assert_png(out)


def test_plot_errors(tmp_path):
    with pytest.raises(PlotError, match="no such directory"):
        plot_losses(str(tmp_path / "missing"), str(tmp_path / "a.png"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PlotError, match=r"no TensorBoard event files in .*train"):
        plot_losses(str(tmp_path / "empty"), str(tmp_path / "a.png"))
    _write_events(tmp_path / "only_lr" / "train", "", 1000.0, {"learning_rate": [(1, 0.1)]})
    with pytest.raises(PlotError, match="holds no train loss yet"):
        plot_losses(str(tmp_path / "only_lr"), str(tmp_path / "a.png"))
    with pytest.raises(PlotError, match=r"--smoothing must be in \[0, 1\)"):
        plot_losses(str(tmp_path / "only_lr"), str(tmp_path / "a.png"), smoothing=1.0)
    assert not list(tmp_path.glob("*.png"))


def test_charrnn_plot_as_a_user(logs, tmp_path):
    log_dir, _ = logs
    out = tmp_path / "curves.png"
    result = run_cli("charrnn-plot", "--log_dir", log_dir, "--out", out, "--smoothing", 0.6)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    _assert_png(str(out))

    (tmp_path / "empty").mkdir()
    result = run_cli("charrnn-plot", "--log_dir", tmp_path / "empty", "--out", tmp_path / "x.png")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("charrnn-plot: error: --log_dir "), result.stderr
    assert "no TensorBoard event files" in lines[0]
    assert not (tmp_path / "x.png").exists()
