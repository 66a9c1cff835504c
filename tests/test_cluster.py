"""Training on a cluster: the description (flags, TF_CONFIG), its errors, and real clusters of
separate processes on loopback ports started the way a user starts one (--local_cluster)."""
import dataclasses
import json
import re
import shutil
import signal
import socket
import subprocess
import time

import numpy as np
import pytest

from charrnn import cluster as clusters
from charrnn import replica
from charrnn import train as trainer
from charrnn.config import Config
from charrnn.errors import ConfigError
from charrnn.rundir import RunDir
from charrnn.tfcompat import load
from conftest import assert_identical, checkpoint_tensors, command, make_data_dir, run_cli, tiny_config

TEXT = "It is a truth universally acknowledged, that a single man in possession of a good fortune, " * 6
# Each worker's batch; a single process of twice this batch computes what two workers do.
PER_WORKER = dict(hidden_size=16, num_layers=1, batch_size=4, seq_length=8, num_epochs=1, val_frac=0.0,
                  learning_rate=1e-2, grad_clip=0.05, seed=3, print_every=4, save_every=1000, eval_every=1000)


def config_flags(values):
    return [f"--{name}={value}" for name, value in values.items()] + ["--noxla"]


def local_cluster(tmp_path, data, name, *extra, spec="1,2", timeout=240):
    save, logs = tmp_path / f"{name}-save", tmp_path / f"{name}-logs"
    result = run_cli("charrnn-train", f"--local_cluster={spec}", f"--data_dir={data}", f"--save_dir={save}",
                     f"--log_dir={logs}", *config_flags(PER_WORKER), *extra, timeout=timeout)
    return result, str(save), str(logs)


def ports_of(stderr):
    """The loopback ports the launcher gave its tasks, from its first line."""
    line = next(line for line in stderr.splitlines() if line.startswith("local cluster: "))
    return [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", line)]


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    """1 ps + 2 synchronous workers of batch 4, one epoch, run once for the tests below."""
    tmp_path = tmp_path_factory.mktemp("cluster")
    data = make_data_dir(tmp_path, TEXT)
    result, save, _ = local_cluster(tmp_path, data, "sync")
    return tmp_path, data, result, save


def test_a_local_cluster_trains_and_every_task_exits_0_with_its_port_freed(two_workers):
    _, _, result, save = two_workers
    assert result.returncode == 0, result.stderr[-3000:]
    err = result.stderr
    for task in ("[ps0]", "[worker0]", "[worker1]"):
        # Each task says that its port is open to the network.
        assert re.search(re.escape(task) + r" .*TensorFlow server on port \d+.*every network interface "
                         "without authentication", err), task
    assert "[ps0] ps 0: every worker is done; exiting" in err
    assert "[worker1] worker 1: stopped by the chief" in err
    assert re.search(r"\[worker1\] worker 1: step \d+/\d+ +loss", err)  # its own progress lines
    assert "[worker0] saved " in err
    # In a network namespace of its own where the platform allows one (root here; not everywhere).
    assert ("local cluster: in a network namespace of its own" in err
            or "local cluster: no network namespace of its own here" in err)
    for port in ports_of(err):
        clusters.check_port_free(port, "a finished task")  # raises if anything still holds it


def test_two_synchronous_workers_end_with_the_weights_of_one_process_of_twice_the_batch(two_workers, tmp_path):
    """Exactly one gradient from each worker per step, each on its own rows of the layout of
    all 8 streams, clipped after averaging: the same update as one process of batch 8 (a small
    --grad_clip makes the clipping of the aggregated gradient matter).

    The workers send the embedding's gradient dense, so the single process compared is the
    layerwise graph, whose embedding gradient is dense too: the cell graph's is IndexedSlices,
    and TF1's sparse Adam adds the squares of a repeated character's slices where dense Adam
    squares their sum, which moves the weights by about 1e-4 here (as far as the two single
    process graphs are from each other)."""
    _, data, result, save = two_workers
    assert result.returncode == 0, result.stderr[-3000:]
    single = str(tmp_path / "single")
    config = tiny_config(**{**PER_WORKER, "batch_size": 2 * PER_WORKER["batch_size"], "rnn_impl": "layerwise"})
    run = trainer.prepare(config, data, single)
    outcome = trainer.train(run, single, str(tmp_path / "single-logs"))
    cluster_tensors, single_tensors = checkpoint_tensors(save), checkpoint_tensors(single)
    # The same variables, names and shapes: a single machine restores the chief's checkpoint.
    assert cluster_tensors.keys() == single_tensors.keys()
    assert cluster_tensors["model/global_step"] == outcome.step == run.train.num_batches
    for name, value in single_tensors.items():
        np.testing.assert_allclose(cluster_tensors[name], value, rtol=1e-5, atol=2e-6, err_msg=name)
    with open(f"{save}/config.json") as f:
        assert json.load(f)["config"]["batch_size"] == 8  # the global layout
    # A single process opens no port (a TensorFlow server, once started, listens until the end).
    assert listening_sockets() == set()


def listening_sockets():
    """Inodes of the TCP sockets this process holds that listen (from /proc)."""
    import os

    held = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            held.add(target[8:-1])
    listening = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in held:  # state 0A is LISTEN
                    listening.add(fields[9])
    return listening


def test_a_workers_cell_graph_reads_the_ps_held_weights_once_per_step_not_in_every_loop_iteration():
    """The LSTMCell's variables live on the ps tasks; read inside dynamic_rnn's loops (a stateful
    While), every time step fetched them over the network, and a 1-worker step took 2x as long
    (bench/sync_designs.py). Built offline: making the graph needs no server."""
    tf, _ = load()
    config = tiny_config(**{**PER_WORKER, "batch_size": 2 * PER_WORKER["batch_size"], "vocab_size": 20,
                            "xla": False})
    cluster = clusters.describe(ps_hosts="127.0.0.1:1", worker_hosts="127.0.0.1:2,127.0.0.1:3",
                                job_name="worker", task_index=1)
    graph = tf.Graph()
    with graph.as_default():
        replica.ReplicaTrainGraph(config, cluster)
    loops = [op.type for op in graph.get_operations() if op.type in ("While", "StatelessWhile")]
    assert loops and "While" not in loops, loops


def test_layerwise_workers_compile_their_share_with_xla_and_still_match_one_process(tmp_path):
    """On a cluster --xla compiles each worker's forward and backward pass (the weights read on
    the worker first: XLA cannot capture a variable on a ps); the result is still the single
    process's, to XLA's float rounding, with DropConnect (--weight_drop: every worker draws the
    batch's one recurrent mask), zoneout and dropout on inputs and outputs (each worker draws its
    rows of the batch's masks; the single process clips and applies the dense embedding gradient, as the
    workers send it, not TensorFlow's IndexedSlices of the input lookup)."""
    data = make_data_dir(tmp_path, TEXT)
    regularized = dict(weight_drop=0.3, dropout=0.2, zoneout_c=0.5, zoneout_h=0.1)
    result, save, _ = local_cluster(tmp_path, data, "xla", "--rnn_impl=layerwise", "--xla",
                                    *config_flags(regularized)[:-1])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[worker0] xla: XLA for each worker's forward and backward pass, for every worker (the chief's " \
           "choice)" in result.stderr
    assert "[worker1] xla: XLA for each worker's forward and backward pass, as the chief (worker 0) chose" \
        in result.stderr
    with open(f"{save}/config.json") as f:
        assert json.load(f)["config"]["xla"] is True  # a single-machine resume compiles its step too
    single = str(tmp_path / "single")
    config = tiny_config(**{**PER_WORKER, **regularized, "batch_size": 2 * PER_WORKER["batch_size"],
                            "rnn_impl": "layerwise"})
    trainer.train(trainer.prepare(config, data, single), single, str(tmp_path / "single-logs"))
    single_tensors = checkpoint_tensors(single)
    for name, value in checkpoint_tensors(save).items():
        np.testing.assert_allclose(value, single_tensors[name], rtol=1e-5, atol=2e-6, err_msg=name)


