"""Scaling of cluster training on one machine: 1 ps + 1, 2, 4 workers on loopback.

usage: python bench/cluster.py [--workers 1,2,4] [--steps 40] [--print_every 10]
       [--hidden_size 128] [--num_layers 2] [--batch_size 16] [--seq_length 50]
       [--modes sync|async|sync,async]

For each worker count W, ``charrnn-train --local_cluster 1,W`` trains on a copy of the bundled
data/shakespeare.txt for --steps global steps, each worker with --batch_size streams; before
them, single processes of batch B and of batch 4B. Every process has one intra-op thread
(TF_NUM_INTRAOP_THREADS=1), so the tasks do not oversubscribe the cores among themselves (the
machine's core count still bounds everything: printed). Measured from the progress lines, the
first window (start-up, first steps) left out:

- global chars/s and ms per global step (the chief's lines, which count every worker's streams);
- ms per step computing and waiting on the non-chief workers (their own lines);

and computed from the graph's variable sizes (no measurement): bytes per global step to and
from the ps tasks. Each worker reads every weight and sends a dense gradient of every weight, its
streams' rows of the state snapshot and its loss; the averaging, clipping and Adam run on the ps
tasks (only scalars of the global norm cross between ps tasks). Prints one JSON object.

With --modes async (--nosync_replicas) a global step is one worker's update of its own batch,
and each task's lines give its own ms per update: the global rate is the sum of the workers'
rates (so ms per global step = 1 / that sum); each update reads every weight and sends one
gradient, so the bytes per global step are one worker's.
"""
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from charrnn.cli import run_command  # noqa: E402
from charrnn.errors import ConfigError  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workers", "1,2,4", "Worker counts to run, comma-separated (one ps each).")
flags.DEFINE_integer("steps", 40, "Global steps per run.")
flags.DEFINE_integer("print_every", 10, "Steps per measured window (the first is left out).")
flags.DEFINE_integer("hidden_size", 128, "LSTM units per layer.")
flags.DEFINE_integer("num_layers", 2, "LSTM layers.")
flags.DEFINE_integer("batch_size", 16, "Streams per worker.")
flags.DEFINE_integer("seq_length", 50, "Characters per stream per step.")
flags.DEFINE_string("modes", "sync", "Cluster update modes to run: sync, async (--nosync_replicas) or both.")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(ROOT, "data", "shakespeare.txt")
CHIEF_LINE = re.compile(r"step \d+/\d+ .* ([\d.]+) ms/step +([\d,]+) chars/s")
WORKER_LINE = re.compile(r"worker \d+: step \d+/\d+ .* ([\d.]+) ms/step computing, ([\d.]+) ms/step waiting")
ASYNC_WORKER_LINE = re.compile(r"worker \d+: global step \d+/\d+ .* ([\d.]+) ms/step$", re.MULTILINE)


def command(name):
    beside = os.path.join(os.path.dirname(sys.executable), name)
    return beside if os.path.exists(beside) else shutil.which(name)


def train_flags(work, name, batch_size):
    return [f"--data_dir={work}/data", f"--save_dir={work}/{name}", f"--log_dir={work}/{name}-logs",
            f"--cache_dir={work}/cache", f"--hidden_size={FLAGS.hidden_size}", f"--num_layers={FLAGS.num_layers}",
            f"--batch_size={batch_size}", f"--seq_length={FLAGS.seq_length}", "--val_frac=0", "--noxla",
            f"--max_steps={FLAGS.steps}", f"--print_every={FLAGS.print_every}", "--save_every=100000"]


def run(args):
    env = dict(os.environ, TF_NUM_INTRAOP_THREADS="1")
    result = subprocess.run([command("charrnn-train"), *args], capture_output=True, text=True, env=env,
                            timeout=3600)
    if result.returncode != 0:
        raise ConfigError(f"charrnn-train {' '.join(args)} failed: {result.stderr.strip()[-500:]}")
    return result.stdout + result.stderr


def windows(pattern, text):
    """The (a, b) numbers of every progress line but each task's first window."""
    found = [tuple(float(x.replace(",", "")) for x in m.groups()) for m in pattern.finditer(text)]
    return found[1:] if len(found) > 1 else found


