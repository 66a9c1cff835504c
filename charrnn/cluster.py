"""Who is where in a training cluster, each task's server, and the parameter servers' lives.

A cluster is described by the classic flags (``--ps_hosts``, ``--worker_hosts``, ``--job_name``,
``--task_index``) or, when none of them is given, by the ``TF_CONFIG`` variable that Kubernetes
operators and cloud training services set. Worker 0 is the chief; in TF_CONFIG a ``chief`` task
is the chief and the ``worker`` tasks follow it as workers 1, 2, ... Every task of a run builds
the same ClusterSpec from the same description, so TensorFlow's own runtime
(``tf.compat.v1.train.Server``) connects them; nothing here speaks to the network itself except
:func:`wait_for_hosts`, which only opens and closes a TCP connection to see that a task is up.

A parameter-server task only serves its variables. TensorFlow's gRPC server cannot be stopped
(its ``Stop`` is unimplemented), so a ps learns that the work is done from a queue on its own
device, :func:`done_queue`, into which every worker puts one item when it finishes, and then
ends its process. :func:`launch_local` starts a whole cluster on this machine for trying it out
and for the tests.
"""
import dataclasses
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from charrnn.errors import ConfigError
from charrnn.signals import StopSignal

JOBS = ("ps", "worker")
DONE_QUEUE_CAPACITY = 1 << 16  # a worker that is restarted says "done" once more: never block on it
EXPOSED = ("listening on every network interface without authentication: anything that reaches "
           "this port can run code in this process; run a cluster only inside a private network "
           "or behind a firewall")


@dataclasses.dataclass(frozen=True)
class Cluster:
    """The cluster's tasks and which one this process is. ``ps`` and ``workers`` are "host:port"
    addresses; worker 0 is the chief."""

    ps: tuple
    workers: tuple
    job: str  # "ps" or "worker"
    index: int
    source: str = "flags"  # or "TF_CONFIG": where the description came from, for messages

    @property
    def num_workers(self):
        return len(self.workers)

    @property
    def num_ps(self):
        return len(self.ps)

    @property
    def is_chief(self):
        return self.job == "worker" and self.index == 0

    @property
    def name(self):
        """How this task calls itself in log lines: "ps 0", "worker 1 (chief)"."""
        return f"{self.job} {self.index}" + (" (chief)" if self.is_chief else "")

    @property
    def address(self):
        return (self.ps if self.job == "ps" else self.workers)[self.index]

    @property
    def device(self):
        return task_device(self.job, self.index)

    @property
    def ps_devices(self):
        return [task_device("ps", p) for p in range(self.num_ps)]

    def spec(self):
        """TensorFlow's ClusterSpec of these tasks."""
        from charrnn.tfcompat import load

        _, tf1 = load()
        return tf1.train.ClusterSpec({"ps": list(self.ps), "worker": list(self.workers)})

    def session_config(self, log=None):
        """charrnn's session config with device filters: a worker talks to the ps tasks and
        itself only (so one worker's restart does not block the others), a ps to itself."""
        from charrnn.tfcompat import session_config

        config = session_config(log)
        config.device_filters.extend(["/job:ps", self.device] if self.job == "worker" else [self.device])
        return config


def task_device(job, index):
    return f"/job:{job}/task:{index}"


# ---------------------------------------------------------------- the description

def describe(ps_hosts=None, worker_hosts=None, job_name=None, task_index=None, tf_config=None):
    """The Cluster the flags describe, else the one ``tf_config`` (TF_CONFIG's text) describes,
    else None (a single process). Raises ConfigError with one line naming what is wrong."""
    given = {name: value for name, value in (("ps_hosts", ps_hosts), ("worker_hosts", worker_hosts),
                                             ("job_name", job_name), ("task_index", task_index))
             if value is not None}
    if given:
        return _from_flags(ps_hosts, worker_hosts, job_name, task_index)
    if tf_config and tf_config.strip():
        return _from_tf_config(tf_config)
    return None