def test_the_chiefs_save_dir_samples_evaluates_and_resumes_on_one_machine(two_workers, tmp_path):
    _, data, result, save = two_workers
    assert result.returncode == 0, result.stderr[-3000:]
    sampled = run_cli("charrnn-sample", "--save_dir", save, "--n", "20", "--prime", "It")
    assert sampled.returncode == 0, sampled.stderr
    assert sampled.stdout.startswith("It") and len(sampled.stdout.rstrip("\n")) == 22
    evaluated = run_cli("charrnn-eval", "--save_dir", save, "--text", f"{data}/t.txt", "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["characters"] > 0
    # A single process resumes it (a copy: the other tests read it) with all 8 streams.
    copy = str(tmp_path / "copy")
    shutil.copytree(save, copy)
    run = trainer.prepare(tiny_config(**{**PER_WORKER, "num_epochs": 2}), data, copy, explicit=("num_epochs",))
    assert run.resume and run.config.batch_size == 8
    outcome = trainer.train(run, copy, str(tmp_path / "resume-logs"), max_steps=1)
    assert outcome.step == run.train.num_batches + 1


def test_a_cluster_stopped_and_started_again_ends_as_if_never_stopped(two_workers):
    """Every task stops at --max_steps (the chief's checkpoint); the same command again resumes
    at that global step, each worker at its data position with its streams' carried state, and
    ends bit-identical to the uninterrupted run."""
    tmp_path, data, uninterrupted, reference = two_workers
    first, save, _ = local_cluster(tmp_path, data, "resumed", "--max_steps=3")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "[worker0] max_steps: step 3/8" in first.stderr
    assert "[worker1] worker 1: stopped by the chief" in first.stderr
    second, save, _ = local_cluster(tmp_path, data, "resumed")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "training: 8 batches/epoch, 1 epochs, 8 steps; starting at step 3" in second.stderr
    assert "carried state of its 4 streams is restored, not reset: it continues at step 4" in second.stderr
    assert_identical(checkpoint_tensors(save), checkpoint_tensors(reference))


class Tasks:
    """Cluster tasks started one by one as separate processes (output to files), all killed
    and reaped when the test ends, whatever happened."""

    def __init__(self, tmp_path, args, num_workers=2):
        ports = clusters.free_ports(1 + num_workers)
        self.hosts = [f"--ps_hosts=127.0.0.1:{ports[0]}",
                      "--worker_hosts=" + ",".join(f"127.0.0.1:{p}" for p in ports[1:])]
        self.tmp_path, self.args, self.procs = tmp_path, args, []

    def start(self, job, index):
        log = self.tmp_path / f"{job}{index}-{len(self.procs)}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen([command("charrnn-train"), *self.args, *self.hosts, f"--job_name={job}",
                                     f"--task_index={index}"], stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc, log

    def close(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.fixture
def tasks(tmp_path):
    started = []

    def make(args):
        started.append(Tasks(tmp_path, args))
        return started[-1]

    yield make
    for t in started:
        t.close()


def wait_for_line(log, pattern, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if re.search(pattern, log.read_text()):
            return
        assert proc.poll() is None, log.read_text()[-2000:]
        time.sleep(0.1)
    raise AssertionError(f"no {pattern!r} in {log} within {timeout} s:\n" + log.read_text()[-2000:])


def test_a_killed_worker_started_again_lets_the_run_go_on(tmp_path, tasks):
    data = make_data_dir(tmp_path, TEXT * 8)
    args = [f"--data_dir={data}", f"--save_dir={tmp_path / 'save'}", f"--log_dir={tmp_path / 'logs'}",
            *config_flags({**PER_WORKER, "num_epochs": 3, "print_every": 10})]
    cluster = tasks(args)
    ps, ps_log = cluster.start("ps", 0)
    chief, chief_log = cluster.start("worker", 0)
    worker, worker_log = cluster.start("worker", 1)
    wait_for_line(worker_log, r"worker 1: step 20/", worker)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    again, again_log = cluster.start("worker", 1)
    for proc in (again, chief, ps):
        assert proc.wait(timeout=180) == 0, (again_log.read_text() + chief_log.read_text())[-4000:]
    total = int(re.search(r"training: \d+ batches/epoch, 3 epochs, (\d+) steps", chief_log.read_text())[1])
    assert f"complete: step {total}/{total}" in chief_log.read_text()
    assert re.search(r"worker 1: the carried state of its 4 streams is restored, not reset", again_log.read_text())
    assert f"worker 1: step {total}/{total}" in again_log.read_text()
    assert "every worker is done" in ps_log.read_text()


def test_a_killed_asynchronous_worker_started_again_rejoins_and_the_run_ends(tmp_path, tasks):
    """--nosync_replicas: kill -9 a non-chief worker mid-run and start it again; it goes on at
    global step // W of its own streams with the carried state reset, the chief never waited for
    it, and every task exits 0 when the global step reaches the end."""
    data = make_data_dir(tmp_path, TEXT * 8)
    args = [f"--data_dir={data}", f"--save_dir={tmp_path / 'save'}", f"--log_dir={tmp_path / 'logs'}",
            # Long enough (1,360 global steps) that the chief, which never waits for an
            # asynchronous worker, cannot end the run while the new worker 1 starts under load.
            "--nosync_replicas", *config_flags({**PER_WORKER, "num_epochs": 10, "print_every": 10})]
    cluster = tasks(args)
    ps, ps_log = cluster.start("ps", 0)
    chief, chief_log = cluster.start("worker", 0)
    worker, worker_log = cluster.start("worker", 1)
    wait_for_line(worker_log, r"worker 1: global step \d+/", worker)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    again, again_log = cluster.start("worker", 1)
    for proc in (again, chief, ps):
        assert proc.wait(timeout=180) == 0, (again_log.read_text() + chief_log.read_text())[-4000:]
    said = again_log.read_text()
    resumed_at = int(re.search(r"worker 1: asynchronous resume at global step (\d+): its 4 streams go on at "
                               r"batch (\d+) \(global step // 2 workers\), carried state reset", said)[1])
    assert resumed_at > 0
    total = int(re.search(r"training: \d+ batches/epoch, 10 epochs, (\d+) steps", chief_log.read_text())[1])
    ended = int(re.search(rf"complete: step (\d+)/{total}", chief_log.read_text())[1])
    assert total <= ended <= total + 2  # updates in flight when the chief stopped may still land
    assert re.search(r"worker 1: (stopped by the chief|the run reached step \d+/\d+) after [1-9]\d* update",
                     said), said[-2000:]
    assert "every worker is done" in ps_log.read_text()


def test_a_worker_takes_the_chiefs_configuration_and_refuses_other_data_in_one_line(tmp_path, tasks):
    """Non-chief workers build their graph from the configuration the chief publishes on ps 0,
    saying where their own flags differed (so a task started with fewer or other flags still
    trains the chief's model); a worker whose data layout differs refuses in one line."""
    data = make_data_dir(tmp_path, TEXT)
    args = [f"--data_dir={data}", f"--save_dir={tmp_path / 'save'}", f"--log_dir={tmp_path / 'logs'}",
            *config_flags(PER_WORKER)]
    cluster = tasks(args)
    ps, ps_log = cluster.start("ps", 0)
    chief, chief_log = cluster.start("worker", 0)
    # Its own --save_dir, as on a machine of its own (a save directory of the chief's that it found
    # would be checked against its flags first).
    cluster.args = [*args, f"--save_dir={tmp_path / 'worker-save'}", "--hidden_size=32", "--learning_rate=0.5"]
    worker, worker_log = cluster.start("worker", 1)
    for proc, log in ((worker, worker_log), (chief, chief_log), (ps, ps_log)):
        assert proc.wait(timeout=180) == 0, log.read_text()[-3000:]
    said = worker_log.read_text()
    assert re.search(r"worker 1: takes the chief's configuration where its own differs: "
                     r"--hidden_size 16 \(its flags: 32\), --learning_rate 0.01 \(its flags: 0.5\)", said), said
    assert "complete: step" in chief_log.read_text()

    other = tasks([*args, f"--save_dir={tmp_path / 'save2'}"])
    ps, _ = other.start("ps", 0)
    chief, _ = other.start("worker", 0)
    other.args = [*args, f"--save_dir={tmp_path / 'worker-save2'}", "--seq_length=4"]
    worker, worker_log = other.start("worker", 1)
    assert worker.wait(timeout=120) != 0
    errors = [line for line in worker_log.read_text().splitlines() if "error" in line]
    assert errors == ["charrnn-train: error: worker 1: its training data differs from the chief's (seq_length 4, "
                      "the chief's 8); start every task with the same --data_dir contents and flags"], errors
    assert "Traceback" not in worker_log.read_text()


def test_a_failing_task_stops_the_whole_local_cluster(tmp_path):
    """Every worker refuses a missing data folder; the ps, left waiting, is stopped, and the
    launcher exits non-zero with every task reaped."""
    result, _, _ = local_cluster(tmp_path, str(tmp_path / "missing"), "fail", timeout=120)
    assert result.returncode != 0
    assert re.search(r"\[worker\d\] charrnn-train: error: worker \d.*: ", result.stderr)
    assert "stopping the other tasks" in result.stderr
    for port in ports_of(result.stderr):
        clusters.check_port_free(port, "a stopped task")


# ---------------------------------------------------------------- the description and its errors

def test_flags_describe_the_cluster_and_worker_0_is_the_chief():
    c = clusters.describe("a:1,b:2", "c:3,d:4,e:5", "worker", 2)
    assert (c.ps, c.workers, c.job, c.index, c.is_chief) == (("a:1", "b:2"), ("c:3", "d:4", "e:5"), "worker", 2, False)
    assert clusters.describe("a:1", "c:3", "worker", None).is_chief  # --task_index defaults to 0
    assert clusters.describe(None, None, None, None, None) is None  # a single process
    assert clusters.describe(None, None, None, None, "") is None


def test_tf_config_describes_the_cluster_with_its_chief_as_worker_0():
    spec = {"chief": ["ch:1"], "worker": ["w0:2", "w1:3"], "ps": ["p0:4"]}
    chief = clusters.describe(tf_config=json.dumps({"cluster": spec, "task": {"type": "chief", "index": 0}}))
    assert chief.workers == ("ch:1", "w0:2", "w1:3") and chief.is_chief and chief.source == "TF_CONFIG"
    worker = clusters.describe(tf_config=json.dumps({"cluster": spec, "task": {"type": "worker", "index": 1}}))
    assert (worker.job, worker.index, worker.address) == ("worker", 2, "w1:3")
    ps = clusters.describe(tf_config=json.dumps({"cluster": spec, "task": {"type": "ps", "index": 0}}))
    assert (ps.job, ps.index) == ("ps", 0)
    no_chief = {"worker": ["w0:2", "w1:3"], "ps": ["p0:4"]}
    first = clusters.describe(tf_config=json.dumps({"cluster": no_chief, "task": {"type": "worker", "index": 0}}))
    assert first.is_chief
    # Flags win over TF_CONFIG.
    assert clusters.describe("x:1", "y:2", "ps", 0, json.dumps({"cluster": spec, "task": {"type": "chief"}})).ps == ("x:1",)


@pytest.mark.parametrize("args, message", [
    (("a:1", "b:2", "chief", 0), r"--job_name 'chief': unknown job; use ps or worker"),
    (("a:1", "b:2,c:3", "worker", 2), r"--task_index 2 is out of range: --worker_hosts lists 2 task\(s\)"),
    (("a:1", "b:2", "ps", -1), r"--task_index -1 is out of range"),
    (("", "b:2", "worker", 0), r"--ps_hosts is empty"),
    (("a:1", "b:2", None, 0), r"missing --job_name"),
    ((None, "b:2", "worker", 0), r"missing --ps_hosts"),
    (("a", "b:2", "worker", 0), r"--ps_hosts: 'a' is not host:port"),
    (("a:1", "b:70000", "worker", 0), r"'b:70000' is not host:port"),
    (("a:1", "a:1", "worker", 0), r"a:1 is given to more than one task"),
])
def test_wrong_cluster_flags_are_one_line_errors(args, message):
    with pytest.raises(ConfigError, match=message) as error:
        clusters.describe(*args)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("tf_config, message", [
    ("{not json", r"TF_CONFIG is not valid JSON"),
    ('{"cluster": {"ps": ["p:1"]}}', r"needs a 'cluster' object and a 'task' object"),
    ('{"cluster": {"ps": ["p:1"], "worker": ["w:2"], "evaluator": ["e:3"]}, "task": {"type": "worker"}}',
     r"unknown job\(s\) \['evaluator'\]"),
    ('{"cluster": {"ps": ["p:1"], "worker": ["w:2"]}, "task": {"type": "worker", "index": 1}}',
     r"task index 1 is out of range: cluster.worker lists 1 task"),
    ('{"cluster": {"ps": ["p:1"], "worker": ["w:2"]}, "task": {"type": "master", "index": 0}}',
     r"task type 'master' is unknown"),
    ('{"cluster": {"worker": ["w:2"]}, "task": {"type": "worker", "index": 0}}', r"cluster.ps is empty"),
    ('{"cluster": {"ps": ["p:1"], "chief": ["a:2", "b:3"]}, "task": {"type": "chief"}}', r"one chief"),
])
def test_a_wrong_tf_config_is_a_one_line_error(tf_config, message):
    with pytest.raises(ConfigError, match=message) as error:
        clusters.describe(tf_config=tf_config)
    assert "\n" not in str(error.value)


def test_a_taken_port_and_a_silent_host_are_one_line_errors():
    holder = socket.socket()
    holder.bind(("0.0.0.0", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        with pytest.raises(ConfigError, match=rf"port {port} of worker 0 .* is already taken"):
            clusters.check_port_free(port, "worker 0 (127.0.0.1:%d)" % port)
    finally:
        holder.close()
    silent = clusters.free_ports(1)[0]
    with pytest.raises(ConfigError, match=rf"ps 0 at 127.0.0.1:{silent} did not answer within 0.5 s "
                                          r"\(--cluster_timeout\)"):
        clusters.wait_for_hosts([("ps 0", f"127.0.0.1:{silent}")], 0.5, lambda line: None, "--ps_hosts")


def test_the_command_refuses_wrong_cluster_flags_in_one_line(tmp_path):
    result = run_cli("charrnn-train", "--ps_hosts=127.0.0.1:1", "--worker_hosts=127.0.0.1:2",
                     "--job_name=worker", "--task_index=5", f"--save_dir={tmp_path / 'save'}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "charrnn-train: error: --task_index 5 is out of range: --worker_hosts lists 1 task(s), indices 0 to 0"]
    bad = run_cli("charrnn-train", "--local_cluster=1,0")
    assert bad.returncode == 2 and "--local_cluster '1,0': give PS,WORKERS" in bad.stderr
    assert not (tmp_path / "save").exists()


def test_the_kubernetes_example_is_one_cluster_behind_its_network_policy():
    """examples/kubernetes: each pod's TF_CONFIG describes the same cluster, with this pod as its
    task; every address is a Service selecting exactly that pod, on the port the pod opens and
    the NetworkPolicy admits, only from the job's own pods."""
    import os

    import yaml

    path = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "kubernetes", "charrnn-cluster.yaml")
    with open(path) as f:
        documents = list(yaml.safe_load_all(f))
    by_kind = {}
    for doc in documents:
        by_kind.setdefault(doc["kind"], []).append(doc)
    (policy,), services, pods = by_kind["NetworkPolicy"], by_kind["Service"], by_kind["Pod"]
    job = policy["spec"]["podSelector"]["matchLabels"]
    (rule,) = policy["spec"]["ingress"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": job}}]  # only the job's own pods
    admitted = {p["port"] for p in rule["ports"]}

    described = {}
    for pod in pods:
        labels = pod["metadata"]["labels"]
        assert job.items() <= labels.items()  # the policy covers every pod
        (container,) = pod["spec"]["containers"]
        env = {e["name"]: e["value"] for e in container["env"]}
        cluster = clusters.describe(tf_config=env["TF_CONFIG"])
        host, port = cluster.address.rsplit(":", 1)
        assert {int(port)} == {p["containerPort"] for p in container["ports"]} <= admitted
        (service,) = [s for s in services if s["metadata"]["name"] == host]
        assert service["spec"]["selector"].items() <= labels.items()
        assert [p for p in pods if service["spec"]["selector"].items() <= p["metadata"]["labels"].items()] == [pod]
        described[pod["metadata"]["name"]] = cluster
        if cluster.job == "worker":
            assert container["command"][0] == "charrnn-train"
            mounts = {m["name"]: m for m in container["volumeMounts"]}
            assert mounts["data"]["readOnly"]
    first = next(iter(described.values()))
    assert all((c.ps, c.workers) == (first.ps, first.workers) for c in described.values())
    assert sorted((c.job, c.index) for c in described.values()) == [("ps", 0), ("worker", 0), ("worker", 1)]
    assert described["charrnn-chief-0"].is_chief


def test_a_single_machine_run_continues_on_workers_that_share_its_streams(tmp_path):
    """Resumed by a cluster, a run keeps its layout: W workers take its streams in W equal
    parts (worker i the i-th), or the command says why they cannot."""
    data = make_data_dir(tmp_path, TEXT)
    save = str(tmp_path / "save")
    config = tiny_config(batch_size=6)
    trainer.train(trainer.prepare(config, data, save), save, str(tmp_path / "logs"), max_steps=1)
    whole = trainer.prepare(config, data, save).train
    second = trainer.prepare(tiny_config(), data, save, replica=(1, 2)).train  # --batch_size not given
    assert second.batch_size == 3 and second.num_batches == whole.num_batches
    for a, b in zip(second.batch(0), whole.batch(0)):
        np.testing.assert_array_equal(a, b[3:])
    with pytest.raises(ConfigError, match=r"the run has 6 streams \(--batch_size\), which 4 workers cannot share "
                                          r"evenly"):
        trainer.prepare(tiny_config(), data, save, replica=(0, 4))


def test_a_new_synchronous_cluster_leaves_its_time_limit_to_the_chief_and_others_say_it_does_not_end_the_schedule(
        tmp_path):
    """--preset cpu30's 30 minutes on a cluster: no single-process timing sets the schedule's end
    (a cluster's speed is its own). A new synchronous run hands the limit to the chief, which
    times the warm-up (see the next test); decay_steps holds the --num_epochs total until then.
    An asynchronous cluster or a warm-up too short to time decays over --num_epochs, and the
    notes say so and what to give instead. A resume keeps the saved total and says nothing."""
    data = make_data_dir(tmp_path, TEXT)
    save = str(tmp_path / "save")
    config = tiny_config(batch_size=4, num_epochs=3, decay_schedule="cosine")
    run = trainer.prepare(config, data, save, replica=(0, 2), budget_minutes=30.0)
    assert run.cluster_budget == 30.0 and run.budget_seconds == 0.0
    assert run.config.decay_steps == 3 * run.train.num_batches
    assert not [n for n in run.notes if n.startswith("warning:")]
    assert (f"schedule: cosine decay to the global step that ends the 30-minute limit: the chief times the "
            f"cluster's global steps 3-99 of the warm-up and fixes it before step 100 (at most --num_epochs 3 x "
            f"{run.train.num_batches} batches)") in run.notes
    for changes, why, per_epoch in [  # an asynchronous global step is one worker's batch
            (dict(sync_replicas=False), "asynchronous workers compute their own learning rates from the "
                                        "configuration they started with", 2 * run.train.num_batches),
            (dict(warmup_steps=12), "the chief times the warm-up's global steps, and --warmup_steps 12 leaves "
                                    "fewer than 10; give at least 13", run.train.num_batches)]:
        other = trainer.prepare(dataclasses.replace(config, **changes), data, save, replica=(0, 2),
                                budget_minutes=30.0)
        assert other.cluster_budget is None and other.config.decay_steps == 3 * per_epoch
        assert [n for n in other.notes if n.startswith("warning:")] == [
            f"warning: this cluster does not turn the 30-minute limit into the schedule's end ({why}); it stops "
            "the run wherever the schedule is then. For a schedule that ends with the time, give --decay_steps "
            "(the global steps that fit)"]
    assert trainer.prepare(dataclasses.replace(config, warmup_steps=13), data, save, replica=(0, 2),
                           budget_minutes=30.0).cluster_budget == 30.0
    single = str(tmp_path / "single")  # a run started on one machine, resumed by the cluster
    first = trainer.prepare(tiny_config(batch_size=8, num_epochs=3, decay_schedule="cosine"), data, single)
    trainer.train(first, single, str(tmp_path / "logs"), max_steps=1)
    again = trainer.prepare(config, data, single, replica=(0, 2), budget_minutes=30.0)
    assert again.resume and again.config.decay_steps == first.config.decay_steps
    assert again.cluster_budget is None and not [n for n in again.notes if n.startswith("warning:")]


def test_a_synchronous_clusters_chief_times_the_warm_up_and_ends_the_schedule_with_the_time_limit(tmp_path):
    """With a time limit, the chief of a new synchronous cluster times the cluster's own global
    steps (and one evaluation) during the warm-up, whose rates do not depend on the schedule's
    end, and fixes decay_steps before the warm-up ends: the run ends at that step (or, on a loaded
    machine, the limit stops it in the schedule's last steps), its learning rate decayed to about 0,
    within the limit, and config.json holds the total for a resume."""
    data = make_data_dir(tmp_path, TEXT)
    limit = 0.4  # minutes
    result, save, _ = local_cluster(tmp_path, data, "budget", "--decay_schedule=cosine", "--warmup_steps=200",
                                    "--num_epochs=100000", "--val_frac=0.2",
                                    # one validation, at the end: in a run this short, saving the best
                                    # checkpoint at each would take a part of the time no estimate holds
                                    "--eval_every=100000", "--save_every=100000",
                                    f"--max_minutes={limit}")
    assert result.returncode == 0, result.stderr[-3000:]
    err = result.stderr
    fixed = re.search(r"\[worker0\] budget: 0\.4 min = ([\d,]+) global steps \([\d.]+ ms per global step over "
                      r"steps 3-199, [\d.]+ s per evaluation, \d+ s left\); the cosine schedule ends at step ([\d,]+)",
                      err)
    assert fixed, err[-3000:]
    total = int(fixed.group(1).replace(",", ""))
    assert total == int(fixed.group(2).replace(",", "")) > 200
    config = RunDir(save).read_config()
    assert config.decay_steps == total
    end = re.search(r"\[worker0\] (complete|max_minutes): step (\d+)/(\d+), .*, ([\d.]+) min this run", err)
    assert end and int(end.group(3)) == total, err[-3000:]
    step, minutes = int(end.group(2)), float(end.group(4))
    # An estimate from ~200 steps: on a loaded machine (load 8 on 2 cores here) the steps after them
    # ran up to 6% slower, and then the limit stopped the run in the schedule's last steps.
    assert step == total if end.group(1) == "complete" else step >= 0.9 * total, (fixed.group(0), end.group(0))
    assert minutes <= limit + 0.05  # the end's save is not in the estimate
    tensors = checkpoint_tensors(save)
    assert tensors["model/global_step"] == step
    assert tensors["model/learning_rate"] == pytest.approx(trainer.learning_rate_at(config, 1, step - 1), abs=1e-9)
    assert tensors["model/learning_rate"] < 0.03 * config.learning_rate  # 0.0245 x at 90% of the cosine


def cluster_and_one_process(tmp_path, name, extra):
    """A local cluster of two workers and one process of twice the batch, both trained with the
    config values ``extra`` (without XLA) on TEXT: their checkpoints' tensors, by the same names."""
    data = make_data_dir(tmp_path, TEXT)
    result, save, _ = local_cluster(tmp_path, data, name, *config_flags(extra)[:-1])
    assert result.returncode == 0, result.stderr[-3000:]
    single = str(tmp_path / "single")
    config = tiny_config(**{**PER_WORKER, **extra, "batch_size": 2 * PER_WORKER["batch_size"]})
    trainer.train(trainer.prepare(config, data, single), single, str(tmp_path / "single-logs"))
    cluster_tensors, single_tensors = checkpoint_tensors(save), checkpoint_tensors(single)
    assert cluster_tensors.keys() == single_tensors.keys()
    return cluster_tensors, single_tensors


def test_a_gru_cluster_with_a_cosine_schedule_and_weight_decay_follows_one_process(tmp_path):
    """The cell type, the step-budget schedule and AdamW reach the workers and the chief's update:
    the learning rate ends where one process's does, exactly, and the weights agree with one
    process of twice the batch (to the ~1e-4 that separates TF1's sparse Adam on the cell graph's
    embedding gradient from the dense one the workers send)."""
    cluster_tensors, single_tensors = cluster_and_one_process(
        tmp_path, "gru", dict(model="gru", decay_schedule="cosine", warmup_steps=2, weight_decay=0.1))
    assert not any("/c" in name.rsplit("layer_", 1)[-1] for name in cluster_tensors if "state" in name)
    assert cluster_tensors["model/learning_rate"] == single_tensors["model/learning_rate"]
    for name, value in single_tensors.items():
        np.testing.assert_allclose(cluster_tensors[name], value, atol=1e-3, err_msg=name)


def test_a_layer_norm_cluster_ends_with_the_weights_of_one_process_of_twice_the_batch(tmp_path):
    """--layer_norm's six variables per layer live on the ps tasks like the others, the workers
    take the flag from the chief, and their written-out layerwise gradients, averaged, make the
    update one layerwise process of twice the batch makes (both dense: to float rounding, which
    the norms amplify)."""
    cluster_tensors, single_tensors = cluster_and_one_process(
        tmp_path, "ln", dict(layer_norm=True, rnn_impl="layerwise", num_layers=2))
    assert sum("layer_norm/" in name and "Adam" not in name for name in cluster_tensors) == 12
    # The norms divide by each row's spread, so the averaging's rounding (1e-7) grows more than
    # without them: weights within 3e-5 here (1e-5 measured), the carried state within 2e-3
    # (4e-4). A worker without the norms, or a gain the update misses, is off by 1e-2 or more.
    for name, value in single_tensors.items():
        atol = 2e-3 if "train_state" in name else 3e-5
        np.testing.assert_allclose(cluster_tensors[name], value, rtol=1e-4, atol=atol, err_msg=name)


def test_asynchronous_workers_apply_their_own_gradients_until_the_global_step_ends_the_run(tmp_path):
    """--nosync_replicas: each worker applies its own gradient, moving the shared global step;
    --max_steps counts global steps, every task exits 0, and the chief's save directory (which
    records the choice) samples on one machine. An epoch is W batches of one worker in global
    steps, and the rate each update used follows the schedule at the global step."""
    data = make_data_dir(tmp_path, TEXT)
    # A warm-up of 4: the rate of global step 0 (the chief's first update), 0.0025, is no other
    # step's rate before 25, so the checkpoint's rate says whether that update landed last.
    schedule = ["--decay_schedule=linear", "--warmup_steps=4", "--num_epochs=2", "--nosync_replicas"]
    result, save, _ = local_cluster(tmp_path, data, "async", *schedule, "--max_steps=20")
    assert result.returncode == 0, result.stderr[-3000:]
    err = result.stderr
    assert "[worker0] asynchronous updates: each of the 2 workers applies its own gradient; an epoch is 16 " \
           "global steps" in err
    assert "[worker0] schedule: linear decay to step 32 (--num_epochs 2 x 16 global steps" in err
    assert "[ps0] ps 0: every worker is done; exiting" in err
    chief_steps = int(re.search(r"\[worker0\] max_steps: step (\d+)/32", err)[1])
    assert chief_steps >= 20
    own = int(re.search(r"\[worker1\] worker 1: (?:stopped by the chief|step \d+/32 reaches the chief's "
                        r"--max_steps \(global step 20\)) after (\d+) update\(s\) of its own", err)[1])
    assert own >= 1
    tensors = checkpoint_tensors(save)
    step = int(tensors["model/global_step"])
    assert 20 <= step <= chief_steps + own
    # Each worker stops at the chief's --max_steps itself, so the run ends there, past it only
    # by the update another worker had in flight: not wherever a worker got to while the chief
    # compiled its first step (which left this resume with nothing to do).
    assert step <= 20 + 1, err[-3000:]
    with open(f"{save}/config.json") as f:
        config = Config.from_dict(json.load(f)["config"], "config.json")
    assert config.sync_replicas is False and config.decay_steps == 32
    # The last rate assigned is the schedule's at a global step an update read. Which step is not
    # fixed: an update reads the global step when it starts, and on a busy machine another
    # worker's can land after many of the chief's (a CI run saved the rate of step 1 or 2 at step 21).
    lr = tensors["model/learning_rate"]
    rates = {s: trainer.learning_rate_at(config, 16, s) for s in range(step)}
    assert min(abs(lr - r) for r in rates.values()) < 1e-9, (lr, rates)
    # ... but not the chief's first update's: the others start only after it has landed.
    assert abs(lr - rates[0]) > 1e-6 and all(abs(rates[0] - rates[s]) > 1e-6 for s in range(1, step)), (lr, rates)
    sampled = run_cli("charrnn-sample", "--save_dir", save, "--n", "20", "--prime", "It")
    assert sampled.returncode == 0 and sampled.stdout.startswith("It"), sampled.stderr
    # The same command resumes it asynchronously (config.json keeps the choice), each worker
    # at global step // 2 of its own batches, and ends the run on the global step.
    again, _, _ = local_cluster(tmp_path, data, "async", *schedule[:-1])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[worker1] worker 1: asynchronous resume at global step" in again.stderr
    assert "[worker0] asynchronous updates" in again.stderr
    assert re.search(r"\[worker0\] complete: step 3\d/32", again.stderr)
    # The chief's progress lines give the cluster's speed (every worker's updates) and an ETA
    # from the global step's progress.
    lines = [line for line in (again.stdout + again.stderr).splitlines() if line.startswith("[worker0] step ")]
    assert lines and all("chars/s (cluster)" in line for line in lines), lines
    assert int(checkpoint_tensors(save)["model/global_step"]) >= 32
    # Once more, with the run complete: the chief has nothing to do, and the other worker, which
    # starts training only after the chief's first update, still ends without one and exits.
    done, _, _ = local_cluster(tmp_path, data, "async", *schedule[:-1])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[worker0] nothing to do: step 3" in done.stderr
    assert re.search(r"\[worker1\] worker 1: (stopped by the chief|the run reached step 3\d/32) after 0 update\(s\)",
                     done.stderr), done.stderr[-3000:]


def test_with_xla_auto_the_chief_times_both_and_every_worker_takes_its_choice(tmp_path):
    """--xla auto on a layerwise cluster: the chief times the step with and without XLA before
    building its graph and publishes the choice on ps 0; the other worker waits for it, logs
    it and builds the same graph; config.json records it."""
    data = make_data_dir(tmp_path, TEXT)
    result, save, _ = local_cluster(tmp_path, data, "auto", "--rnn_impl=layerwise", "--xla=auto",
                                    "--max_steps=2", spec="1,3")
    assert result.returncode == 0, result.stderr[-3000:]
    err = result.stderr
    timed = re.search(r"\[worker0\] xla: auto chose (XLA|no XLA) \([\d.]+ ms/step with XLA, [\d.]+ without", err)
    assert timed, err[-3000:]
    words = "XLA for each worker's forward and backward pass" if timed[1] == "XLA" else "no XLA"
    assert f"[worker0] xla: {words}, for every worker (the chief's choice)" in err
    for worker in (1, 2):
        assert f"[worker{worker}] xla: {words}, as the chief (worker 0) chose" in err
    with open(f"{save}/config.json") as f:
        assert json.load(f)["config"]["xla"] is (timed[1] == "XLA")
