"""Synchronous data parallelism three ways, measured on one machine: why charrnn uses per-worker tokens.

usage: python bench/sync_designs.py [--workers 1,2] [--steps 40] [--print_every 10]
       [--designs tokens,allreduce,syncreplicas] [--check_steps 3] [--kill_probe]
       [--hidden_size 128] [--num_layers 2] [--batch_size 16] [--seq_length 50]

For each worker count W (add 4 with --workers 1,2,4), on a copy of the bundled data/shakespeare.txt,
the model of bench/cluster.py's default (2x128 LSTM, the cell graph, no XLA), B = --batch_size
streams per worker, every process with one intra-op thread (TF_NUM_INTRAOP_THREADS=1):

- single: one process of batch B (``charrnn-train``), the floor each design adds its cost to;
- tokens: charrnn's own design, ``charrnn-train --local_cluster 1,W`` (bench/cluster.py's harness,
  imported): weights and Adam on a ps task, one token queue per worker, per-variable
  ConditionalAccumulators, the chief averages, clips and applies;
- allreduce: W worker processes of one TensorFlow cluster and no ps (between-graph, TF1 graph
  mode): each keeps its own copy of the weights and Adam's slots, computes the gradient of its
  own rows with charrnn's training pieces, averages the gradients with TensorFlow's collective
  all-reduce (``collective_ops.all_reduce``, one per variable), clips the average's global
  norm and applies Adam itself;
- syncreplicas: TensorFlow's stock ``SyncReplicasOptimizer`` (1 ps, one shared token queue, the
  chief's queue runner), the reference for a barrier-like shared queue. It is known to be wrong
  for charrnn: a fast worker can give two gradients for one step while a slow one's is dropped,
  and it clips each worker's gradient rather than their average.

Every figure is ms per global step: the median over windows of --print_every steps after the
first window (start-up, graph building, first steps) is left out; the overhead over the single
process; and the bytes each worker moves per step, from the variables' sizes (no measurement):
the ps designs read every weight and send a dense gradient (2P per worker, W x 2P through the ps
links), a ring all-reduce sends and receives 2P(W-1)/W per worker.

Correctness of the all-reduce design, checked here: after the timed steps every worker's weights
are identical; and a separate short run of --check_steps steps (the layerwise graph, whose
embedding gradient is dense like the all-reduced one, as tests/test_cluster.py compares) ends
within float rounding of one process of batch W*B: the largest difference is printed.

--kill_probe: a 2-worker all-reduce run whose worker 1 is killed (SIGKILL) after a few steps;
reports what worker 0 does next (each of its steps has a 60 s deadline, so nothing hangs), and
then whether a worker 1 started again can join it.

Prints one JSON object (with the CPU model and the load average); progress goes to stderr.
"""
import importlib.util
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from charrnn.cli import run_command  # noqa: E402
from charrnn.errors import ConfigError  # noqa: E402


