"""Training on text larger than memory: preparation speed, peak RSS, resume start-up and step
time on generated corpora of several sizes; prints one JSON object.

usage: python bench/memory.py [--sizes_mb 16,1536] [--multibyte_mb 256] [--steps 20]
       [--max_val_chars 1000000] [--work_dir DIR]

Each corpus is shuffled copies of the bundled data/shakespeare.txt (its lines in another order
per file, 16 MB per file), written to a temporary folder and deleted afterwards. For each size:

- preparation: MB/s of ``charrnn.corpus.prepare_dir`` into an empty cache, in this process;
- peak RSS: a fresh ``charrnn-train`` (which prepares the corpus itself, into another empty
  --cache_dir), 2x64 LSTM, --steps steps with one validation (the last step), the
  kernel's high-water mark VmHWM of the process (file-backed pages of the memory map included);
- resume start-up: the same command again (it resumes, reusing the prepared ids): seconds from
  launch to its first "data:" line (the ids mapped), to its "resumed from" line and to its exit
  after one more step;
- step time: training steps timed in-process on the real training graph (2x64, XLA), batches
  from the memory map and from an in-memory copy of the same ids (corpora up to 64 MB)
  alternating in 10-step windows over consecutive batches, as training reads them; medians.

--multibyte_mb adds a corpus whose text is mostly 2- and 3-byte UTF-8 characters (preparation
speed only).
"""
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from charrnn.cli import run_command  # noqa: E402
from charrnn.errors import ConfigError  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("sizes_mb", "16,1536", "Corpus sizes in MB (10^6 bytes), comma-separated.")
flags.DEFINE_integer("multibyte_mb", 256, "Size of the multi-byte corpus (preparation only); 0 skips it.")
flags.DEFINE_integer("steps", 20, "Training steps of the measured run (one validation at the last).")
flags.DEFINE_integer("max_val_chars", 1_000_000, "--max_val_chars of the measured runs.")
flags.DEFINE_integer("timed_steps", 60, "Steps per loader in the step-time comparison.")
flags.DEFINE_string("work_dir", None, "Where the corpora and caches go (default: a temporary folder).")

SOURCE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "shakespeare.txt")
FILE_MB = 16
MODEL = ["--hidden_size", "64", "--num_layers", "2"]


def make_corpus(directory, size_mb, multibyte=False):
    """Shuffled copies of the bundled text, FILE_MB per file, ``size_mb`` in all."""
    os.makedirs(directory)
    with open(SOURCE, encoding="utf-8") as f:
        lines = f.read().splitlines(keepends=True)
    if multibyte:  # 2-byte Greek and 3-byte CJK in place of letters: about 2.3 bytes per character
        table = {ord(c): chr(0x3B1 + i % 24) if i % 2 else chr(0x4E00 + i) for i, c in
                 enumerate("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")}
        lines = [line.translate(table) for line in lines]
    rng = random.Random(0)
    target, written, index = size_mb * 10 ** 6, 0, 0
    while written < target:
        rng.shuffle(lines)
        block = "".join(lines).encode("utf-8")
        per_file = min(FILE_MB * 10 ** 6, target - written)
        with open(os.path.join(directory, f"part-{index:05d}.txt"), "wb") as out:
            done = 0
            while done < per_file:
                piece = block[:per_file - done]
                cut = len(piece.decode("utf-8", "ignore").encode("utf-8"))  # whole characters only
                out.write(piece[:cut])
                done += cut
                if cut == 0:
                    break
        written += done
        index += 1
    return written