def _from_flags(ps_hosts, worker_hosts, job_name, task_index):
    missing = [f"--{name}" for name, value in (("ps_hosts", ps_hosts), ("worker_hosts", worker_hosts),
                                               ("job_name", job_name)) if value is None]
    if missing:
        raise ConfigError("--ps_hosts, --worker_hosts and --job_name describe a cluster together; "
                          f"missing {', '.join(missing)}")
    ps = _hosts(ps_hosts, "--ps_hosts")
    workers = _hosts(worker_hosts, "--worker_hosts")
    if job_name not in JOBS:
        raise ConfigError(f"--job_name {job_name!r}: unknown job; use ps or worker (worker 0 is the chief)")
    index = 0 if task_index is None else task_index
    tasks = ps if job_name == "ps" else workers
    if not 0 <= index < len(tasks):
        raise ConfigError(f"--task_index {index} is out of range: --{job_name}_hosts lists {len(tasks)} "
                          f"task(s), indices 0 to {len(tasks) - 1}")
    return _checked(Cluster(ps, workers, job_name, index, "flags"))


def _from_tf_config(text):
    where = "TF_CONFIG"
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"{where} is not valid JSON ({e}); fix the variable or unset it")
    cluster, task = (obj.get("cluster"), obj.get("task")) if isinstance(obj, dict) else (None, None)
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise ConfigError(f"{where} needs a 'cluster' object and a 'task' object "
                          '(e.g. {"cluster": {"ps": [...], "worker": [...]}, "task": {"type": "worker", "index": 0}})')
    unknown = sorted(set(cluster) - {"chief", "ps", "worker"})
    if unknown:
        raise ConfigError(f"{where}: unknown job(s) {unknown} in 'cluster'; charrnn runs chief, worker "
                          "and ps tasks")
    jobs = {job: _hosts(cluster.get(job, []), f"{where} cluster.{job}", allow_empty=(job != "ps"))
            for job in ("chief", "worker", "ps")}
    if len(jobs["chief"]) > 1:
        raise ConfigError(f"{where}: cluster.chief lists {len(jobs['chief'])} tasks; a cluster has one chief")
    workers = jobs["chief"] + jobs["worker"]  # the chief is worker 0
    if not workers:
        raise ConfigError(f"{where}: the cluster has no chief and no worker task; list at least one")
    kind, index = task.get("type"), task.get("index", 0)
    if kind not in jobs:
        raise ConfigError(f"{where}: task type {kind!r} is unknown; use chief, worker or ps")
    if type(index) is not int or not 0 <= index < len(jobs[kind]):
        raise ConfigError(f"{where}: task index {index!r} is out of range: cluster.{kind} lists "
                          f"{len(jobs[kind])} task(s)")
    if kind == "ps":
        job = "ps"
    else:
        job, index = "worker", (index if kind == "chief" else len(jobs["chief"]) + index)
    return _checked(Cluster(jobs["ps"], workers, job, index, where))


def _hosts(value, what, allow_empty=False):
    """("host:port", ...) from a comma-separated string or a list, each checked."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ConfigError(f"{what}: expected a list of host:port addresses, got {value!r}")
    hosts = tuple(str(item).strip() for item in items if str(item).strip())
    if not hosts and not allow_empty:
        raise ConfigError(f"{what} is empty; list at least one host:port")
    for host in hosts:
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{what}: {host!r} is not host:port (a port from 1 to 65535)")
    return hosts


def _checked(cluster):
    everything = list(cluster.ps) + list(cluster.workers)
    twice = sorted({host for host in everything if everything.count(host) > 1})
    if twice:
        raise ConfigError(f"{cluster.source}: {', '.join(twice)} is given to more than one task; "
                          "each task needs its own host:port")
    return cluster


# ---------------------------------------------------------------- servers

def port_of(address):
    return int(address.rpartition(":")[2])


def check_port_free(port, what):
    """Refuse a port something on this machine already holds (TensorFlow would abort on it).
    gRPC binds 0.0.0.0 with SO_REUSEADDR, so the probe does too: only a holder makes it fail."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("0.0.0.0", port))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} of {what} is already taken on this machine; stop what holds it "
                              "or give the task another port")
        raise ConfigError(f"cannot open port {port} of {what} ({e.strerror}); give the task another port")
    finally:
        probe.close()