def traffic(workers, batch_size):
    """Bytes per global step to and from the ps tasks, from the variables' sizes."""
    import numpy as np

    from charrnn.config import Config
    from charrnn.model import ModelWeights
    from charrnn.tfcompat import load

    tf, _ = load()
    vocab = len(set(open(SOURCE, encoding="utf-8").read()))
    config = Config(vocab_size=vocab, hidden_size=FLAGS.hidden_size, num_layers=FLAGS.num_layers,
                    batch_size=batch_size * workers, seq_length=FLAGS.seq_length, xla=False)
    with tf.Graph().as_default():
        weights = ModelWeights(config)
        params = weights.trainable  # makes the LSTM variables too
        weight_bytes = sum(4 * int(np.prod(v.shape.as_list())) for v in params)
    state_bytes = 4 * batch_size * FLAGS.hidden_size * 2 * FLAGS.num_layers
    per_worker_in = weight_bytes  # every weight read once per step
    per_worker_out = weight_bytes + state_bytes + 4 + 8  # gradient, snapshot rows, loss, record
    return {"weight_bytes": weight_bytes, "per_worker_from_ps": per_worker_in, "per_worker_to_ps": per_worker_out,
            "all_workers_from_ps": workers * per_worker_in, "all_workers_to_ps": workers * per_worker_out}


def main():
    from charrnn.tfcompat import cpu_model

    counts = [int(w) for w in FLAGS.workers.split(",")]
    work = tempfile.mkdtemp(prefix="charrnn-bench-cluster-")
    try:
        os.makedirs(f"{work}/data")
        shutil.copy(SOURCE, f"{work}/data/")
        results = {"cpu": cpu_model(), "cores": os.cpu_count(), "intra_op_threads": 1,
                   "model": f"{FLAGS.num_layers}x{FLAGS.hidden_size}", "batch_size_per_worker": FLAGS.batch_size,
                   "seq_length": FLAGS.seq_length, "steps": FLAGS.steps, "single": {}, "cluster": {}}
        for batch in (FLAGS.batch_size, 4 * FLAGS.batch_size):
            found = windows(CHIEF_LINE, run(train_flags(work, f"single{batch}", batch)))
            results["single"][f"batch_{batch}"] = {
                "ms_per_step": round(statistics.mean(ms for ms, _ in found), 1),
                "chars_per_sec": round(statistics.mean(cps for _, cps in found))}
        modes = FLAGS.modes.split(",")
        if not set(modes) <= {"sync", "async"}:
            raise ConfigError(f"--modes {FLAGS.modes!r}: use sync, async or sync,async")
        for w in counts:
            for mode in modes:
                name = f"{w}_workers" + ("_async" if mode == "async" else "")
                extra = ["--nosync_replicas"] if mode == "async" else []
                text = run([f"--local_cluster=1,{w}", *train_flags(work, f"cluster{name}", FLAGS.batch_size), *extra])
                chief = windows(CHIEF_LINE, "\n".join(line for line in text.splitlines()
                                                      if line.startswith("[worker0]")))
                if mode == "async":
                    # Each worker's rate of updates of B*T characters (its own ms per update),
                    # summed, is the global rate: the time in training steps only, as the single
                    # processes and the synchronous chief measure it (the chief's chars/s, the
                    # cluster's over wall time, would also count its saves and waits).
                    chief_ms = statistics.mean(ms for ms, _ in chief)
                    other_ms = [statistics.mean(c for (c,) in windows(ASYNC_WORKER_LINE, "\n".join(
                        line for line in text.splitlines() if line.startswith(f"[worker{i}]"))))
                        for i in range(1, w)]
                    rate = sum(1000 / ms for ms in [chief_ms, *other_ms])  # updates (global steps) per s
                    entry = {"ms_per_global_step": round(1000 / rate, 1),
                             "global_chars_per_sec": round(rate * FLAGS.batch_size * FLAGS.seq_length),
                             "chief_ms_per_update": round(chief_ms, 1), **traffic(1, FLAGS.batch_size)}
                    if other_ms:
                        entry["other_workers_ms_per_update"] = round(statistics.mean(other_ms), 1)
                    results["cluster"][name] = entry
                    print(f"{name}: {entry}", file=sys.stderr, flush=True)
                    continue
                others = [found for i in range(1, w) for found in windows(WORKER_LINE, "\n".join(
                    line for line in text.splitlines() if line.startswith(f"[worker{i}]")))]
                entry = {"ms_per_global_step": round(statistics.mean(ms for ms, _ in chief), 1),
                         "global_chars_per_sec": round(statistics.mean(cps for _, cps in chief)),
                         **traffic(w, FLAGS.batch_size)}
                if others:
                    entry["other_workers_ms_computing"] = round(statistics.mean(c for c, _ in others), 1)
                    entry["other_workers_ms_waiting"] = round(statistics.mean(x for _, x in others), 1)
                results["cluster"][name] = entry
                print(f"{name}: {entry}", file=sys.stderr, flush=True)
        print(json.dumps(results, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    run_command(main, "bench/cluster.py")