def run_train(data_dir, save_dir, cache_dir, extra):
    """Run charrnn-train; return (seconds to each matched stderr line, stderr, peak RSS MiB, wall)."""
    command = [os.path.join(os.path.dirname(sys.executable), "charrnn-train"), "--data_dir", data_dir,
               "--save_dir", save_dir, "--log_dir", os.path.join(save_dir, "logs"), "--cache_dir", cache_dir,
               *MODEL, "--max_val_chars", str(FLAGS.max_val_chars), "--print_every", "10", *extra]
    t0 = time.time()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def sample():
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        peak[0] = max(peak[0], int(line.split()[1]) // 1024)
        except OSError:
            pass

    done = threading.Event()

    def watch():
        while not done.is_set():
            sample()
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    lines, marks = [], {}
    for line in proc.stderr:
        lines.append(line)
        for key in ("resumed from", "saved ", "data:"):
            if line.startswith(key):
                marks.setdefault(key.strip(), round(time.time() - t0, 2))
    proc.wait()
    done.set()
    watcher.join()
    if proc.returncode != 0:
        raise ConfigError(f"charrnn-train failed: {''.join(lines)[-600:]}")
    return marks, "".join(lines), peak[0], round(time.time() - t0, 2)


def step_times(cache_dir, data_dir, in_memory):
    """Median ms/step of 10-step windows with batches from the memory map and, if ``in_memory``,
    from an in-memory copy of the same ids, alternating."""
    import numpy as np

    from charrnn import train as trainer
    from charrnn.config import Config
    from charrnn.data import TextLoader
    from charrnn.model import TrainGraph
    from charrnn.tfcompat import load, session_config

    config = Config(hidden_size=64, num_layers=2, val_frac=0.1)
    run = trainer.prepare(config, data_dir, os.path.join(cache_dir, "unused-save"), cache_dir=cache_dir)
    loaders = {"memmap": run.train}
    if in_memory:
        ids = np.array(run.train.x).reshape(-1)  # the same training ids, copied into memory
        ids = np.concatenate([ids, np.asarray(run.train.y[-1, -1:])])
        loaders["in_memory"] = TextLoader(ids, config.batch_size, config.seq_length)
    tf, tf1 = load()
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(0)
        model = TrainGraph(run.config)
        init = tf1.global_variables_initializer()
    graph.finalize()
    windows = {name: [] for name in loaders}
    with tf1.Session(graph=graph, config=session_config()) as session:
        session.run(init)
        k = 0
        for _ in range(10):  # warm-up (and the XLA compile)
            x, y = run.train.batch(k)
            session.run(model.train_op, {model.inputs: x, model.targets: y})
            k += 1
        for _ in range(FLAGS.timed_steps // 10):
            for name, loader in loaders.items():
                t0 = time.perf_counter()
                for _ in range(10):
                    x, y = loader.batch(k % loader.num_batches)
                    session.run(model.train_op, {model.inputs: x, model.targets: y})
                    k += 1
                windows[name].append((time.perf_counter() - t0) / 10)
    return {name: round(1000 * statistics.median(w), 2) for name, w in windows.items()}


def resume_prepare(data_dir, save_dir, cache_dir):
    """Seconds ``charrnn.train.prepare`` takes to resume ``save_dir`` from the cached ids: the
    data part of a resume's start-up (importing TensorFlow and restoring come on top)."""
    from charrnn import train as trainer
    from charrnn.config import Config

    t0 = time.perf_counter()
    run = trainer.prepare(Config(), data_dir, save_dir, cache_dir=cache_dir)
    seconds = time.perf_counter() - t0
    assert run.resume
    return round(seconds, 3)


def preparation(data_dir, cache_dir, size):
    """Preparation alone, in this process, into an empty cache (deleted afterwards)."""
    from charrnn.corpus import prepare_dir

    t0 = time.perf_counter()
    prepared = prepare_dir(data_dir, cache_dir)
    seconds = time.perf_counter() - t0
    chars, dtype = len(prepared.ids), prepared.ids.dtype.name
    del prepared
    shutil.rmtree(cache_dir, ignore_errors=True)
    return {"characters": chars, "id_dtype": dtype, "preparation_seconds": round(seconds, 2),
            "preparation_mb_per_s": round(size / 1e6 / seconds, 1)}


def measure(work, size_mb, multibyte=False):
    name = f"{size_mb}mb" + ("-multibyte" if multibyte else "")
    data_dir, cache_dir = os.path.join(work, name), os.path.join(work, name + "-cache")
    save_dir = os.path.join(work, name + "-save")
    size = make_corpus(data_dir, size_mb, multibyte)
    result = {"corpus": name, "bytes": size, "files": len(os.listdir(data_dir))}
    steps = ["--max_steps", str(FLAGS.steps), "--eval_every", str(FLAGS.steps)]
    result.update(preparation(data_dir, os.path.join(work, name + "-timing-cache"), size))
    if multibyte:
        shutil.rmtree(data_dir, ignore_errors=True)
        return result
    marks, log, peak, wall = run_train(data_dir, save_dir, cache_dir, steps)
    result.update({"validations": log.count("validation at step"),
                   "train_peak_rss_mib": peak, "train_wall_seconds": wall})
    marks, log, resume_peak, wall = run_train(data_dir, save_dir, cache_dir, ["--max_steps", "1"])
    assert "prepared ids reused" in log, log[-600:]
    result.update({"resume_seconds_to_data_ready": marks.get("data:"),
                   "resume_seconds_to_resumed": marks.get("resumed from"),
                   "resume_wall_seconds": wall, "resume_peak_rss_mib": resume_peak})
    result["resume_prepare_seconds"] = resume_prepare(data_dir, save_dir, cache_dir)
    result["ms_per_step"] = step_times(cache_dir, data_dir, in_memory=size_mb <= 64)
    for path in (data_dir, cache_dir, save_dir):
        shutil.rmtree(path, ignore_errors=True)
    return result


def main():
    try:
        sizes = [int(s) for s in FLAGS.sizes_mb.split(",") if s]
    except ValueError:
        raise ConfigError(f"--sizes_mb must be comma-separated integers (got {FLAGS.sizes_mb!r})")
    if FLAGS.steps < 1 or FLAGS.timed_steps < 10:
        raise ConfigError("--steps must be positive and --timed_steps at least 10")
    work = tempfile.mkdtemp(prefix="charrnn-memory-", dir=FLAGS.work_dir)
    try:
        cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = re.search(r"Model name:\s*(.+)", cpu)
        results = {"cpu": model.group(1).strip() if model else None, "cores": os.cpu_count(),
                   "corpora": [measure(work, size) for size in sizes]}
        if FLAGS.multibyte_mb:
            results["corpora"].append(measure(work, FLAGS.multibyte_mb, multibyte=True))
        print(json.dumps(results, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    run_command(main, "bench/memory.py")
