"""Speed and memory of charrnn on this machine; prints one JSON object.

usage: python bench/speed.py --data FILE [--steps 60] [--skip_startup] [--skip_sampling]
       [--memory_steps 0] [--preset NAME]
       [charrnn-train's config flags: --hidden_size 256 --rnn_impl layerwise --noxla ...]

The configuration is charrnn-train's (the same flags, defaults and --preset), so with --data
alone this measures what a plain ``charrnn-train`` trains: the default graph, cell with XLA.

- training: chars/sec and ms/step of the training step (median of 10-step windows after
  10 warm-up steps), measured in-process on the real training graph (TrainGraph);
- sampling: chars/sec of the in-graph sampler generating 20,000 characters (4,096 per
  session.run; median of 3), in a fresh process with charrnn-sample's XLA flags;
- startup: seconds from launching charrnn-train (given every config flag) to its first finished
  step, and from launching charrnn-sample --n 500 to its exit;
- memory: peak RSS of a charrnn-train subprocess run for --memory_steps steps (0: skip).
"""
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from charrnn.autotune import choose_xla  # noqa: E402
from charrnn.cli import benchmark_config, benchmark_run, config_argv, define_benchmark_flags, run_command  # noqa: E402
from charrnn.errors import ConfigError  # noqa: E402
from charrnn.model import TrainGraph  # noqa: E402
from charrnn.tfcompat import cpu_model, load, session_config  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("steps", 60, "Training steps timed after 10 warm-up steps.")
flags.DEFINE_boolean("skip_startup", False, "Skip the start-up times (and sampling, which samples "
                     "the checkpoint the start-up run writes).")
flags.DEFINE_boolean("skip_sampling", False, "Skip the sampling speed.")
flags.DEFINE_integer("memory_steps", 0, "Steps of the charrnn-train run whose RSS is sampled; 0 skips it.")
define_benchmark_flags()


def training_speed(run, steps):
    tf, tf1 = load()
    c = run.config
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(0)
        model = TrainGraph(c)
        init = tf1.global_variables_initializer()
    graph.finalize()
    with tf1.Session(graph=graph, config=session_config()) as session:
        session.run(init)
        window, times, losses = 10, [], []
        for i in range(10 + steps):
            x, y = run.train.batch(i % run.train.num_batches)
            t0 = time.perf_counter()
            loss, _ = session.run([model.loss, model.train_op], {model.inputs: x, model.targets: y})
            if i >= 10:
                times.append(time.perf_counter() - t0)
            losses.append(float(loss))
    windows = [sum(times[i:i + window]) / window for i in range(0, len(times) - window + 1, window)]
    ms = 1000 * statistics.median(windows)
    return {"ms_per_step": round(ms, 1), "chars_per_sec": round(c.batch_size * c.seq_length / ms * 1000),
            "loss_after": round(losses[-1], 3)}


def sampling_speed(save_dir):
    """Sampling chars/s, measured in a fresh process set up as charrnn-sample sets itself up
    (its XLA flags apply only where nothing was compiled before)."""
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--sample_only", save_dir],
                         capture_output=True, text=True, check=True).stdout
    return int(out.split()[-1])


def _sample_only(save_dir, n=20000):
    from charrnn.sample import Sampler
    from charrnn.tfcompat import use_sampling_xla_flags

    use_sampling_xla_flags()
    sampler = Sampler(save_dir)
    "".join(sampler.generate("The ", 200, chunk_size=n))  # warm-up
    runs = []
    for seed in range(3):
        t0 = time.perf_counter()
        "".join(sampler.generate("The ", n, seed=seed, chunk_size=n))
        runs.append(n / (time.perf_counter() - t0))
    sampler.close()
    print(round(statistics.median(runs)))


