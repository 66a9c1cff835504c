"""Quality in a wall-clock budget: train a configuration on a text with a 90/10 split, print JSON.

usage: python bench/quality.py --data FILE [--minutes 30 | --steps N | --budget_only] [--dev] [--keep DIR]
       [--preset NAME] [charrnn-train's config flags: --hidden_size 384 --dropout 0.3 ...]

The configuration is charrnn-train's: the same flags, defaults and --preset, explicit flags
beating the preset (the default --val_frac 0.1 makes the 90/10 split). Runs the real training
loop (charrnn.train) for --minutes of wall time, evaluations included, then prints one JSON
object: config, steps, characters seen, final and best validation loss in nats/char and
bits/char, the validation curve (minutes, step, loss) and a 200-character sample from the best
checkpoint, as the last line of stdout (training's progress lines come before it).

With --decay_schedule cosine or linear the budget becomes a step total once, at the start
(charrnn.autotune.steps_in_minutes: a few timed steps and one timed evaluation, their time taken
from the budget), which is the run's --decay_steps, so the schedule ends when the time does.
--steps N gives a fixed step budget instead (no time limit): what screening uses, since a step
count does not depend on the machine's load. --dev trains on the first 1 - val_frac of the text
only and validates on the last val_frac of that part (a development split): choosing between
leads on it never looks at the held-out end of the text.
"""
import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from charrnn import train as trainer  # noqa: E402
from charrnn.autotune import budget_steps  # noqa: E402
from charrnn.cli import benchmark_config, define_benchmark_flags, run_command  # noqa: E402
from charrnn.errors import ConfigError  # noqa: E402
from charrnn.sample import Sampler  # noqa: E402
from charrnn.tfcompat import cpu_model  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_float("minutes", 30, "Wall-clock budget of the training run, evaluations included.")
flags.DEFINE_integer("steps", None, "A fixed budget of training steps instead of --minutes.")
flags.DEFINE_boolean("dev", False, "Development split: drop the held-out end of the text (the last "
                     "--val_frac) and validate on the last --val_frac of what remains.")
flags.DEFINE_boolean("budget_only", False, "Print the step total that --minutes gives this configuration "
                     "on this machine (as a cosine or linear run would fix it) and exit: the --steps to "
                     "screen leads at, on a development split, in the time the real run has.")
flags.DEFINE_string("keep", None, "Keep the run (data, save and log dirs) in this folder instead of "
                    "a temporary one.")
define_benchmark_flags()


def main():
    config, problems = benchmark_config()
    if not FLAGS.minutes > 0:
        problems.append(f"--minutes must be positive (got {FLAGS.minutes})")
    if FLAGS.steps is not None and FLAGS.steps <= 0:
        problems.append(f"--steps must be positive (got {FLAGS.steps})")
    if FLAGS.dev and config.val_frac == 0:
        problems.append("--dev needs a --val_frac above 0: the fraction held out, then the dev split")
    if problems:
        raise ConfigError("; ".join(problems))

    work = FLAGS.keep or tempfile.mkdtemp(prefix="charrnn-quality-")
    data_dir = os.path.join(work, "data")
    os.makedirs(data_dir, exist_ok=True)
    if FLAGS.dev:
        with open(FLAGS.data, encoding="utf-8") as f:
            text = f.read()
        held_out = int(round(len(text) * config.val_frac))  # as charrnn.data.split_ids cuts it
        with open(os.path.join(data_dir, "input.txt"), "w", encoding="utf-8") as f:
            f.write(text[:len(text) - held_out])
    else:
        shutil.copy(FLAGS.data, os.path.join(data_dir, "input.txt"))
    save_dir, log_dir = os.path.join(work, "save"), os.path.join(work, "logs")
    cache_dir = os.path.join(work, "cache")
    budget = {"minutes": FLAGS.minutes} if FLAGS.steps is None else {"steps": FLAGS.steps}
    try:
        if FLAGS.budget_only:
            run = trainer.prepare(config, data_dir, save_dir, fresh=True, cache_dir=cache_dir)
            _, steps, seconds = budget_steps(run.config, run.train, run.val, FLAGS.minutes, log=trainer.log)
            print(json.dumps({"cpu": cpu_model(), "data": os.path.basename(FLAGS.data), "preset": FLAGS.preset,
                              "minutes": FLAGS.minutes, "steps": steps, "calibration_seconds": round(seconds, 1)}))
            return
        if FLAGS.steps is not None and config.decay_schedule != "epoch":
            config = dataclasses.replace(config, decay_steps=FLAGS.steps)  # the schedule ends with the budget
        # With a cosine or linear schedule, prepare turns the time budget into its step total.
        run = trainer.prepare(config, data_dir, save_dir, fresh=True, cache_dir=cache_dir,
                              budget_minutes=FLAGS.minutes if FLAGS.steps is None else None)
        max_steps, max_minutes = FLAGS.steps, None
        if FLAGS.steps is None:
            max_minutes = FLAGS.minutes - run.budget_seconds / 60  # the measurement is part of the budget
            if run.budget_seconds:
                max_steps = run.config.decay_steps
                budget.update(calibrated_steps=max_steps, calibration_seconds=round(run.budget_seconds, 1))
        result = trainer.train(run, save_dir, log_dir, max_steps=max_steps, max_minutes=max_minutes)
        sampler = Sampler(save_dir)
        sample = "".join(sampler.generate("\n", 199, seed=0))
        sampler.close()
        c = run.config
        best_step, best = result.best
        print(json.dumps({
            "cpu": cpu_model(), "data": os.path.basename(FLAGS.data), "preset": FLAGS.preset,
            "split": (f"dev: the first {1 - c.val_frac:g} of the text, the last {c.val_frac:g} of that "
                      "validating" if FLAGS.dev else f"{1 - c.val_frac:g}/{c.val_frac:g}"),
            "budget": budget,
            "config": {k: v for k, v in dataclasses.asdict(c).items() if k != "data_sha256"},
            "minutes": round(result.minutes, 2), "steps": result.step,
            "chars_seen": result.step * c.batch_size * c.seq_length,
            "final_val_nats": result.history[-1]["val_loss"],
            "final_val_bits": round(result.history[-1]["val_loss"] / math.log(2), 4),
            "best_val_nats": round(best, 4), "best_val_bits": round(best / math.log(2), 4),
            "best_step": best_step, "curve": result.history, "sample": sample}))
    finally:
        if not FLAGS.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    run_command(main, "bench/quality.py")
