"""Training as one worker of a cluster: between-graph replication with synchronous updates.

Every worker builds its own graph over the same variables. On the ps tasks (spread by size):
the weights, Adam's slots, the global step, the learning rate, and ``train_state``, a snapshot
of the carried state of all W*B streams (what a checkpoint holds, so the chief's checkpoints are
a single process's of batch W*B). On each worker, as local variables: the carried state of its
own B streams, which no other worker can touch.

One global step takes exactly one gradient from every worker:

  1. the chief puts the step number g into each other worker's token queue (one queue per
     worker, so no worker can take another's turn);
  2. each worker (the chief too) trains on batch g of its streams: forward, backward, its rows
     of the state snapshot written, then its gradients and loss put into per-variable
     ConditionalAccumulators on the ps, tagged with local step g;
  3. the chief takes the mean of the W gradients of each variable, clips their global norm (as a
     single process clips its whole batch), applies Adam and increments the global step.

With the loss a mean over each worker's batch, the mean of the W gradients is the gradient of
the mean loss over all W*B streams: a synchronous run of W workers computes what one process of
batch W*B computes, to float rounding. Each worker takes its batch index from g, so no data is
skipped, and the chief drives every step from its own loop: no queue runner, whose ops could
not depend on fed batches. When the chief stops it puts -1 into every token queue, and each
worker, the chief last, puts one item into each ps task's done queue (see charrnn/cluster.py).

With --nosync_replicas (asynchronous updates) there are no tokens and no accumulators: each
worker clips its own gradient and applies it with Adam to the weights on the ps, incrementing
the global step, and trains its streams at its own pace (see _OwnPace, AsyncChiefTrainer).

Each worker records on ps 0 the last step its gradient went in for, so a worker killed and
started again knows whether the step in progress still needs its gradient. With the layerwise
graph and --xla, each worker's forward and backward pass is one XLA cluster over the weights'
values read on the worker (XLA cannot capture a variable that lives on a ps).
"""
import dataclasses
import json
import functools
import time

import numpy as np

from charrnn.autotune import choose_xla, second_run_seconds, steps_that_fit
from charrnn.cluster import done_queue, start_server, task_device, wait_for_hosts
from charrnn.config import Config
from charrnn.errors import ConfigError
from charrnn.evaluate import evaluate_stream
from charrnn.model import (CarriedState, ModelWeights, _transposed_kernels, clipped_adam, dense_gradients,
                           dropout_masks, model_scope, training_loss)
from charrnn.tfcompat import load, release_free_memory
from charrnn.train import CLUSTER_TIMING_SKIP, Trainer, learning_rate_at, log, run_length, train

STOP = -1  # the token that ends a worker's loop
# Sessions a task leaves open until its process ends: closing one whose ps task has already
# ended (it ends once every worker is done) waits on that ps.
_NEVER_CLOSED = []
TOKEN_QUEUE_CAPACITY = 1 << 10  # holds a stop token even if a worker is gone


class _BySize:
    """A ps strategy for replica_device_setter: each variable goes to the ps task with the fewest
    bytes so far. Every task builds the same variables in the same order, so all agree."""

    def __init__(self, num_tasks):
        self.loads = [0] * num_tasks

    def __call__(self, op):
        shape = op.get_attr("shape") if "shape" in op.node_def.attr else None
        size = int(np.prod([d.size for d in shape.dim])) if shape is not None else 1
        task = int(np.argmin(self.loads))
        self.loads[task] += max(size, 1)
        return task