def startup(data_dir, save_dir, config):
    """Seconds to the first finished training step, and for a whole charrnn-sample --n 500."""
    bindir = os.path.dirname(sys.executable)
    t0 = time.time()
    proc = subprocess.Popen([os.path.join(bindir, "charrnn-train"), "--data_dir", data_dir,
                             "--save_dir", save_dir, "--log_dir", os.path.join(save_dir, "logs"),
                             "--cache_dir", os.path.join(os.path.dirname(save_dir), "cache"),
                             "--max_steps", "1", *config_argv(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first_step = None
    for line in proc.stderr:
        if line.startswith("saved "):  # the one step is done and being checkpointed
            first_step = time.time() - t0
    proc.wait()
    t0 = time.time()
    subprocess.run([os.path.join(bindir, "charrnn-sample"), "--save_dir", save_dir, "--n", "500"],
                   capture_output=True, check=True)
    return round(first_step, 2), round(time.time() - t0, 2)


def memory(data_dir, save_dir, config, max_steps):
    """Run charrnn-train for ``max_steps`` steps, sampling its RSS every second.

    Returns the peak RSS (MiB, from the kernel's high-water mark) and the RSS at each tenth of
    the run, to show whether memory grows with the number of steps.
    """
    bindir = os.path.dirname(sys.executable)
    progress = os.path.join(os.path.dirname(save_dir), "memory-progress.txt")
    with open(progress, "w") as out:
        proc = subprocess.Popen([os.path.join(bindir, "charrnn-train"), "--data_dir", data_dir,
                                 "--save_dir", save_dir, "--log_dir", os.path.join(save_dir, "logs"),
                                 "--cache_dir", os.path.join(os.path.dirname(save_dir), "cache"),
                                 "--fresh", "--max_steps", str(max_steps), *config_argv(config)],
                                stdout=out, stderr=subprocess.DEVNULL)
    samples, peak = [], 0
    while proc.poll() is None:
        time.sleep(1)
        with open(progress) as f:
            steps = [line.split()[1].split("/")[0] for line in f if line.startswith("step ")]
        step = int(steps[-1]) if steps else 0
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            rss, peak = int(fields["VmRSS"].split()[0]) // 1024, int(fields["VmHWM"].split()[0]) // 1024
            samples.append((step, rss))
        except (OSError, KeyError, ValueError):
            pass
    marks = [samples[int(i * (len(samples) - 1) / 10)] for i in range(11)] if samples else []
    return {"steps": max_steps, "peak_rss_mib": peak, "exit": proc.returncode,
            "rss_mib_at_steps": [{"step": s, "rss_mib": r} for s, r in marks]}


def main():
    config, problems = benchmark_config()
    if FLAGS.steps < 10:
        problems.append(f"--steps must be at least 10, one timed window (got {FLAGS.steps})")
    if FLAGS.memory_steps < 0:
        problems.append(f"--memory_steps must be 0 (off) or positive (got {FLAGS.memory_steps})")
    if problems:
        raise ConfigError("; ".join(problems))

    with benchmark_run(config, FLAGS.data, "charrnn-speed-") as (run, work):
        data_dir = os.path.join(work, "data")
        result = {"cpu": cpu_model()}
        if run.config.xla is None:  # --xla auto, as charrnn-train decides it
            use_xla, result["xla_auto"] = choose_xla(run.config, run.train)
            run = dataclasses.replace(run, config=dataclasses.replace(run.config, xla=use_xla))
        result["config"] = {k: getattr(run.config, k) for k in
                            ("hidden_size", "num_layers", "batch_size", "seq_length", "rnn_impl", "xla")}
        result["training"] = training_speed(run, FLAGS.steps)
        save_dir = os.path.join(work, "save")
        if not FLAGS.skip_startup:
            first_step, sample_wall = startup(data_dir, save_dir, config)
            result["startup"] = {"seconds_to_first_training_step": first_step,
                                 "charrnn_sample_n500_seconds": sample_wall}
            if not FLAGS.skip_sampling:
                result["sampling_chars_per_sec"] = sampling_speed(save_dir)
        if FLAGS.memory_steps:
            result["memory"] = memory(data_dir, os.path.join(work, "memory"), config, FLAGS.memory_steps)
        print(json.dumps(result))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--sample_only"]:  # the child process of sampling_speed
        _sample_only(sys.argv[2])
    else:
        run_command(main, "bench/speed.py")