def start_server(cluster, log):
    """Start this task's TensorFlow server and say, in one line, that its port is open."""
    from charrnn.tfcompat import load

    _, tf1 = load()
    port = port_of(cluster.address)
    check_port_free(port, f"{cluster.name} ({cluster.address})")
    try:
        server = tf1.train.Server(cluster.spec(), job_name=cluster.job, task_index=cluster.index,
                                  config=cluster.session_config(), start=True)
    except tf1.errors.OpError as e:
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"{cluster.name}: cannot start the TensorFlow server on {cluster.address} "
                          f"({first_line[:160]})")
    log(f"{cluster.name}: TensorFlow server on port {port} (cluster from {cluster.source}: "
        f"{cluster.num_ps} ps, {cluster.num_workers} worker(s)), {EXPOSED}")
    return server


def wait_for_hosts(tasks, timeout, log, what):
    """Wait until every (name, "host:port") in ``tasks`` accepts a TCP connection, saying so once
    per task; raise ConfigError naming the first that does not within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    for name, address in tasks:
        host, _, port = address.rpartition(":")
        said = False
        while True:
            try:
                with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
                    break
            except OSError:
                if time.monotonic() >= deadline:
                    raise ConfigError(f"{name} at {address} did not answer within {timeout:g} s "
                                      f"(--cluster_timeout); start it, or check {what} and the firewall")
                if not said:
                    log(f"waiting for {name} at {address} (up to {timeout:g} s in all)")
                    said = True
                time.sleep(0.25)
        if said:
            log(f"{name} at {address} answered")


def done_queue(ps_index):
    """The queue on ps task ``ps_index`` into which each worker puts one item when it is done.
    Built alike in every task's graph: the shared name makes it one queue on that device."""
    from charrnn.tfcompat import load

    tf, tf1 = load()
    with tf1.device(task_device("ps", ps_index)):
        return tf1.FIFOQueue(DONE_QUEUE_CAPACITY, [tf.int32], shapes=[[]], shared_name=f"done_queue_{ps_index}",
                             name=f"done_queue_{ps_index}")


def serve_ps(cluster, log):
    """Run a parameter-server task: serve the variables until every worker has said it is done,
    then return (the caller ends the process)."""
    from charrnn.tfcompat import load

    tf, tf1 = load()
    server = start_server(cluster, log)
    graph = tf.Graph()
    with graph.as_default():
        take = done_queue(cluster.index).dequeue()
    graph.finalize()
    log(f"{cluster.name}: serving until all {cluster.num_workers} worker(s) are done")
    with tf1.Session(server.target, graph=graph, config=cluster.session_config()) as session:
        done = set()  # a worker restarted after it said so says it again
        while len(done) < cluster.num_workers:
            worker = int(session.run(take))
            done.add(worker)
            log(f"{cluster.name}: worker {worker} is done ({len(done)}/{cluster.num_workers})")
    log(f"{cluster.name}: every worker is done; exiting")