def _load_cluster_bench():
    """bench/cluster.py as a module: its harness (and its flags, which are this script's too)."""
    spec = importlib.util.spec_from_file_location("bench_cluster", os.path.join(ROOT, "bench", "cluster.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cluster_bench = _load_cluster_bench()  # defines --workers, --steps, --print_every and the model's flags

FLAGS = flags.FLAGS
FLAGS.set_default("workers", "1,2")
flags.DEFINE_string("designs", "tokens,allreduce,syncreplicas", "Designs to run, comma-separated.")
flags.DEFINE_integer("check_steps", 3, "Steps of the all-reduce run compared with one process of batch W*B "
                     "(0: no check).")
flags.DEFINE_boolean("kill_probe", False, "Also kill one worker of a 2-worker all-reduce run and report what "
                     "the other does.")
flags.DEFINE_float("step_deadline", 60.0, "Seconds a worker's step may take before it gives up (no hangs).")
# Internal: how this script runs as one task of a design (the driver passes these to its children).
flags.DEFINE_string("role", "", "Internal: allreduce, single, ps or syncreplicas.")
flags.DEFINE_string("hosts", "", "Internal: the worker (and ps) addresses.")
flags.DEFINE_integer("task", 0, "Internal: this task's index.")
flags.DEFINE_string("work", "", "Internal: the bench's work directory.")
flags.DEFINE_string("rnn_impl", "cell", "Internal: the training graph.")
flags.DEFINE_string("out", "", "Internal: where a task saves its final weights (.npz).")
flags.DEFINE_integer("kill_after", 0, "Internal (the kill probe): say on stderr when this step is done, and "
                     "try a failed step again.")

CHILD_TIMEOUT = 900  # seconds any one design's run may take before the bench gives up on it


# ---------------------------------------------------------------- the driver


class Children:
    """The task processes the driver starts: every one is killed and reaped on exit, error or Ctrl-C.
    ``ports`` are every port a run was given, checked free at the end."""

    def __init__(self):
        self.procs, self.ports = [], []

    def free_ports(self, count):
        from charrnn.cluster import free_ports

        ports = free_ports(count)
        self.ports.extend(ports)
        return ports

    def check_ports(self):
        """Raise (a one-line ConfigError) if anything still holds a port of this bench's runs."""
        from charrnn.cluster import check_port_free

        for port in self.ports:
            check_port_free(port, "a finished task of this bench")

    def start(self, args, env):
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), *args], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True, preexec_fn=_die_with_parent)
        self.procs.append(proc)
        return proc

    def close(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for stream in (proc.stdout, proc.stderr):
                stream.close()
        self.procs = []


def _die_with_parent():
    """In a task just forked: be killed if the driver dies, however it dies (Linux PR_SET_PDEATHSIG)."""
    import ctypes

    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def task_env():
    return dict(os.environ, TF_NUM_INTRAOP_THREADS="1", PYTHONUNBUFFERED="1")


def common_args(work):
    return [f"--work={work}", f"--hidden_size={FLAGS.hidden_size}", f"--num_layers={FLAGS.num_layers}",
            f"--batch_size={FLAGS.batch_size}", f"--seq_length={FLAGS.seq_length}",
            f"--print_every={FLAGS.print_every}", f"--step_deadline={FLAGS.step_deadline}"]


def finish(procs, what, timeout=CHILD_TIMEOUT):
    """Wait for every process of ``procs``; their parsed last stdout lines (JSON); raise if one failed."""
    results, deadline = [], time.monotonic() + timeout
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise ConfigError(f"{what}: a task did not finish within {timeout} s")
        if proc.returncode != 0:
            raise ConfigError(f"{what}: a task exited with status {proc.returncode}: {err.strip()[-800:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def median_window(ms, first_left_out=False):
    """The median of the windows' ms per step, the first window (start-up) left out (unless
    ``first_left_out`` already: bench/cluster.py's windows() leaves it out)."""
    kept = ms[1:] if len(ms) > 1 and not first_left_out else ms
    return round(statistics.median(kept), 1)


def weight_bytes():
    return cluster_bench.traffic(1, FLAGS.batch_size)["weight_bytes"]


def run_tokens(children, work, w):
    text = cluster_bench.run([f"--local_cluster=1,{w}",
                              *cluster_bench.train_flags(work, f"tokens{w}", FLAGS.batch_size)])
    chief = cluster_bench.windows(cluster_bench.CHIEF_LINE, "\n".join(
        line for line in text.splitlines() if line.startswith("[worker0]")))
    launched = next(line for line in text.splitlines() if line.startswith("local cluster: 1 ps on"))
    children.ports.extend(int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", launched))
    return [ms for ms, _ in chief]


def run_single(work):
    text = cluster_bench.run(cluster_bench.train_flags(work, "single", FLAGS.batch_size))
    return [ms for ms, _ in cluster_bench.windows(cluster_bench.CHIEF_LINE, text)]


def run_allreduce(children, work, w, steps, rnn_impl, name):
    """W all-reduce workers for ``steps`` steps: (each worker's result, each worker's weights file)."""
    hosts = ",".join(f"127.0.0.1:{p}" for p in children.free_ports(w))
    outs = [os.path.join(work, f"{name}-{i}.npz") for i in range(w)]
    procs = [children.start(["--role=allreduce", f"--hosts={hosts}", f"--task={i}", f"--steps={steps}",
                             f"--rnn_impl={rnn_impl}", f"--out={outs[i]}", *common_args(work)], task_env())
             for i in range(w)]
    try:
        return finish(procs, f"all-reduce, {w} worker(s)"), outs
    finally:
        children.close()


def run_syncreplicas(children, work, w):
    ports = children.free_ports(w + 1)
    hosts = ",".join(f"127.0.0.1:{p}" for p in ports)  # ps first, then the workers
    children.start(["--role=ps", f"--hosts={hosts}", *common_args(work)], task_env())
    procs = [children.start(["--role=syncreplicas", f"--hosts={hosts}", f"--task={i}",
                             f"--steps={FLAGS.steps}", *common_args(work)], task_env()) for i in range(w)]
    try:
        results = finish(procs[:1], f"SyncReplicasOptimizer, {w} worker(s)")  # the chief ends the run
        return results[0]
    finally:
        children.close()  # the ps and any worker still waiting for a token


def max_difference(files_a, files_b):
    import numpy as np

    worst = 0.0
    for a, b in zip(files_a, files_b):
        with np.load(a) as x, np.load(b) as y:
            if sorted(x.files) != sorted(y.files):
                raise ConfigError(f"{a} and {b} hold different variables")
            worst = max(worst, max(float(np.max(np.abs(x[k] - y[k]))) for k in x.files))
    return worst


def check_against_single(children, work, w):
    """The all-reduce run of --check_steps steps against one process of batch W*B (layerwise)."""
    _, outs = run_allreduce(children, work, w, FLAGS.check_steps, "layerwise", f"check{w}")
    single = os.path.join(work, f"check{w}-single.npz")
    proc = children.start(["--role=single", f"--task={w}", f"--steps={FLAGS.check_steps}",
                           f"--out={single}", *common_args(work)], task_env())
    try:
        finish([proc], "the single process of batch W*B")
    finally:
        children.close()
    return max_difference(outs[:1], [single]), max_difference(outs, [outs[0]] * len(outs))


def _output_within(proc, seconds, what):
    """(stdout, stderr) of ``proc`` once it ends, killing it after ``seconds`` (then saying ``what``)."""
    try:
        return proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return out, err + f"\n({what}; killed)"


def kill_probe(children, work):
    """Kill worker 1 of a 2-worker all-reduce run; what does worker 0 do, and can a new worker 1 join?"""
    hosts = ",".join(f"127.0.0.1:{p}" for p in children.free_ports(2))
    args = ["--role=allreduce", f"--hosts={hosts}", "--steps=40", "--kill_after=8", "--step_deadline=30",
            *[a for a in common_args(work) if not a.startswith("--step_deadline")]]
    try:
        first = children.start([*args, "--task=0"], task_env())
        second = children.start([*args, "--task=1"], task_env())
        # Worker 1 tells (stderr) when it has done its 8th step; then it is killed.
        for line in second.stderr:
            if "step 8 done" in line:
                break
        second.kill()
        second.wait()
        killed_at, killed_epoch = time.monotonic(), time.time()
        log("kill probe: worker 1 killed (SIGKILL) after its step 8; a new worker 1 starts 2 s later")
        time.sleep(2)
        again = children.start([*args, "--task=1"], task_env())
        out0, err0 = _output_within(first, 240, "worker 0 still running 240 s after the kill")
        seconds = round(time.monotonic() - killed_at, 1)
        out1, err1 = _output_within(again, 60, "the new worker 1 still running 60 s after worker 0 ended")
        failed = re.search(r"failed at ([\d.]+)", err0)
        return {"worker0_first_error_seconds_after_kill":
                round(float(failed.group(1)) - killed_epoch, 1) if failed else None,
                "worker0_exit_status": first.returncode, "worker0_ended_seconds_after_kill": seconds,
                "worker0_lines": [line for line in err0.splitlines() if "all-reduce" in line][-9:],
                "new_worker1_exit_status": again.returncode,
                "new_worker1_lines": [line for line in err1.splitlines() if "all-reduce" in line or "killed" in line][-9:]}
    finally:
        children.close()


def log(message):
    print(message, file=sys.stderr, flush=True)


def load_average():
    return [round(x, 2) for x in os.getloadavg()]


def drive():
    import shutil

    from charrnn.tfcompat import cpu_model

    designs = [d for d in FLAGS.designs.split(",") if d]
    unknown = set(designs) - {"tokens", "allreduce", "syncreplicas"}
    if unknown:
        raise ConfigError(f"--designs {FLAGS.designs!r}: use tokens, allreduce, syncreplicas (comma-separated)")
    counts = [int(w) for w in FLAGS.workers.split(",")]
    signal.signal(signal.SIGTERM, _terminated)  # through the finally below, like Ctrl-C
    work = tempfile.mkdtemp(prefix="charrnn-bench-sync-")
    children = Children()
    loads = [load_average()]
    try:
        os.makedirs(f"{work}/data")
        shutil.copy(cluster_bench.SOURCE, f"{work}/data/")
        P = weight_bytes()
        results = {"cpu": cpu_model(), "cores": os.cpu_count(), "intra_op_threads": 1,
                   "model": f"{FLAGS.num_layers}x{FLAGS.hidden_size}, cell graph, no XLA",
                   "batch_size_per_worker": FLAGS.batch_size, "seq_length": FLAGS.seq_length,
                   "steps": FLAGS.steps, "window": FLAGS.print_every, "weight_bytes": P, "runs": {}}
        single = median_window(run_single(work), first_left_out=True)
        results["single_batch_B_ms_per_step"] = single
        log(f"single process, batch {FLAGS.batch_size}: {single} ms/step")
        for w in counts:
            for design in designs:
                loads.append(load_average())
                if design == "tokens":
                    windows = run_tokens(children, work, w)
                    ms = median_window(windows, first_left_out=True)
                    entry = {"ms_per_global_step": ms, "bytes_per_worker_per_step": 2 * P,
                             "bytes_through_ps_links_per_step": w * 2 * P}
                elif design == "allreduce":
                    found, outs = run_allreduce(children, work, w, FLAGS.steps, "cell", f"timed{w}")
                    windows = found[0]["window_ms"][1:]
                    ms = median_window(found[0]["window_ms"])
                    entry = {"ms_per_global_step": ms, "bytes_per_worker_per_step": round(2 * P * (w - 1) / w),
                             "workers_weights_max_difference": max_difference(outs, [outs[0]] * w)}
                    if FLAGS.check_steps:
                        vs_single, between = check_against_single(children, work, w)
                        entry[f"max_difference_vs_one_process_of_batch_{w * FLAGS.batch_size}"] = vs_single
                        entry["check_workers_max_difference"] = between
                else:
                    found = run_syncreplicas(children, work, w)
                    windows = found["window_ms"][1:]
                    ms = median_window(found["window_ms"])
                    entry = {"ms_per_global_step": ms, "bytes_per_worker_per_step": 2 * P,
                             "bytes_through_ps_links_per_step": w * 2 * P}
                entry["overhead_ms_over_single"] = round(ms - single, 1)
                entry["windows_ms"] = [round(x, 1) for x in windows]  # those the median is of
                results["runs"][f"{design}_{w}"] = entry
                log(f"{design}, {w} worker(s): {entry}")
        if FLAGS.kill_probe:
            results["kill_probe"] = kill_probe(children, work)
        loads.append(load_average())
        results["load_average_1_5_15_min_during_runs"] = loads
        children.close()
        children.check_ports()
        results["ports_free_at_exit"] = len(children.ports)
        print(json.dumps(results, indent=1))
    finally:
        children.close()
        shutil.rmtree(work, ignore_errors=True)


def _terminated(signum, frame):
    raise KeyboardInterrupt  # run_command turns it into one line and status 130


# ---------------------------------------------------------------- the tasks


def task_config(batch_size, rnn_impl="cell"):
    from charrnn.config import Config

    return Config(hidden_size=FLAGS.hidden_size, num_layers=FLAGS.num_layers, batch_size=batch_size,
                  seq_length=FLAGS.seq_length, val_frac=0.0, xla=False, rnn_impl=rnn_impl, num_epochs=1)


def prepared(config, name, replica=None):
    from charrnn import train as trainer

    return trainer.prepare(config, f"{FLAGS.work}/data", f"{FLAGS.work}/{name}", cache_dir=f"{FLAGS.work}/cache",
                           replica=replica)


def timed_loop(session, run_step, loader, steps, name):
    """Run ``steps`` steps, step g on batch g of the streams (state reset at each epoch's start);
    ms per step of each window of --print_every steps."""
    windows, started = [], time.perf_counter()
    for g in range(steps):
        run_step(g, *loader.batch(g % loader.num_batches))
        if (g + 1) % FLAGS.print_every == 0:
            windows.append(1000 * (time.perf_counter() - started) / FLAGS.print_every)
            log(f"{name}: step {g + 1}/{steps} {windows[-1]:.1f} ms/step")
            started = time.perf_counter()
        if FLAGS.kill_after and g + 1 == FLAGS.kill_after:
            log(f"{name}: step {g + 1} done")
    return windows


def save_weights(session, params, path):
    import numpy as np

    values = session.run(params)
    np.savez(path, **{p.op.name.replace("/", "__"): v for p, v in zip(params, values)})


def allreduce_task():
    """One worker of the all-reduce design: its own weights, its rows' gradient, the mean by collective all-reduce."""
    from tensorflow.python.ops import collective_ops

    from charrnn.model import (CarriedState, ModelWeights, _transposed_kernels, clipped_adam, model_scope,
                               training_loss)
    from charrnn.tfcompat import load

    tf, tf1 = load()
    hosts = FLAGS.hosts.split(",")
    W, index = len(hosts), FLAGS.task
    me = f"/job:worker/task:{index}"
    # As CollectiveAllReduceStrategy configures a TF1 session between graphs: a group leader
    # resolves who takes part, and the device filter keeps this task's master to its own devices
    # (the collective ops reach the others through the runtime, not through the master).
    proto = tf1.ConfigProto()
    proto.experimental.collective_group_leader = "/job:worker/replica:0/task:0"
    proto.device_filters.append(me)
    server = tf1.train.Server(tf1.train.ClusterSpec({"worker": hosts}), "worker", index, config=proto)
    run = prepared(task_config(FLAGS.batch_size, FLAGS.rnn_impl), f"allreduce-{index}", replica=(index, W))
    c, loader = run.config, run.train
    B, T = loader.batch_size, c.seq_length
    graph = tf.Graph()
    with graph.as_default(), tf1.device(me), model_scope():
        tf1.set_random_seed(c.seed)  # every worker starts from the same weights
        global_step = tf1.train.get_or_create_global_step()
        weights = ModelWeights(c)
        state = CarriedState("worker_state", c, B, saved=False)
        inputs = tf1.placeholder(tf.int32, [B, T], "inputs")
        targets = tf1.placeholder(tf.int32, [B, T], "targets")
        transposed = _transposed_kernels(weights) if c.rnn_impl == "layerwise" else {}
        loss, final_state = training_loss(c, weights, inputs, targets, tf.ones([B, T]), state.read(), {}, transposed)
        params = weights.trainable
        grads = [tf.convert_to_tensor(g) for g in tf.gradients(loss, params)]  # dense, as the ps design sends
        # The mean over the W workers of each gradient: one collective per variable, the same
        # instance key for the same variable on every worker.
        means = [collective_ops.all_reduce(g, W, 1, k + 1, "Add", "Div") for k, g in enumerate(grads)]
        apply, _ = clipped_adam(c, tf.constant(c.learning_rate), means, params, global_step)
        train_op = tf.group(apply, *state.assign(final_state))
        init = [tf1.global_variables_initializer(), tf1.local_variables_initializer()]
    graph.finalize()
    options = tf1.RunOptions(timeout_in_ms=int(1000 * FLAGS.step_deadline))
    session = tf1.Session(server.target, graph=graph, config=proto)
    session.run(init)

    def step(g, x, y):
        if g % loader.num_batches == 0:
            session.run(state.reset_op)
        session.run(train_op, {inputs: x, targets: y}, options=options)

    name = f"all-reduce worker {index}"
    if FLAGS.kill_after:  # the kill probe: a failed step is tried again (3 times), to see whether it can be
        plain = step

        def step(g, x, y):
            for attempt in range(4):
                try:
                    return plain(g, x, y)
                except tf1.errors.OpError as e:
                    log(f"{name}: step {g + 1} failed at {time.time():.2f} ({type(e).__name__}: {cause(e.message)})")
                    if attempt == 3:
                        raise
                    time.sleep(3)
                    log(f"{name}: step {g + 1} again")
    try:
        windows = timed_loop(session, step, loader, FLAGS.steps, name)
    except tf1.errors.OpError as e:
        log(f"{name}: gives up ({type(e).__name__})")
        exit_now(3)
    save_weights(session, params, FLAGS.out)
    print(json.dumps({"task": index, "window_ms": windows}), flush=True)
    exit_now(0)


def single_task():
    """One process of batch W*B (--task W) with charrnn's TrainGraph on the layerwise graph: the reference."""
    from charrnn.model import TrainGraph
    from charrnn.tfcompat import load

    tf, tf1 = load()
    run = prepared(task_config(FLAGS.task * FLAGS.batch_size, "layerwise"), f"single-{FLAGS.task}")
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(run.config.seed)
        model = TrainGraph(run.config)
        params = tf1.trainable_variables()
        init = tf1.global_variables_initializer()
    with tf1.Session(graph=graph) as session:
        session.run(init)
        timed_loop(session, lambda g, x, y: session.run(model.train_op, {model.inputs: x, model.targets: y}),
                   run.train, FLAGS.steps, "single process")
        save_weights(session, params, FLAGS.out)
    print(json.dumps({"task": "single"}), flush=True)


def ps_task():
    """The ps of the SyncReplicasOptimizer run: serves until the driver kills it."""
    from charrnn.tfcompat import load

    _, tf1 = load()
    hosts = FLAGS.hosts.split(",")
    spec = tf1.train.ClusterSpec({"ps": hosts[:1], "worker": hosts[1:]})
    tf1.train.Server(spec, "ps", 0).join()


def syncreplicas_task():
    """One worker of the stock SyncReplicasOptimizer design (1 ps, one shared token queue, the
    chief's queue runner takes the first W gradients of each step), under MonitoredTrainingSession
    as TF1 trainers ran it. Each worker clips its own gradient (what the stock optimizer allows).
    The chief stops at global step --steps and reports its ms per global step; the others are
    killed by the driver (they wait for a token that never comes)."""
    from charrnn.model import CarriedState, ModelWeights, model_scope, training_loss
    from charrnn.tfcompat import load

    tf, tf1 = load()
    hosts = FLAGS.hosts.split(",")
    W, index = len(hosts) - 1, FLAGS.task
    me = f"/job:worker/task:{index}"
    spec = tf1.train.ClusterSpec({"ps": hosts[:1], "worker": hosts[1:]})
    proto = tf1.ConfigProto()
    proto.device_filters.extend(["/job:ps", me])
    server = tf1.train.Server(spec, "worker", index, config=proto)
    run = prepared(task_config(FLAGS.batch_size), f"syncreplicas-{index}", replica=(index, W))
    c, loader = run.config, run.train
    B, T = loader.batch_size, c.seq_length
    graph = tf.Graph()
    with graph.as_default():
        with tf1.device(tf1.train.replica_device_setter(cluster=spec, worker_device=me)), model_scope():
            tf1.set_random_seed(c.seed)
            global_step = tf1.train.get_or_create_global_step()
            weights = ModelWeights(c)
            with tf1.device(me):  # this worker's streams, local to it
                state = CarriedState("worker_state", c, B, saved=False)
            inputs = tf1.placeholder(tf.int32, [B, T], "inputs")
            targets = tf1.placeholder(tf.int32, [B, T], "targets")
            loss, final_state = training_loss(c, weights, inputs, targets, tf.ones([B, T]), state.read(), {}, {})
            params = weights.trainable
            grads = [tf.convert_to_tensor(g) for g in tf.gradients(loss, params)]
            clipped, _ = tf.clip_by_global_norm(grads, c.grad_clip)
            optimizer = tf1.train.SyncReplicasOptimizer(tf1.train.AdamOptimizer(c.learning_rate),
                                                        replicas_to_aggregate=W, total_num_replicas=W)
            # The carried state beside the update, not before it: the chief's queue runner runs
            # the aggregated update on its own, and nothing it runs may need a fed placeholder.
            train_op = tf.group(optimizer.apply_gradients(zip(clipped, params), global_step),
                                *state.assign(final_state))
        hook = optimizer.make_session_run_hook(is_chief=index == 0)
        session = tf1.train.MonitoredTrainingSession(master=server.target, is_chief=index == 0, hooks=[hook],
                                                     config=proto, save_checkpoint_secs=None,
                                                     save_summaries_steps=None, save_summaries_secs=None,
                                                     log_step_count_steps=None)
    options = tf1.RunOptions(timeout_in_ms=int(1000 * FLAGS.step_deadline))
    name = f"SyncReplicas worker {index}"
    local, windows, started, mark = 0, [], time.perf_counter(), 0
    while True:  # the chief: until the global step reaches --steps; the others: until killed
        x, y = loader.batch(local % loader.num_batches)
        _, g = session.run([train_op, global_step], {inputs: x, targets: y}, options=options)
        local += 1
        if g - mark >= FLAGS.print_every:
            windows.append(1000 * (time.perf_counter() - started) / (g - mark))
            log(f"{name}: global step {g}, {local} local steps, {windows[-1]:.1f} ms per global step")
            started, mark = time.perf_counter(), g
        if index == 0 and g >= FLAGS.steps:
            break
    print(json.dumps({"task": index, "window_ms": windows}), flush=True)
    exit_now(0)  # no session close: it would wait on the queue runner and the other workers


def cause(message):
    """TensorFlow's error message without the Python stack trace it quotes: its last lines."""
    lines = [line.strip() for line in message.splitlines() if line.strip() and not line.startswith(" ")
             and not line.startswith(("File ", "Detected at node", "Graph execution error"))]
    return " ".join(lines)[:600]


def exit_now(status):
    """End the task: TensorFlow's server threads can keep an ordinary exit waiting."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def main():
    roles = {"": drive, "allreduce": allreduce_task, "single": single_task, "ps": ps_task,
             "syncreplicas": syncreplicas_task}
    if FLAGS.role not in roles:
        raise ConfigError(f"--role {FLAGS.role!r}: internal, one of {', '.join(r for r in roles if r)}")
    return roles[FLAGS.role]()


if __name__ == "__main__":
    run_command(main, "bench/sync_designs.py")
