"""The training loop: resume, refusals, TensorBoard output, checkpoints."""
import glob
import json
import math
import os

import pytest

from charrnn import train as trainer
from charrnn.rundir import RunDir
from charrnn.errors import ConfigError
from charrnn.tfcompat import load
from conftest import assert_identical, checkpoint_tensors, snapshot, tiny_config

TEXT = "It is a truth universally acknowledged, that a single man in possession of a good fortune, " * 8


def _train(config, data_dir, save_dir, log_dir, explicit=(), **kw):
    run = trainer.prepare(config, data_dir, save_dir, explicit)
    return run, trainer.train(run, save_dir, log_dir, **kw)


def test_resume_continues_step_learning_rate_and_data_position(write_data, tmp_path):
    data = write_data(TEXT)
    save, logs = str(tmp_path / "save"), str(tmp_path / "logs")
    config = tiny_config(num_epochs=3, decay_rate=0.5)
    run = trainer.prepare(config, data, save)
    batches = run.train.num_batches
    k = batches + 5  # the interruption falls mid-way through epoch 1
    first = trainer.train(run, save, logs, max_steps=k)
    assert first.status == "max_steps" and first.step == k
    saved = checkpoint_tensors(save)
    assert saved["model/global_step"] == k
    assert saved["model/learning_rate"] == pytest.approx(1e-2 * 0.5)

    run2, second = _train(config, data, save, logs, max_steps=1)
    assert run2.resume and second.step == k + 1
    after = checkpoint_tensors(save)
    assert after["model/global_step"] == k + 1
    assert after["model/learning_rate"] == pytest.approx(1e-2 * 0.5)
    # Data position and state: the step after the resume is exactly the uninterrupted run's step.
    reference = str(tmp_path / "reference")
    trainer.train(trainer.prepare(config, data, reference), reference, logs, max_steps=k + 1)
    assert_identical(after, checkpoint_tensors(reference))

    # Run to the end: the total step count is num_epochs * batches, as if never interrupted.
    _, last = _train(config, data, save, logs)
    assert last.status == "complete" and last.step == 3 * batches


@pytest.mark.parametrize("graph", [{}, {"rnn_impl": "layerwise", "xla": True, "dropout": 0.3},
                                   {"decay_schedule": "cosine", "warmup_steps": 3},
                                   {"dropout": 0.3, "variational_dropout": True, "weight_decay": 0.1},
                                   {"rnn_impl": "layerwise", "xla": True, "dropout": 0.3, "input_dropout": False},
                                   {"rnn_impl": "layerwise", "xla": True, "dropout": 0.3, "weight_drop": 0.25},
                                   {"rnn_impl": "layerwise", "xla": True, "dropout": 0.3, "zoneout_c": 0.5,
                                    "zoneout_h": 0.1}])
def test_interrupted_and_uninterrupted_runs_end_identical(write_data, tmp_path, graph):
    """With a seed, stopping and resuming changes nothing (same weights): for the default graph,
    for layerwise under XLA with dropout, whose backward pass is written out (also with
    DropConnect and with zoneout), and for a cosine schedule, whose learning rate changes at every
    step."""
    data = write_data(TEXT)
    config = tiny_config(num_epochs=2, **graph)
    _train(config, data, str(tmp_path / "a"), str(tmp_path / "la"))
    _train(config, data, str(tmp_path / "b"), str(tmp_path / "lb"), max_steps=7)
    _train(config, data, str(tmp_path / "b"), str(tmp_path / "lb"))
    assert_identical(checkpoint_tensors(str(tmp_path / "a")), checkpoint_tensors(str(tmp_path / "b")))


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_budgeted_schedules_warm_up_then_decay_to_the_end_of_the_budget(schedule):
    config = tiny_config(decay_schedule=schedule, learning_rate=1.0, warmup_steps=10, decay_steps=110,
                         final_lr_frac=0.1)
    rate = lambda step: trainer.learning_rate_at(config, 7, step)  # noqa: E731
    assert [rate(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])  # linear warm-up
    assert rate(10) == pytest.approx(1.0)  # the peak, then down
    assert rate(60) == pytest.approx(0.55)  # half way, cosine and linear alike
    quarter = 0.1 + 0.9 * (0.5 * (1 + math.cos(math.pi / 4)) if schedule == "cosine" else 0.75)
    assert rate(35) == pytest.approx(quarter)
    assert rate(110) == pytest.approx(0.1) and rate(500) == pytest.approx(0.1)  # the end, kept
    rates = [rate(s) for s in range(10, 111)]
    assert all(a > b for a, b in zip(rates, rates[1:]))