def exit_process(status):
    """End this process now. TensorFlow's server threads cannot be stopped and can keep an
    ordinary exit waiting on them, so a task flushes its output and leaves with os._exit."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


# ---------------------------------------------------------------- one machine

def parse_local_cluster(text):
    """(ps tasks, workers) of --local_cluster "PS,WORKERS", each at least 1."""
    parts = text.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ConfigError(f"--local_cluster {text!r}: give PS,WORKERS, two positive counts (e.g. 1,2)")
    return int(parts[0]), int(parts[1])


def free_ports(count):
    """``count`` distinct loopback ports nothing holds right now (the kernel's choice)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def private_network():
    """Move this process (and the tasks it will start) into a network namespace of its own with
    only a loopback interface, so the local cluster's ports are reachable from no other process
    or machine. Returns None if done, else why not (Linux, and the right to create a namespace:
    root, or a kernel allowing unprivileged user namespaces, are needed)."""
    import ctypes
    import fcntl
    import struct

    clone_newnet, siocgifflags, siocsifflags, iff_up = 0x40000000, 0x8913, 0x8914, 0x1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(clone_newnet) != 0:
            return os.strerror(ctypes.get_errno())
    except (OSError, AttributeError) as e:
        return str(e)
    # The new namespace's loopback interface starts down: bring it up (ioctl, as `ip link` does).
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(s, siocgifflags, request))[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sh", b"lo", flags | iff_up))
    return None


def launch_local(num_ps, num_workers, command, log, grace=60.0):
    """Run a cluster of ``num_ps`` ps tasks and ``num_workers`` workers on this machine, each task
    ``command`` (an argv list) plus its cluster flags, on free loopback ports; stream each task's
    output with its name in front; return the exit status.

    Ctrl-C or SIGTERM is passed to the chief, which finishes its step, saves and tells the others
    to stop; a task that fails stops the rest. Tasks still running ``grace`` seconds after a stop
    began are killed. 0 if every task exited 0.
    """
    why_not = private_network()
    if why_not is None:
        log("local cluster: in a network namespace of its own (loopback only): no other process or "
            "machine can reach its tasks' ports")
    else:
        log(f"local cluster: no network namespace of its own here ({why_not}): its tasks' ports are "
            "open to this machine's network while it runs")
    ports = free_ports(num_ps + num_workers)
    ps = [f"127.0.0.1:{p}" for p in ports[:num_ps]]
    workers = [f"127.0.0.1:{p}" for p in ports[num_ps:]]
    tasks = [("ps", i) for i in range(num_ps)] + [("worker", i) for i in range(num_workers)]
    log(f"local cluster: {num_ps} ps on {','.join(ps)}; {num_workers} worker(s) on {','.join(workers)}")
    cluster_flags = [f"--ps_hosts={','.join(ps)}", f"--worker_hosts={','.join(workers)}"]
    procs, pumps = {}, []
    status = None
    with StopSignal(second_forces=False) as stop:  # every signal is forwarded to the tasks
        try:
            for job, index in tasks:  # every task first: preexec_fn is safe only without other threads
                procs[(job, index)] = subprocess.Popen(
                    command + cluster_flags + [f"--job_name={job}", f"--task_index={index}"],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
                    start_new_session=True, preexec_fn=_die_with_parent)
            for (job, index), proc in procs.items():
                for source, sink in ((proc.stdout, sys.stdout), (proc.stderr, sys.stderr)):
                    pump = threading.Thread(target=_pump, args=(source, sink, f"[{job}{index}] "), daemon=True)
                    pump.start()
                    pumps.append(pump)
            status = _supervise(procs, stop, log, grace)
        finally:
            for proc in procs.values():  # anything still alive (an error above): gone, reaped
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
            for pump in pumps:
                pump.join(timeout=5)
    return status if status is not None else 1


def _die_with_parent():
    """In a task just forked by the launcher: be killed if the launcher dies, however it dies
    (Linux's PR_SET_PDEATHSIG; elsewhere nothing), so no task outlives it."""
    import ctypes

    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _pump(source, sink, prefix):
    for line in source:
        sink.write(prefix + line)
        sink.flush()


def _supervise(procs, stop, log, grace):
    chief = procs[("worker", 0)]
    stopping_since, signalled, failed = None, None, None
    while True:
        running = [key for key, proc in procs.items() if proc.poll() is None]
        if not running:
            break
        if failed is None and signalled is None:  # after a stop, the chief's 128+N is no failure
            failed = next((key for key, proc in procs.items() if proc.poll() not in (None, 0)), None)
            if failed is not None:
                log(f"local cluster: {failed[0]} {failed[1]} exited with status {procs[failed].returncode}; "
                    "stopping the other tasks")
                for key in running:
                    procs[key].terminate()
                stopping_since = stopping_since or time.monotonic()
        if stop.signum is not None and signalled is None:
            signalled = stop.signum
            log(f"local cluster: {signal.Signals(signalled).name}: the chief saves and stops the others")
            target = [chief] if chief.poll() is None else [procs[key] for key in running]
            for proc in target:
                proc.send_signal(signal.SIGTERM)
            stopping_since = stopping_since or time.monotonic()
        if stopping_since is not None and time.monotonic() - stopping_since > grace:
            for key in running:
                log(f"local cluster: {key[0]} {key[1]} did not stop within {grace:g} s; killing it")
                procs[key].kill()
            stopping_since = time.monotonic() + 1e9  # killed: just reap them
        time.sleep(0.1)
    if signalled is not None:
        return 128 + signalled
    if failed is not None:
        code = procs[failed].returncode
        return code if code > 0 else 128 - code  # killed by signal N: the shell's 128 + N
    return 0