class ReplicaTrainGraph:
    """One worker's training graph (see the module's docstring).

    Handles, every worker: ``inputs``, ``targets`` (B, T) int32 for this worker's B streams;
    ``step`` (int64) the global step the batch is for; ``push`` computes this worker's share and
    puts it into the accumulators (fetch ``push_loss`` with it for this worker's loss);
    ``pushed`` the records of the last step each worker's gradient went in for (never saved);
    ``load_state`` copies this worker's rows of the ps snapshot into its carried state,
    ``reset_state_op`` zeroes it; ``global_step``, ``lr``. Non-chief workers: ``token`` takes the next step number from this
    worker's queue, ``ready`` names the variables the chief has yet to initialize or restore.
    The chief: ``reset_records``, ``enqueue_tokens`` and, asynchronous, ``set_end_step`` (feed
    ``next_step``), ``stop_workers``,
    ``update`` with ``loss`` and ``grad_norm`` (the mean loss over all streams and the
    aggregated gradient's norm before clipping; feed ``step``), :meth:`assign_lr`.
    With ``config.sync_replicas`` off, no tokens nor accumulators: see :meth:`_asynchronous`.
    """

    def __init__(self, config, cluster, xla=False):
        tf, tf1 = load()
        c, W, index = config, cluster.num_workers, cluster.index
        B, T = c.batch_size // W, c.seq_length
        rows = slice(index * B, (index + 1) * B)
        self.is_chief, self.num_workers, self.index = cluster.is_chief, W, index
        setter = tf1.train.replica_device_setter(cluster=cluster.spec(), worker_device=cluster.device,
                                                 ps_strategy=_BySize(cluster.num_ps))
        with tf1.device(setter), model_scope():
            self.global_step = tf1.train.get_or_create_global_step()
            weights = ModelWeights(c)
            # Every stream's state, as a single process of batch W*B carries it: checkpoints hold it.
            self.snapshot = CarriedState("train_state", c, W * B, saved=True)
            self.lr = tf1.get_variable("learning_rate", [], trainable=False,
                                       initializer=tf1.constant_initializer(c.learning_rate))
            self._new_lr = tf1.placeholder(tf.float32, [], "new_learning_rate")
            self._lr_update = self.lr.assign(self._new_lr)
            with tf1.device(cluster.device):  # this worker's streams, never on a ps
                self.state = CarriedState("worker_state", c, B, saved=False)
            self.inputs = tf1.placeholder(tf.int32, [B, T], "inputs")
            self.targets = tf1.placeholder(tf.int32, [B, T], "targets")
            self.step = tf1.placeholder(tf.int64, [], "step")
            masks = dropout_masks(c, self.step, rows)
            if xla:
                params = weights.trainable
                loss, grads, final_state = _compiled_share(c, params, cluster.device, self.state.read(),
                                                           self.inputs, self.targets, masks)
            else:
                transposed = (_transposed_kernels(weights, masks.get("recurrent")) if c.rnn_impl == "layerwise"
                              else {})
                loss, final_state = training_loss(c, weights, self.inputs, self.targets, tf.ones([B, T]),
                                                  self.state.read(), masks, transposed)
                # After training_loss: made by the cell inside dynamic_rnn, the LSTM variables are
                # read once per step; made before it, the loop reads them (on the ps) at every time step.
                params = weights.trainable
                # Dense (the embedding's gradient is IndexedSlices): the accumulators average tensors.
                grads = dense_gradients(loss, params)
            carried = self.state.assign(final_state) + [
                snap[rows].assign(value) for pair, s in zip(self.snapshot.variables, final_state)
                for snap, value in zip(pair, tf.nest.flatten(s))]
            self._records(cluster)
            self.push_loss = loss
            self.load_state = tf.group(*[v.assign(snap[rows]) for pair, snap_pair in
                                         zip(self.state.variables, self.snapshot.variables)
                                         for v, snap in zip(pair, snap_pair)], name="load_state")
            if not c.sync_replicas:
                self._asynchronous(c, params, grads, carried)
                return
            accumulators = []
            for param in params:
                with tf1.device(param.device):
                    accumulators.append(tf1.ConditionalAccumulator(
                        tf.float32, param.shape, shared_name=f"{param.op.name}/grad_accumulator"))
            with tf1.device(cluster.ps_devices[0]):
                loss_accumulator = tf1.ConditionalAccumulator(tf.float32, [], shared_name="model/loss_accumulator")
            with tf.control_dependencies(carried):  # the snapshot is written before the chief can go on
                pushes = [acc.apply_grad(g, local_step=self.step) for acc, g in zip(accumulators, grads)]
                pushes.append(loss_accumulator.apply_grad(loss, local_step=self.step))
            with tf.control_dependencies(pushes):
                self.push = tf.group(self.pushed[index].assign(self.step), name="push")

            tokens = {}
            for w in range(1, W):
                if self.is_chief or w == index:
                    with tf1.device(cluster.ps_devices[0]):
                        tokens[w] = tf1.FIFOQueue(TOKEN_QUEUE_CAPACITY, [tf.int64], shapes=[[]],
                                                  shared_name=f"token_queue_{w}", name=f"token_queue_{w}")
            if not self.is_chief:
                self.token = tokens[index].dequeue()
                self.ready = self._ready_op()
                return
            with tf.control_dependencies([self.handed.assign(self.next_step)]):
                self.enqueue_tokens = tf.group(*[q.enqueue(self.next_step) for q in tokens.values()])
            with tf.control_dependencies([self.stopped.assign(True)]):
                self.stop_workers = tf.group(*[q.enqueue(tf.constant(STOP, tf.int64)) for q in tokens.values()])
            mean_grads = []
            for param, acc in zip(params, accumulators):
                with tf1.device(param.device):
                    mean_grads.append(acc.take_grad(W))
            with tf1.device(cluster.ps_devices[0]):
                # Clipped on ps 0, not on the chief: with one ps task no gradient crosses the
                # network at all here (Adam's updates run where each variable lives).
                mean_loss = loss_accumulator.take_grad(W)
                apply, grad_norm = clipped_adam(c, self.lr, mean_grads, params, self.global_step)
            with tf.control_dependencies([apply, mean_loss]):
                # A take moves its accumulator one step on; this says which step (a resumed run
                # starts them at 0): from now on a gradient for step g or earlier is dropped as stale.
                moved = [acc.set_global_step(self.step + 1) for acc in accumulators + [loss_accumulator]]
            with tf.control_dependencies(moved):
                self.loss = tf.identity(mean_loss)
                self.grad_norm = tf.identity(grad_norm)
            self.update = tf.group(self.loss, self.grad_norm, name="update")

    def _records(self, cluster):
        """The variables on ps 0 through which the chief and the workers coordinate (never saved:
        the chief sets them when it starts, after any restore, with ``reset_records``); a
        non-chief's ``ready``."""
        tf, tf1 = load()
        with tf1.device(cluster.ps_devices[0]):
            # The last step each worker's gradient went in for, so that a restarted worker knows
            # whether the step in progress still needs its gradient.
            self.pushed = [tf1.get_variable(f"pushed_step_{w}", [], tf.int64, trainable=False, collections=[],
                                            initializer=tf1.constant_initializer(-1))
                           for w in range(cluster.num_workers)]
            # Set when the chief stops: a worker whose stop token was taken by a dead
            # predecessor's dequeue (still pending on the ps) learns it here; asynchronous
            # workers, which take no tokens, look at it after each update.
            self.stopped = tf1.get_variable("stopped", [], tf.bool, trainable=False, collections=[],
                                            initializer=tf1.constant_initializer(False))
            # The last step the chief handed out: what such a worker computes instead.
            self.handed = tf1.get_variable("handed_step", [], tf.int64, trainable=False, collections=[],
                                           initializer=tf1.constant_initializer(-1))
            # The global step an asynchronous run ends at: the run's end, or --max_steps from the
            # chief's start. Each worker stops there by itself: a chief slow to make its first
            # update (compiling its step) would otherwise see the others run past it.
            self.end_step = tf1.get_variable("end_step", [], tf.int64, trainable=False, collections=[],
                                             initializer=tf1.constant_initializer(-1))
        if not self.is_chief:
            return
        self.next_step = tf1.placeholder(tf.int64, [], "next_step")
        self.reset_records = tf.group(*[p.assign(self.next_step - 1) for p in self.pushed],
                                      self.stopped.assign(False), self.handed.assign(self.next_step - 1))
        self.set_end_step = self.end_step.assign(self.next_step)

    def _asynchronous(self, config, params, grads, carried):
        """--nosync_replicas: ``apply`` clips this worker's own gradient and applies it with Adam
        to the weights on the ps at the fed rate ``new_lr`` (also assigned to ``lr``, which the
        checkpoints hold), incrementing the shared global step; ``after`` is the global step
        once it is applied (other workers' updates included), ``grad_norm`` this gradient's
        norm. The chief: ``stop_workers`` sets ``stopped``."""
        tf, tf1 = load()
        with tf.control_dependencies(carried + [self.lr.assign(self._new_lr)]):
            # The fed value, not the variable: another worker may assign it at the same time.
            lr = tf.identity(self._new_lr)
        self.new_lr = self._new_lr
        apply, self.grad_norm = clipped_adam(config, lr, grads, params, self.global_step)
        with tf.control_dependencies([apply]):
            self.after = self.global_step.read_value()
            # This worker has applied a gradient in this run (the chief waits for that, once).
            self.apply = self.pushed[self.index].assign(self.step)
        if self.is_chief:
            self.stop_workers = self.stopped.assign(True)
        else:
            self.ready = self._ready_op([self.end_step])

    def _ready_op(self, records=()):
        """Names the variables the chief has yet to initialize or restore, and the records it
        has yet to set (``records``: those only some runs use): a non-chief worker waits until
        none is left."""
        _, tf1 = load()
        return tf1.report_uninitialized_variables(tf1.global_variables() + self.pushed
                                                  + [self.stopped, self.handed] + list(records))

    @property
    def reset_state_op(self):
        return self.state.reset_op

    def assign_lr(self, session, value):
        session.run(self._lr_update, {self._new_lr: value})