def test_a_schedule_that_decays_to_0_ends_the_run_there(write_data, tmp_path, capsys):
    """With --final_lr_frac 0, no update after --decay_steps changes a weight: the run completes
    there, not at --num_epochs (a budgeted run ends with its budget instead of idling to its time);
    a resume says what to raise. With a final rate above 0, the run goes on to its epochs."""
    data = write_data(TEXT)
    config = tiny_config(num_epochs=3, decay_schedule="cosine", warmup_steps=2, decay_steps=10)
    save, logs = str(tmp_path / "save"), str(tmp_path / "logs")
    run, result = _train(config, data, save, logs)
    assert run.train.num_batches * 3 > 10 and trainer.run_length(run.config, run.train.num_batches) == 10
    assert (result.status, result.step) == ("complete", 10)
    assert checkpoint_tensors(save)["model/global_step"] == 10
    capsys.readouterr()
    _, again = _train(config, data, save, logs)
    assert (again.status, again.step) == ("complete", 10)
    assert ("nothing to do: step 10 is the end of the cosine schedule, whose learning rate reached 0 at step "
            "10; raise --final_lr_frac or --decay_steps to go on") in capsys.readouterr().err
    floor = tiny_config(num_epochs=3, decay_schedule="cosine", warmup_steps=2, decay_steps=10, final_lr_frac=0.1)
    run, result = _train(floor, data, str(tmp_path / "floor"), logs)
    assert result.step == 3 * run.train.num_batches
    assert trainer.run_length(tiny_config(num_epochs=3, decay_steps=10), 7) == 21  # per-epoch: epochs


def test_the_epoch_schedule_is_0_1_0s_per_epoch_decay():
    config = tiny_config(decay_rate=0.5, learning_rate=1.0, warmup_steps=10)  # 'epoch' has no warm-up
    assert [trainer.learning_rate_at(config, 7, s) for s in (0, 6, 7, 20, 21)] == [1, 1, 0.5, 0.25, 0.125]


def test_the_budget_is_fixed_in_config_json_when_the_run_starts(write_data, tmp_path):
    """decay_steps 0 becomes --num_epochs x batches once; a resume with more epochs keeps the
    saved budget (the learning rate at every step stays what it was), and the run writes the
    scheduled rate into the checkpoint."""
    data = write_data(TEXT)
    save, logs = str(tmp_path / "save"), str(tmp_path / "logs")
    config = tiny_config(num_epochs=2, decay_schedule="linear", warmup_steps=2)
    run, result = _train(config, data, save, logs, max_steps=5)
    budget = 2 * run.train.num_batches
    assert run.config.decay_steps == budget
    assert RunDir(save).read_config().decay_steps == budget
    assert checkpoint_tensors(save)["model/learning_rate"] == pytest.approx(
        trainer.learning_rate_at(run.config, run.train.num_batches, 4))
    more = tiny_config(num_epochs=4, decay_schedule="linear", warmup_steps=2)
    run2 = trainer.prepare(more, data, save, explicit=("num_epochs",))
    assert run2.resume and run2.config.decay_steps == budget and run2.config.num_epochs == 4


def test_incompatible_resume_is_refused_naming_each_value_and_nothing_changes(write_data, tmp_path):
    data = write_data(TEXT)
    save = str(tmp_path / "save")
    _train(tiny_config(), data, save, str(tmp_path / "logs"), max_steps=2)
    before = snapshot(save)
    changed = tiny_config(hidden_size=24, num_layers=2)
    with pytest.raises(ConfigError, match=r"hidden_size: saved 16, now 24.*num_layers: saved 1, now 2"):
        trainer.prepare(changed, data, save, explicit=("hidden_size", "num_layers"))
    other_vocab = write_data(TEXT + "XYZ")
    with pytest.raises(ConfigError, match=r"vocabulary.*'X' 'Y' 'Z'"):
        trainer.prepare(tiny_config(), other_vocab, save)
    assert snapshot(save) == before


def test_resume_keeps_saved_settings_unless_given_again(write_data, tmp_path):
    data = write_data(TEXT)
    save = str(tmp_path / "save")
    _train(tiny_config(hidden_size=24), data, save, str(tmp_path / "logs"), max_steps=2)
    # Defaults (hidden 256) are not explicit, so the saved 24 is kept; num_epochs is explicit.
    run = trainer.prepare(tiny_config(hidden_size=256, num_epochs=5), data, save, explicit=("num_epochs",))
    assert run.resume and run.config.hidden_size == 24 and run.config.num_epochs == 5


def test_fresh_starts_over(write_data, tmp_path):
    data = write_data(TEXT)
    save = str(tmp_path / "save")
    _train(tiny_config(), data, save, str(tmp_path / "logs"), max_steps=4)
    run = trainer.prepare(tiny_config(hidden_size=24), data, save, explicit=("hidden_size",), fresh=True)
    result = trainer.train(run, save, str(tmp_path / "logs"), max_steps=2)
    assert result.step == 2 and RunDir(save).read_config().hidden_size == 24


def test_moved_save_dir_still_resumes(write_data, tmp_path):
    data = write_data(TEXT)
    _train(tiny_config(), data, str(tmp_path / "old"), str(tmp_path / "logs"), max_steps=3)
    os.rename(tmp_path / "old", tmp_path / "new")
    with open(tmp_path / "new" / "checkpoint") as f:
        assert str(tmp_path) not in f.read()  # relative paths only
    _, result = _train(tiny_config(), data, str(tmp_path / "new"), str(tmp_path / "logs"), max_steps=1)
    assert result.step == 4


def test_validation_best_checkpoint_and_summaries(write_data, tmp_path):
    tf, _ = load()
    data = write_data(TEXT * 2)
    save, logs = str(tmp_path / "save"), str(tmp_path / "logs")
    config = tiny_config(val_frac=0.2, eval_every=5, print_every=2, num_epochs=2)
    _, result = _train(config, data, save, logs)
    with open(os.path.join(save, "best", "best.json")) as f:
        best = json.load(f)
    assert best["step"] == result.best[0] and best["val_loss"] == pytest.approx(result.best[1])
    assert glob.glob(os.path.join(save, "best", "model.ckpt-*.index"))

    def tags(run):
        found = set()
        for path in glob.glob(os.path.join(logs, run, "events.out.tfevents.*")):
            for event in tf.compat.v1.train.summary_iterator(path):
                found.update(v.tag for v in event.summary.value)
        return found

    assert {"loss", "learning_rate", "grad_norm", "chars_per_sec"} <= tags("train")
    assert {"loss", "bits_per_char"} <= tags("val")


@pytest.mark.parametrize("schedule", ["epoch", "cosine"])
def test_only_the_per_epoch_schedule_also_validates_at_epoch_ends(write_data, tmp_path, schedule):
    """Every eval_every steps and at the end; at epoch ends too with the per-epoch schedule
    (0.1.0's), whose learning rate changes there, but not with a step schedule, where they only
    took time from a budget."""
    data = write_data(TEXT * 2)
    config = tiny_config(val_frac=0.2, eval_every=5, num_epochs=2, decay_schedule=schedule)
    run, result = _train(config, data, str(tmp_path / "save"), str(tmp_path / "logs"))
    per_epoch = run.train.num_batches
    assert per_epoch % 5 and result.status == "complete"  # epoch ends fall between evaluations
    every = set(range(5, 2 * per_epoch + 1, 5)) | {2 * per_epoch}
    expected = every | {per_epoch} if schedule == "epoch" else every
    assert [h["step"] for h in result.history] == sorted(expected)