def _compiled_share(config, params, device, initial_state, inputs, targets, masks):
    """A worker's forward and backward pass as one XLA cluster: the weights' values are read on
    this worker and passed in, so the compiled function touches no variable on a ps (XLA cannot
    capture those). (loss, dense gradients in the order of ``params``, final state)."""
    tf, tf1 = load()
    c = config
    B, T = inputs.shape.as_list()
    with tf1.device(device):
        values = [tf.identity(p) for p in params]  # read once per step, here
        transposed = _transposed_kernels(ModelWeights.from_values(c, values), masks.get("recurrent"))

    def share(values, state, inputs, targets, masks, transposed):
        view = ModelWeights.from_values(c, values)
        loss, final_state = training_loss(c, view, inputs, targets, tf.ones([B, T]), state, masks, transposed)
        grads = dense_gradients(loss, values)
        return [loss] + grads + [t for s in final_state for t in (s.c, s.h)]

    outputs = tf1.xla.experimental.compile(share, [values, initial_state, inputs, targets, masks, transposed])
    loss, grads, flat = outputs[0], outputs[1:1 + len(params)], outputs[1 + len(params):]
    final_state = tuple(tf1.nn.rnn_cell.LSTMStateTuple(flat[i], flat[i + 1]) for i in range(0, len(flat), 2))
    return loss, grads, final_state