def test_a_run_stopped_by_its_budget_is_validated_at_the_step_it_stops(write_data, tmp_path):
    """--max_steps between two evaluations still ends with the validation loss of the weights it
    stops with (a budgeted schedule's last steps would otherwise never be scored), once."""
    data = write_data(TEXT * 2)
    save, logs = str(tmp_path / "save"), str(tmp_path / "logs")
    config = tiny_config(val_frac=0.2, eval_every=5, num_epochs=3)
    _, result = _train(config, data, save, logs, max_steps=7)
    assert result.status == "max_steps" and [h["step"] for h in result.history] == [5, 7]
    assert result.val_loss == pytest.approx(result.history[-1]["val_loss"], abs=1e-4) and result.best[0] == 7
    _, result = _train(config, data, save, logs, max_steps=3)  # stops on an evaluation step: once
    assert [h["step"] for h in result.history] == [10]


def test_patience_stops_training(write_data, tmp_path):
    data = write_data(TEXT * 2)
    config = tiny_config(val_frac=0.2, eval_every=1, num_epochs=50, learning_rate=0.5, patience=2)
    _, result = _train(config, data, str(tmp_path / "s"), str(tmp_path / "l"))
    assert result.status == "patience"


def test_xla_auto_is_timed_once_recorded_and_kept_on_resume(write_data, tmp_path, capsys):
    """--xla auto (config.xla None) times both graphs at start-up, logs the choice, records it in
    config.json; a resume builds the recorded graph without timing again, even if given auto."""
    data, save, logs = write_data(TEXT), str(tmp_path / "save"), str(tmp_path / "logs")
    _train(tiny_config(xla=None), data, save, logs, max_steps=2)
    first = capsys.readouterr().err
    chosen = RunDir(save).read_config().xla
    assert type(chosen) is bool
    assert f"xla: auto chose {'XLA' if chosen else 'no XLA'} (" in first and "ms/step with XLA" in first
    run, result = _train(tiny_config(xla=None), data, save, logs, explicit=("xla",), max_steps=1)
    assert run.config.xla is chosen and result.step == 3
    assert "xla: auto" not in capsys.readouterr().err
    assert RunDir(save).read_config().xla is chosen
    _train(tiny_config(xla=False), data, str(tmp_path / "explicit"), logs, max_steps=1)  # a flag wins
    assert "xla: auto" not in capsys.readouterr().err
    assert RunDir(str(tmp_path / "explicit")).read_config().xla is False


def test_xla_needs_a_clear_lead_and_ties_go_to_the_plain_graph():
    from charrnn.autotune import MARGIN, prefer_xla

    assert prefer_xla(plain_seconds=0.30, xla_seconds=0.20)
    assert not prefer_xla(plain_seconds=0.20, xla_seconds=0.30)
    assert not prefer_xla(plain_seconds=0.20, xla_seconds=0.20)
    assert not prefer_xla(plain_seconds=0.20 * MARGIN * 0.99, xla_seconds=0.20)


def test_the_steps_that_fit_leave_time_for_every_validation_the_run_will_make():
    from charrnn.autotune import steps_that_fit

    steps = tiny_config(eval_every=100, decay_schedule="cosine")
    # 12 s: 1 s for the last validation, then 0.01 s per step and a 1 s validation every 100 steps.
    assert steps_that_fit(steps, 50, 12.0, 0.01, 1.0) == 550
    assert steps_that_fit(steps, 50, 12.0, 0.01) == 1200  # no validation
    epochs = tiny_config(eval_every=100)  # the per-epoch schedule validates at each epoch end too
    assert steps_that_fit(epochs, 50, 12.0, 0.01, 1.0) == int(11 / (0.01 + 1 / 100 + 1 / 50))
    assert steps_that_fit(steps, 50, 0.5, 0.01, 1.0) == 1  # at least one step


def test_a_time_budget_becomes_a_step_total_that_grows_with_the_time(write_data, tmp_path):
    from charrnn.autotune import steps_in_minutes

    data = write_data(TEXT * 4)
    run = trainer.prepare(tiny_config(val_frac=0.2), data, str(tmp_path / "save"))
    short, seconds = steps_in_minutes(run.config, run.train, run.val, 0.1)
    longer, _ = steps_in_minutes(run.config, run.train, run.val, 0.3)
    assert 0 < seconds < 6 and 1 < short < longer
    assert not os.path.exists(tmp_path / "save")  # throwaway graphs: nothing of the run is written