class _Share:
    """One worker's part of a global step: its batch of its streams, carried state and gradients."""

    def __init__(self, session, model, loader, name):
        self.session, self.model, self.loader, self.name = session, model, loader, name
        self.first = True

    def run(self, step):
        """Train on batch ``step`` of this worker's streams; return its loss."""
        model = self.model
        _, k = self.loader.position(step)
        if self.first:  # the state this run starts from: the checkpoint's rows, or zeros
            self.session.run(model.load_state)
            self.first = False
            if step and k:
                log(f"{self.name}: the carried state of its {self.loader.batch_size} streams is restored, "
                    f"not reset: it continues at step {step + 1}")
        if k == 0:
            self.session.run(model.reset_state_op)
        x, y = self.loader.batch(k)
        _, loss = self.session.run([model.push, model.push_loss],
                                   {model.inputs: x, model.targets: y, model.step: step})
        return float(loss)


class ChiefTrainer(Trainer):
    """The Trainer of the chief: each step hands out the step's tokens, does the chief's own
    share, then aggregates every worker's gradient and applies it. Saves, validation, summaries
    and the stop checks are the single process's."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # No worker has given a gradient for this step yet; the others wait for this (see _work).
        self.session.run(self.model.reset_records, {self.model.next_step: self.step})
        self.share = _Share(self.session, self.model, self.loader, "worker 0 (chief)")
        self.budget = self.run_data.cluster_budget  # minutes to turn into decay_steps (see _time_budget)
        self.timing_started = None  # when global step CLUSTER_TIMING_SKIP started

    def train_step(self):
        if self.budget is not None:
            self._time_budget()
        model, step = self.model, self.step
        _, k = self.loader.position(step)
        self.set_learning_rate(k)
        if step == self.first_step:
            log(f"step {step + 1} waits for a gradient from each of the {model.num_workers} workers")
        self.session.run(model.enqueue_tokens, {model.next_step: step})
        self.share.run(step)
        _, loss, norm = self.session.run([model.update, model.loss, model.grad_norm], {model.step: step})
        self.refuse_non_finite(loss, norm)
        self.step += 1
        return float(loss), float(norm)

    def _time_budget(self):
        """A new run with a time limit: time the cluster's global steps CLUSTER_TIMING_SKIP to
        warmup_steps - 2 (0-based) and one validation's pass and sample, then, before the last
        warm-up step, fix decay_steps at the global step the limit ends (the warm-up's learning
        rates do not depend on it); a single process measures the same before it starts
        (charrnn.autotune.steps_in_minutes)."""
        c, step = self.config, self.step
        if step == CLUSTER_TIMING_SKIP:
            self.timing_started = time.perf_counter()
        if step < c.warmup_steps - 1 or self.timing_started is None:
            return
        per_step = (time.perf_counter() - self.timing_started) / (step - CLUSTER_TIMING_SKIP)
        per_eval = None
        if self.eval_model is not None:  # a validation: the pass over the text and the sample
            per_eval = second_run_seconds(
                lambda: (evaluate_stream(self.session, self.eval_model, self.run_data.val), self._sample_text()))
            release_free_memory()
        left = 60 * self.budget - (time.time() - self.started)
        total = step + steps_that_fit(c, self.steps_per_epoch, left, per_step, per_eval)
        self.config = dataclasses.replace(c, decay_steps=total)  # saved with the next checkpoint
        self.total_steps = run_length(self.config, self.steps_per_epoch)
        log(f"budget: {self.budget:g} min = {total:,} global steps ({1000 * per_step:.1f} ms per global step "
            f"over steps {CLUSTER_TIMING_SKIP + 1}-{step}"
            + (f", {per_eval:.1f} s per evaluation" if per_eval is not None else "")
            + f", {left:.0f} s left); the {c.decay_schedule} schedule ends at step {total:,}")
        self.budget = None

    def run(self, max_steps=None, max_minutes=None):
        try:
            return super().run(max_steps, max_minutes)
        finally:  # whatever ended the run, the other workers learn it and end too
            _tell(self.session, [self.model.stop_workers])


class _OwnPace:
    """An asynchronous worker's part (--nosync_replicas): the next batch of its own streams, by
    its own counter, its gradient applied at once. The counter starts at g // W for a run at
    global step g (0 for a new run): the batches each worker has trained on if all went at the
    same pace; the carried state then starts from zeros (the checkpoint's rows are where each
    worker's streams stood, not where this counter puts them)."""

    def __init__(self, session, model, run, name, steps_per_epoch, step):
        self.session, self.model, self.config, self.loader = session, model, run.config, run.train
        self.name, self.steps_per_epoch = name, steps_per_epoch
        self.batches = step // model.num_workers  # this worker's counter
        self.first = True
        if self.batches:
            log(f"{name}: asynchronous resume at global step {step}: its {self.loader.batch_size} streams go on "
                f"at batch {self.batches} (global step // {model.num_workers} workers), carried state reset")

    def run(self, step):
        """Train on this worker's next batch, at the rate of global step ``step`` (the last this
        worker saw; for its first batch, the global step read then); (loss, gradient norm, the global step after the update, whether the chief
        has stopped)."""
        model = self.model
        k = self.batches % self.loader.num_batches
        if self.first:  # the others may have moved on while this worker started (compiled its step)
            step = int(self.session.run(model.global_step))
        if self.first or k == 0:
            self.session.run(model.reset_state_op)
            self.first = False
        x, y = self.loader.batch(k)
        lr = learning_rate_at(self.config, self.steps_per_epoch, step)
        _, loss, norm, after, stopped = self.session.run(
            [model.apply, model.push_loss, model.grad_norm, model.after, model.stopped],
            {model.inputs: x, model.targets: y, model.step: step, model.new_lr: lr})
        self.batches += 1
        return float(loss), float(norm), int(after), bool(stopped)


class AsyncChiefTrainer(ChiefTrainer):
    """The chief's Trainer with --nosync_replicas: each of its steps applies its own gradient,
    and the global step it reads back (the other workers' updates included) is the Trainer's
    step, so saves, validations and progress lines come when the global step crosses their
    multiples. A global step is one worker's batch: an epoch has W times as many.

    After its own first update the chief waits (up to ``timeout`` seconds) until every other
    worker has applied one too, so a short run is not the chief's alone while the others start;
    then it stops the others as soon as its loop ends, before its last checkpoint."""

    def __init__(self, run, *args, timeout=300.0, **kwargs):
        Trainer.__init__(self, run, *args, **kwargs)
        self.timeout, self.joined = timeout, False
        model = self.model
        self.steps_per_epoch = self.loader.num_batches * model.num_workers
        self.total_steps = run_length(self.config, self.steps_per_epoch)
        self.chars_per_step = self.loader.batch_size * self.config.seq_length  # one worker's batch
        self.counts_others = True  # progress lines: the cluster's speed, from the global step
        self.session.run(model.reset_records, {model.next_step: self.step})
        self.share = _OwnPace(self.session, model, run, "worker 0 (chief)", self.steps_per_epoch, self.step)
        log(f"asynchronous updates: each of the {model.num_workers} workers applies its own gradient; "
            f"an epoch is {self.steps_per_epoch} global steps")

    def run(self, max_steps=None, max_minutes=None):
        self.end = self.total_steps if max_steps is None else min(self.total_steps, self.first_step + max_steps)
        result = super().run(max_steps, max_minutes)
        if not self.joined:  # no step was taken: the others start, see the end and stop
            self._start_others()
        return result

    def _start_others(self):
        """Set the end step, which the other workers wait for before their first update."""
        self.session.run(self.model.set_end_step, {self.model.next_step: self.end})
        self.joined = True

    def train_step(self):
        loss, norm, after, _ = self.share.run(self.step)
        self.refuse_non_finite(loss, norm)
        self.step = after
        if not self.joined:
            # The others start only now, after the chief's first update: that update's first run
            # of the step (seconds on a loaded machine) then cannot land after theirs with the
            # rate of the global step it read before them. Then the chief waits for theirs.
            self._start_others()
            self._wait_for_workers()
        return loss, norm

    def _wait_for_workers(self, poll_seconds=0.1):
        model, deadline = self.model, time.monotonic() + self.timeout
        others = model.pushed[1:]
        said = False
        while True:
            missing = [w for w, pushed in enumerate(self.session.run(others), 1) if pushed < self.first_step]
            if not missing:
                break
            if time.monotonic() >= deadline:
                log(f"warning: worker(s) {', '.join(map(str, missing))} applied no gradient within "
                    f"{self.timeout:g} s (--cluster_timeout); training goes on without them until they come")
                return
            if not said:
                log(f"waiting for the first update of worker(s) {', '.join(map(str, missing))}")
                said = True
            time.sleep(poll_seconds)
        if said:
            log(f"every worker has applied a gradient; global step {int(self.session.run(model.global_step))}")

    def stop_reason(self, steps_this_run, max_steps, max_minutes):
        reason = super().stop_reason(steps_this_run, max_steps, max_minutes)
        if reason or self.step >= self.total_steps:  # the others stop before the last checkpoint
            _tell(self.session, [self.model.stop_workers])
        return reason


@dataclasses.dataclass
class ChiefReplica:
    """What :func:`charrnn.train.train` builds and runs differently on the chief of a cluster."""

    cluster: object
    target: str
    sync: bool = True
    timeout: float = 300.0  # how long an asynchronous chief waits for the others' first updates

    @property
    def trainer_class(self):
        return ChiefTrainer if self.sync else functools.partial(AsyncChiefTrainer, timeout=self.timeout)

    def device_scope(self):
        _, tf1 = load()
        return tf1.device(self.cluster.device)  # what no ps holds runs on this worker

    def train_graph(self, config):
        return ReplicaTrainGraph(config, self.cluster, xla=_compiled(config))

    def session_config(self, log=None):
        return self.cluster.session_config(log)


def run_task(run, cluster, save_dir, log_dir, max_steps=None, max_minutes=None, timeout=300.0):
    """Run this process's worker task of ``cluster`` on ``run`` (prepared with its replica
    rows): the chief trains, validates and saves like a single process; the others train their
    streams until the chief stops them. Returns the chief's TrainResult, None on other workers."""
    server = start_server(cluster, log)
    wait_for_hosts([(f"ps {p}", a) for p, a in enumerate(cluster.ps)], timeout, log, "--ps_hosts")
    run = _cluster_config(run, cluster, server, timeout)
    if cluster.is_chief:
        try:
            return train(run, save_dir, log_dir, max_steps, max_minutes,
                         replica=ChiefReplica(cluster, server.target, run.config.sync_replicas, timeout))
        finally:  # after train() closed its session: a ps may end as soon as it hears this
            _say_done(cluster, server)
    _work(run, cluster, server, timeout)
    return None


def _say_done(cluster, server):
    """Tell every ps task this worker is done, in a session of its own that is never closed: a
    ps whose workers are all done ends at once, and closing a session with a ps that is gone
    waits on it. The process ends right after (see charrnn.cli)."""
    tf, tf1 = load()
    graph = tf.Graph()
    with graph.as_default(), tf1.device(cluster.device):
        done = tf.group(*[done_queue(p).enqueue(cluster.index) for p in range(cluster.num_ps)])
    session = tf1.Session(server.target, graph=graph, config=cluster.session_config())
    _NEVER_CLOSED.append(session)  # garbage collected, a session closes itself
    _tell(session, [done])


def _compiled(config):
    """Whether each worker's forward and backward pass is one XLA cluster (see _cluster_xla)."""
    return bool(config.xla) and config.rnn_impl == "layerwise"


# The fields a non-chief worker laid its data out with before it could hear from the chief: a
# difference means another text or layout, which it refuses. Every other field it takes from the
# chief.
_DATA_FIELDS = ("data_sha256", "vocab_size", "batch_size", "seq_length", "val_frac")


def _cluster_config(run, cluster, server, timeout):
    """One configuration for every task: the chief's, published on ps 0 before it builds its graph
    (always, so that a worker without the save directory follows a resumed chief too); the other
    workers wait for it and take it, saying where their own flags differed, and refuse it in one
    line if their data differs (see _DATA_FIELDS)."""
    if cluster.is_chief:
        run = _cluster_xla(run)
        _publish_config(cluster, server, run.config)
        return run
    own, chief = run.config, _published_config(cluster, server, timeout)
    differ = [name for name in _DATA_FIELDS if getattr(own, name) != getattr(chief, name)]
    if differ:
        raise ConfigError("its training data differs from the chief's ("
                          + ", ".join(f"{name} {getattr(own, name)!r}, the chief's {getattr(chief, name)!r}"
                                      for name in differ)
                          + "); start every task with the same --data_dir contents and flags")
    changed = [f"--{f.name} {getattr(chief, f.name)} (its flags: {getattr(own, f.name)})"
               for f in dataclasses.fields(chief)
               if f.name != "xla" and getattr(own, f.name) != getattr(chief, f.name)]
    if changed:
        log(f"{cluster.name}: takes the chief's configuration where its own differs: " + ", ".join(changed))
    if own.xla is None or own.xla == chief.xla:
        words = f"{_xla_words(_compiled(chief))}, as the chief (worker 0) chose"
    else:
        words = f"{_xla_words(_compiled(chief))}, the chief's choice (its flags: --xla={own.xla})"
    log(f"xla: {words}")
    return dataclasses.replace(run, config=chief)


def _cluster_xla(run):
    """Decide --xla for a cluster, on the chief, for every task. The layerwise graph can compile
    each worker's forward and backward pass, with the weights read first; with --xla auto the chief
    times the single-process step of one worker's batch with and without XLA
    (charrnn.autotune.choose_xla: a proxy, the compiled share being most of that step). The
    cell graph cannot be compiled there: LSTMCell reads its own variables, which live on the ps
    tasks."""
    c = run.config
    if c.rnn_impl == "layerwise":
        if c.xla is None:
            per_worker = dataclasses.replace(c, batch_size=run.train.batch_size)
            c = dataclasses.replace(c, xla=choose_xla(per_worker, run.train, log)[0])
        log(f"xla: {_xla_words(c.xla)}, for every worker (the chief's choice)")
        return dataclasses.replace(run, config=c)
    if c.xla is None:
        log("xla: off (on a cluster only --rnn_impl layerwise compiles: LSTMCell reads its own variables, "
            "which live on the ps tasks)")
        return dataclasses.replace(run, config=dataclasses.replace(c, xla=False))
    if c.xla:
        log("xla: the cell graph runs without XLA on a cluster (--rnn_impl layerwise compiles); config.json "
            "keeps --xla for single-machine runs")
    return run


def _xla_words(xla):
    return "XLA for each worker's forward and backward pass" if xla else "no XLA"


def _published_config_variable():
    """The chief's configuration as JSON, a variable on ps 0 in a graph of its own (the same
    name in every task makes it one variable there); never saved."""
    tf, tf1 = load()
    with tf1.device(task_device("ps", 0)):
        return tf1.get_variable("cluster_config", [], tf.string, trainable=False, collections=[],
                                initializer=tf1.constant_initializer(""))


def _publish_config(cluster, server, config):
    tf, tf1 = load()
    graph = tf.Graph()
    with graph.as_default():
        publish = _published_config_variable().assign(json.dumps(dataclasses.asdict(config)))
    with tf1.Session(server.target, graph=graph, config=cluster.session_config()) as session:
        session.run(publish)


def _published_config(cluster, server, timeout, poll_seconds=0.25):
    """The chief's published configuration (a Config), waiting for it up to ``timeout`` seconds."""
    tf, tf1 = load()
    graph = tf.Graph()
    with graph.as_default():
        variable = _published_config_variable()
        published = tf1.is_variable_initialized(variable)
    deadline = time.monotonic() + timeout
    with tf1.Session(server.target, graph=graph, config=cluster.session_config()) as session:
        log(f"{cluster.name}: waiting for the chief's configuration")
        while not session.run(published):
            if time.monotonic() >= deadline:
                raise ConfigError(f"the chief (worker 0 at {cluster.workers[0]}) did not publish its configuration "
                                  f"within {timeout:g} s (--cluster_timeout); start it or check its log")
            time.sleep(poll_seconds)
        raw = json.loads(session.run(variable).decode("utf-8"))
    return Config.from_dict(raw, "the chief's configuration")


def _work(run, cluster, server, timeout):
    """A non-chief worker's loop: wait for the chief's variables, then train each step the
    chief hands out until it says stop."""
    tf, tf1 = load()
    c, loader = run.config, run.train
    graph = tf.Graph()
    with graph.as_default(), tf1.device(cluster.device):
        tf1.set_random_seed(c.seed)
        model = ReplicaTrainGraph(c, cluster, xla=_compiled(c))
        init_local = tf1.local_variables_initializer()
    graph.finalize()
    log(f"{cluster.name}: waiting for the chief (worker 0 at {cluster.workers[0]}) to initialize or "
        "restore the variables")
    manager = tf1.train.SessionManager(local_init_op=init_local, ready_op=model.ready, graph=graph,
                                       recovery_wait_secs=0.5)
    session = manager.wait_for_session(server.target, config=cluster.session_config(), max_wait_secs=timeout)
    if session is None:
        raise ConfigError(f"the chief (worker 0 at {cluster.workers[0]}) did not initialize the variables "
                          f"within {timeout:g} s (--cluster_timeout); start it or check its log")
    if not c.sync_replicas:
        return _work_async(run, cluster, server, session, model)
    share = _Share(session, model, loader, cluster.name)
    total = run_length(c, loader.num_batches)
    losses, computing, waiting, steps = [], 0.0, 0.0, 0
    try:
        last = int(session.run(model.pushed[cluster.index]))  # a restarted worker's predecessor's
        while True:
            started = time.perf_counter()
            step = _next_step(session, model, last)
            if step == STOP or step >= total:
                break
            if step <= last:
                continue
            handed = time.perf_counter()
            losses.append(share.run(step))
            last = step
            computing += time.perf_counter() - handed
            waiting += handed - started
            steps += 1
            if (step + 1) % c.print_every == 0 or step + 1 == total:
                log(f"{cluster.name}: step {step + 1}/{total}  loss {np.mean(losses):.4f} (its streams)  "
                    f"{1000 * computing / len(losses):.1f} ms/step computing, "
                    f"{1000 * waiting / len(losses):.1f} ms/step waiting")
                losses, computing, waiting = [], 0.0, 0.0
        log(f"{cluster.name}: stopped by the chief after {steps} step(s) of this run")
    finally:
        _NEVER_CLOSED.append(session)  # the training session stays open: see _say_done
        _say_done(cluster, server)


def _work_async(run, cluster, server, session, model):
    """A non-chief worker's loop with --nosync_replicas: apply its own gradients until the
    global step reaches the end the chief set (the run's end, or its --max_steps) or the chief
    has stopped."""
    c = run.config
    steps_per_epoch = run.train.num_batches * cluster.num_workers
    total = run_length(c, steps_per_epoch)
    step, end = (int(v) for v in session.run([model.global_step, model.end_step]))
    share = _OwnPace(session, model, run, cluster.name, steps_per_epoch, step)
    losses, steps, started = [], 0, time.perf_counter()
    try:
        stopped = bool(session.run(model.stopped))
        while step < end and not stopped:
            loss, _, step, stopped = share.run(step)
            losses.append(loss)
            steps += 1
            if steps % c.print_every == 0:
                log(f"{cluster.name}: global step {step}/{total}  loss {np.mean(losses):.4f} (its streams, "
                    f"its batch {share.batches})  {1000 * (time.perf_counter() - started) / len(losses):.1f} ms/step")
                losses, started = [], time.perf_counter()
        reached = f"the run reached step {step}/{total}" if end >= total else \
            f"step {step}/{total} reaches the chief's --max_steps (global step {end})"
        log(f"{cluster.name}: " + ("stopped by the chief" if stopped else reached)
            + f" after {steps} update(s) of its own in this run")
    finally:
        _NEVER_CLOSED.append(session)
        _say_done(cluster, server)


def _next_step(session, model, last, poll_seconds=2.0):
    """The next step this worker computes: its token; or, if none comes within ``poll_seconds``
    while the chief has handed out a step this worker has not given its gradient for, that step
    (a token for it is passed over later). That covers a worker started in place of one that was
    killed: the dead one took the step's token, or its dequeue, still pending on the ps, takes
    the next one. STOP if the chief has stopped."""
    _, tf1 = load()
    options = tf1.RunOptions(timeout_in_ms=int(1000 * poll_seconds))
    while True:
        try:
            return int(session.run(model.token, options=options))
        except tf1.errors.DeadlineExceededError:
            handed, stopped = session.run([model.handed, model.stopped])
            if stopped:
                return STOP
            if handed > last:
                return int(handed)


def _tell(session, ops, seconds=10):
    """Run ``ops`` (the end of a run, told to the others) if the cluster still answers: a task
    that is gone must not turn the error that ended the run into another, or into a hang."""
    _, tf1 = load()
    try:
        session.run(ops, options=tf1.RunOptions(timeout_in_ms=int(1000 * seconds)))
    except tf1.errors.OpError as e:
        log(f"warning: could not tell the other tasks that this one is done ({type(e).__name__})")

