"""The training loop: stateful batches, learning-rate decay, validation, summaries, checkpoints.

``prepare`` reads the data and reconciles the config with a run already saved; ``train`` builds
the graphs and hands them to a ``Trainer``, whose ``run`` is the loop: one training step, a
progress line every ``print_every`` steps, validation, checkpoints, and the checks that stop it.
"""
import contextlib
import dataclasses
import math
import os
import signal
import sys
import time

import numpy as np

from charrnn.autotune import budget_steps, choose_xla
from charrnn.config import Config
from charrnn.corpus import UnknownCharacters, prepare_dir
from charrnn.data import EvalStream, TextLoader, Vocab, format_chars, split_ids
from charrnn.errors import CharRNNError, ConfigError, TrainingError
from charrnn.evaluate import evaluate_stream
from charrnn.model import VOCAB_AXES, EvalGraph, SampleGraph, TrainGraph
from charrnn.presets import PRESETS
from charrnn.rundir import RunDir, restore, restore_into
from charrnn.sample import generate_ids
from charrnn.signals import StopSignal
from charrnn.tfcompat import load, release_free_memory, session_config, steady_malloc

LN2 = math.log(2)
CLEANING_FIELDS = ("bad_text", "min_char_count")  # how the text is prepared: part of data_sha256


def log(message):
    print(message, file=sys.stderr, flush=True)


@dataclasses.dataclass
class Run:
    """Everything prepared before the graph: the config to use, the data, and whether we resume."""

    config: Config
    vocab: Vocab
    train: TextLoader
    val: EvalStream = None
    resume: bool = False
    notes: list = dataclasses.field(default_factory=list)
    init_from: object = None  # the TrainedModel whose weights a new fine-tuning run starts from
    budget_seconds: float = 0.0  # what measuring a time budget's step total took (see prepare)
    # Minutes whose step total the chief of a new synchronous cluster measures while the warm-up
    # runs, then saves as decay_steps (see prepare and charrnn.replica.ChiefTrainer); None: none.
    cluster_budget: float = None


def prepare(config, data_dir, save_dir, explicit=(), fresh=False, cache_dir=None, init_from=None,
            init_checkpoint="auto", extend_vocab=False, replica=None, budget_minutes=None, preset=None):
    """Prepare the data and reconcile ``config`` with any run already in ``save_dir``.

    ``explicit`` names the fields the user set on the command line: on resume those override the
    saved config (fixed fields must still match), every other field keeps its saved value. The
    text is read through the prepared-data cache in ``cache_dir`` (see charrnn/corpus.py).
    ``init_from`` (a save directory) starts a fine-tuning run from the weights of its checkpoint
    ``init_checkpoint``: its shape and character ids are kept (see :func:`_fine_tuning`); running
    the same command again resumes that run. With ``extend_vocab``, characters of the text the
    source never saw join its vocabulary at their sorted places: they get freshly initialised
    embedding rows and softmax columns, the source's characters their trained ones (moved to
    their new ids, see :func:`start_from_source`). Raises before anything in ``save_dir`` changes.

    ``replica`` (index, count) prepares worker ``index`` of a cluster of ``count`` workers:
    ``config.batch_size`` is then each worker's, the run's config (and config.json) holds the
    global layout of count * batch_size streams, and ``run.train`` gives this worker's rows of it.

    ``budget_minutes`` (a new single-process run with a 'cosine' or 'linear' schedule and no
    --decay_steps) makes the schedule end when that much wall time does: the step total that fits
    is measured once, here (charrnn.autotune.budget_steps, deciding --xla auto first, since
    the two graphs differ in speed), and saved as decay_steps; ``run.budget_seconds`` is what the
    measurement took.

    ``preset`` names the --preset ``config`` came from: a resume keeps the saved run's values of
    its fields (only ``explicit`` ones change) and notes where they differ from the preset's.
    """
    config.validate()
    steady_malloc()  # before any step is timed or run: glibc's warm-up would slow the first ~45
    if extend_vocab and not init_from:
        raise ConfigError("--extend_vocab needs --init_from SAVE_DIR: it adds the text's new characters "
                          "to that model's vocabulary")
    if replica:  # --batch_size is each worker's; the run's layout has all the workers' streams
        config = dataclasses.replace(config, batch_size=config.batch_size * replica[1])
    rundir = RunDir(save_dir)
    resume = rundir.has_checkpoint() and not fresh
    if resume:
        saved, saved_vocab = rundir.read_config(), rundir.read_vocab()
        kept = [f"{k} {getattr(saved, k)!r} (the preset's {getattr(config, k)!r})"
                for k in PRESETS.get(preset, {}) if k not in explicit and getattr(saved, k) != getattr(config, k)]
        # The saved cleaning options apply unless given again: they decide the text's fingerprint.
        # An explicit "auto" (None) keeps the saved decision: a resume must build the same graph.
        config = dataclasses.replace(saved, **{k: getattr(config, k) for k in explicit
                                               if getattr(config, k) is not None})
        cleaning = [f"{k}: saved {getattr(saved, k)!r}, now {getattr(config, k)!r}" for k in CLEANING_FIELDS
                    if getattr(saved, k) != getattr(config, k)]
        if cleaning:  # said before the text is read: they would change its ids and fingerprint
            raise ConfigError(f"cannot resume {save_dir} with different settings (" + "; ".join(cleaning)
                              + "); use the saved values or pass --fresh")
    source, imposed = None, None
    if init_from:
        source, config = _fine_tuning(config, explicit, save_dir, resume, init_from, init_checkpoint)
        config.validate()  # the source's cell may not suit the flags' graph (gru with layerwise)
        imposed = saved_vocab if resume else source.vocab
    elif resume and saved.init_from:
        imposed = saved_vocab  # a fine-tuned run keeps its source's characters, used or not
    added = []
    try:
        corpus = prepare_dir(data_dir, cache_dir, config.bad_text, config.min_char_count, log, vocab=imposed)
    except UnknownCharacters as e:
        named = format_chars(e.chars, limit=len(e.chars))
        if resume:  # the run's vocabulary is fixed by its checkpoints now
            raise ConfigError(f"cannot resume {save_dir}: the text has {len(e.chars)} character(s) its "
                              f"vocabulary lacks: {named}; remove them from the text, or fine-tune again "
                              "with --init_from SOURCE --fresh --extend_vocab")
        if not extend_vocab:
            raise ConfigError(f"the text has {len(e.chars)} character(s) the --init_from model never saw: "
                              f"{named}; remove them from the text, or pass --extend_vocab to give them "
                              "new ids (fresh embedding rows and softmax columns)")
        added = e.chars
        corpus = prepare_dir(data_dir, cache_dir, config.bad_text, config.min_char_count, log,
                             vocab=imposed.extended(added))
    vocab = corpus.vocab
    notes = [f"data: {len(corpus.ids):,} characters from {len(corpus.files)} file(s) in {data_dir}"
             + (" (prepared ids reused)" if corpus.reused else "")] + corpus.notes
    if source:
        used = sum(1 for c in source.vocab.chars if vocab.counts[vocab.index[c]])
        notes.append(f"fine-tuning: weights from {source.checkpoint}; fresh optimizer, step 0, the learning-"
                     f"rate schedule from the start; {used} of the source's {len(source.vocab)} characters "
                     "occur in the text")
        if added:
            notes.append(f"--extend_vocab: {len(added)} new character(s) with fresh embedding rows and "
                         f"softmax columns: {format_chars(added, limit=len(added))}; the source's "
                         f"{len(source.vocab)} keep their trained ones")
        elif extend_vocab:
            notes.append("--extend_vocab: nothing to add, the source model has every character of the text")
        config = dataclasses.replace(config, added_chars="".join(added))
    config = dataclasses.replace(config, vocab_size=len(vocab), data_sha256=corpus.fingerprint)

    if resume:
        if saved_vocab.chars != vocab.chars:
            added = sorted(set(vocab.chars) - set(saved_vocab.chars))
            removed = sorted(set(saved_vocab.chars) - set(vocab.chars))
            raise ConfigError(
                f"cannot resume {save_dir}: the vocabulary of {data_dir} differs from the saved one "
                f"(new: {format_chars(added) or 'none'}; gone: {format_chars(removed) or 'none'}); "
                "restore the data or pass --fresh to start over")
        differences = saved.fixed_differences(config)
        if differences:
            raise ConfigError(f"cannot resume {save_dir} with different settings ("
                              + "; ".join(differences) + "); use the saved values or pass --fresh")
        changed = [f"{k} {getattr(saved, k)!r} -> {getattr(config, k)!r}" for k in explicit
                   if getattr(saved, k) != getattr(config, k)]
        if changed:
            notes.append("resume: changed " + ", ".join(changed))
        if kept:
            notes.append("resume: kept the saved run's " + ", ".join(kept) + f": --preset {preset} "
                         "sets up new runs; pass a flag to change a resumed run's value")
        config.validate()

    train_ids, val_ids = split_ids(corpus.ids, config.val_frac)
    rows = None
    if replica:
        index, count = replica
        if config.batch_size % count:
            raise ConfigError(f"the run has {config.batch_size} streams (--batch_size), which {count} workers "
                              "cannot share evenly; use a number of workers that divides it")
        per_worker = config.batch_size // count
        rows = slice(index * per_worker, (index + 1) * per_worker)
    train = TextLoader(train_ids, config.batch_size, config.seq_length, rows=rows)
    val = None
    if val_ids is None:
        notes.append("validation: off (--val_frac 0)")
    else:
        held_out = len(val_ids)
        if config.max_val_chars and held_out > config.max_val_chars:
            val_ids = val_ids[:config.max_val_chars]
        val = EvalStream(val_ids, config.batch_size, config.seq_length)
        notes.append(f"validation: last {held_out:,} characters ({config.val_frac:g} of the text)"
                     + (f", scoring the first {len(val_ids):,} (--max_val_chars)" if len(val_ids) < held_out
                        else ""))
    budget_seconds, cluster_budget = 0.0, None
    if config.decay_schedule != "epoch" and config.decay_steps == 0:
        # The budget is fixed once, when the schedule starts, and saved: a resume (even with
        # another --num_epochs) keeps the same learning rate at every step.
        if budget_minutes is not None and not resume and not replica:
            config, steps, budget_seconds = budget_steps(config, train, val, budget_minutes, log=log)
            config = dataclasses.replace(config, decay_steps=steps)
            notes.append(f"schedule: {config.decay_schedule} decay to step {steps:,} (what fits in "
                         f"{budget_minutes:g} minutes on this machine, measured above)")
        else:
            # On an asynchronous cluster a global step is one worker's batch: W of them make a batch.
            per_epoch = train.num_batches * (replica[1] if replica and not config.sync_replicas else 1)
            config = dataclasses.replace(config, decay_steps=config.num_epochs * per_epoch)
            epochs = (f"--num_epochs {config.num_epochs} x {per_epoch} "
                      + ("batches)" if per_epoch == train.num_batches else "global steps of one worker's batch)"))
            # A cluster's speed is its own (workers, ps, network): no single process can time it.
            # The chief times the cluster's own global steps while the warm-up runs, whose rates
            # do not depend on decay_steps, and fixes the total before it ends; until then
            # decay_steps holds the --num_epochs total.
            limited = budget_minutes is not None and replica and not resume
            why = cluster_budget_refusal(config) if limited else None
            if limited and why is None:
                cluster_budget = budget_minutes
                notes.append(f"schedule: {config.decay_schedule} decay to the global step that ends the "
                             f"{budget_minutes:g}-minute limit: the chief times the cluster's global steps "
                             f"{CLUSTER_TIMING_SKIP + 1}-{config.warmup_steps - 1} of the warm-up and fixes it "
                             f"before step {config.warmup_steps} (at most {epochs}")
            else:
                notes.append(f"schedule: {config.decay_schedule} decay to step {config.decay_steps:,} ({epochs}")
            if why is not None:
                notes.append(f"warning: this cluster does not turn the {budget_minutes:g}-minute limit into the "
                             f"schedule's end ({why}); it stops the run wherever the schedule is then. For a "
                             f"schedule that ends with the time, give --decay_steps (the global steps that fit)")
    return Run(config, vocab, train, val, resume, notes, None if resume else source, budget_seconds, cluster_budget)


# A synchronous cluster's chief times its global steps CLUSTER_TIMING_SKIP + 1 to warmup_steps - 1
# (the first ones connect and compile) to turn a time limit into decay_steps: at least
# CLUSTER_TIMED_STEPS of them.
CLUSTER_TIMING_SKIP = 2
CLUSTER_TIMED_STEPS = 10


def cluster_budget_refusal(config):
    """Why the chief of a new cluster run of ``config`` cannot time its warm-up to end the
    schedule with a time limit, or None if it can."""
    if not config.sync_replicas:
        return ("asynchronous workers compute their own learning rates from the configuration they "
                "started with")
    if config.warmup_steps - 1 - CLUSTER_TIMING_SKIP < CLUSTER_TIMED_STEPS:
        return (f"the chief times the warm-up's global steps, and --warmup_steps {config.warmup_steps} leaves "
                f"fewer than {CLUSTER_TIMED_STEPS}; give at least {CLUSTER_TIMED_STEPS + CLUSTER_TIMING_SKIP + 1}")
    return None


def _fine_tuning(config, explicit, save_dir, resume, init_from, init_checkpoint):
    """(source TrainedModel, or None on resume; config) of a run fine-tuned from ``init_from``:
    its shape is the run's and config.init_from records the checkpoint (the caller prepares the
    text under the source's vocabulary, so its characters keep their ids). A run already in
    ``save_dir`` is resumed only if it was fine-tuned from the same directory."""
    source_dir = os.path.abspath(init_from)
    if os.path.abspath(save_dir) == source_dir:
        raise ConfigError(f"--save_dir {save_dir} is the --init_from directory; fine-tune into a new "
                          "--save_dir (the source run stays as it is)")
    if resume:
        saved = RunDir(save_dir).read_config()
        if not saved.init_from.startswith(source_dir + os.sep):
            origin = f"fine-tuned from {saved.init_from}" if saved.init_from else "trained from scratch"
            raise ConfigError(f"--save_dir {save_dir} already holds a run ({origin}); pass --fresh to "
                              f"replace it with one fine-tuned from {init_from}, or choose another --save_dir")
        return None, config
    source = RunDir(init_from).open_model(init_checkpoint, log)
    shape = {name: getattr(source.config, name) for name in ("hidden_size", "num_layers", "model", "layer_norm")}
    differences = [f"--{name} {getattr(config, name)} (the source model's is {value})"
                   for name, value in shape.items() if name in explicit and getattr(config, name) != value]
    if differences:
        raise ConfigError(f"cannot fine-tune {init_from} with a different shape: {'; '.join(differences)}; "
                          "drop the flag (the shape comes from the source model)")
    return source, dataclasses.replace(config, **shape, init_from=os.path.abspath(source.checkpoint))


def start_from_source(session, run, weights):
    """Load a new fine-tuning run's ``weights`` (initialised) from its source's checkpoint. Each
    source character's embedding row, softmax column and bias go to its id in ``run.vocab``;
    characters --extend_vocab added keep the initial values a fresh run of this vocabulary has."""
    source = run.init_from
    positions = [run.vocab.index[c] for c in source.vocab.chars]  # source id -> this run's id
    restore_into(session, weights, source.checkpoint, source.save_dir, VOCAB_AXES, positions)


class _Summaries:
    """Scalar summaries as protos (no graph ops), one writer per TensorBoard run."""

    def __init__(self, log_dir, graph):
        _, tf1 = load()
        self._tf1 = tf1
        # A per-process suffix: event file names carry only the second they were opened, so a
        # resume within the same second would otherwise overwrite the previous run's file.
        suffix = f".{os.getpid()}"
        self.log_dir = log_dir
        try:
            self.train = tf1.summary.FileWriter(os.path.join(log_dir, "train"), graph, filename_suffix=suffix)
            self.val = tf1.summary.FileWriter(os.path.join(log_dir, "val"), filename_suffix=suffix)
        except tf1.errors.OpError as e:
            first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ConfigError(f"--log_dir {log_dir}: cannot write TensorBoard files there ({first_line[:160]}); "
                              "choose another --log_dir")

    def scalars(self, writer, step, **values):
        summary = self._tf1.Summary(value=[self._tf1.Summary.Value(tag=k, simple_value=float(v))
                                           for k, v in values.items()])
        writer.add_summary(summary, step)
        writer.flush()

    def text(self, writer, step, tag, text):
        """A text summary (TensorBoard's Text tab), as a proto: no graph ops needed."""
        tf, tf1 = load()
        value = tf1.Summary.Value(tag=tag)
        value.metadata.plugin_data.plugin_name = "text"
        # Markdown: indent by four spaces so line breaks and spacing show as written.
        value.tensor.CopyFrom(tf.make_tensor_proto("    " + text.replace("\n", "\n    ")))
        writer.add_summary(tf1.Summary(value=[value]), step)
        writer.flush()

    def close(self):
        self.train.close()
        self.val.close()


@dataclasses.dataclass
class TrainResult:
    """How a call of :func:`train` ended."""

    status: str  # complete, patience, interrupted, max_steps or max_minutes
    step: int  # the global step reached
    loss: float = None  # the last step's training loss
    val_loss: float = None  # the last validation's, if any ran
    best: tuple = None  # (step, validation loss) of the best checkpoint, over the whole run
    path: str = None  # the checkpoint written last
    signum: int = None  # the signal that interrupted the run
    history: list = dataclasses.field(default_factory=list)  # {minutes, step, val_loss} per validation
    minutes: float = 0.0  # wall time of this call's loop


def train(run, save_dir, log_dir, max_steps=None, max_minutes=None, replica=None):
    """Train (or resume) until ``num_epochs`` are done, patience runs out, or a signal arrives.

    ``max_steps`` / ``max_minutes`` stop this invocation after that many steps / that much wall
    time (evaluations included), with a checkpoint, so running again goes on. Returns a
    TrainResult. ``replica`` (a charrnn.replica.ChiefReplica) makes this process the chief of a
    cluster: its training graph, devices, session target and loop replace the single process's.
    """
    tf, tf1 = load()
    for note in run.notes:
        log(note)
    _check_log_dir(log_dir)
    if run.config.xla is None:  # --xla auto: the faster graph on this machine, recorded in config.json
        use_xla, _ = choose_xla(run.config, run.train, log)
        run = dataclasses.replace(run, config=dataclasses.replace(run.config, xla=use_xla))
    c = run.config
    rundir = RunDir(save_dir)
    # Signals are caught from here on: a Ctrl-C while the graph builds stops after the first step.
    with rundir.training(fresh=not run.resume), StopSignal() as stop:
        if c.deterministic:
            tf.config.experimental.enable_op_determinism()
        graph = tf.Graph()
        with graph.as_default(), (replica.device_scope() if replica else contextlib.nullcontext()):
            tf1.set_random_seed(c.seed)
            model = replica.train_graph(c) if replica else TrainGraph(c)
            eval_model = EvalGraph(c, batch_size=run.val.batch_size) if run.val else None
            sample_model = SampleGraph(c) if run.val else None
            variables = tf1.global_variables()
            weights = tf1.trainable_variables()  # the model's weights, not Adam's slots or the state
            saver = tf1.train.Saver(variables, max_to_keep=c.max_to_keep, save_relative_paths=True)
            best_saver = tf1.train.Saver(variables, max_to_keep=1, save_relative_paths=True)
            init_global = tf1.global_variables_initializer()
            init_local = tf1.local_variables_initializer()
        graph.finalize()  # every op exists now; the loop must not add any

        target, options = (replica.target, replica.session_config(log)) if replica else ("", session_config(log))
        with tf1.Session(target, graph=graph, config=options) as session:
            session.run(init_local)
            if run.resume:
                path = rundir.latest_usable(log)
                restore(session, saver, variables, path, save_dir)
                log(f"resumed from {path}")
            else:
                session.run(init_global)
                if run.init_from:
                    start_from_source(session, run, weights)
                    log(f"weights from {run.init_from.checkpoint}")
            summaries = _Summaries(log_dir, graph if not run.resume else None)
            try:
                trainer = (replica.trainer_class if replica else Trainer)(
                    run, rundir, session, model, eval_model, sample_model, saver, best_saver, summaries, stop)
                return trainer.run(max_steps, max_minutes)
            finally:
                summaries.close()


class Trainer:
    """The training loop over built graphs in a session, in named steps: ``train_step``,
    ``validate``, ``save`` and ``stop_reason``; ``run`` calls them in order."""

    def __init__(self, run, rundir, session, model, eval_model, sample_model, saver, best_saver,
                 summaries, stop):
        self.run_data, self.config, self.loader = run, run.config, run.train
        self.rundir, self.session = rundir, session
        self.model, self.eval_model, self.sample_model = model, eval_model, sample_model
        self.saver, self.best_saver = saver, best_saver
        self.summaries, self.stop = summaries, stop
        self.step = int(session.run(model.global_step))
        # Global steps per epoch: the loader's batches, except on an asynchronous cluster, where
        # a global step is one worker's batch (see charrnn.replica).
        self.steps_per_epoch = self.loader.num_batches
        self.total_steps = run_length(self.config, self.steps_per_epoch)
        self.chars_per_step = self.config.batch_size * self.config.seq_length  # trained on by train_step
        self.best = rundir.read_best()
        self.evals_since_best = 0
        self.history = []
        self.first_step = self.step  # where this invocation started
        self.started = time.time()

    def train_step(self):
        """One batch: set the epoch's learning rate (and reset the state) when an epoch starts or
        the run resumes, run the update, refuse a non-finite result; return (loss, grad norm)."""
        model = self.model
        _, k = self.loader.position(self.step)
        if k == 0:
            self.session.run(model.reset_state_op)
        self.set_learning_rate(k)
        x, y = self.loader.batch(k)
        _, loss, norm = self.session.run([model.train_op, model.loss, model.grad_norm],
                                         {model.inputs: x, model.targets: y})
        self.refuse_non_finite(loss, norm)
        self.step += 1
        return float(loss), float(norm)

    def set_learning_rate(self, k):
        """Assign the learning rate of this step (batch ``k`` of its epoch) when it can have
        changed: every step for 'cosine' and 'linear'; at an epoch's start, and when the run
        resumes, for 'epoch'."""
        if k == 0 or self.step == self.first_step or self.config.decay_schedule != "epoch":
            self.model.assign_lr(self.session, self.learning_rate(self.step))

    def refuse_non_finite(self, loss, norm):
        if not (math.isfinite(loss) and math.isfinite(norm)):
            # A non-finite gradient norm means this step's update already spoiled the weights.
            what = f"loss is {loss}" if not math.isfinite(loss) else f"gradient norm is {norm}"
            raise TrainingError(f"training diverged: {what} at step {self.step + 1}; nothing was saved "
                                "after the last checkpoint. Lower --learning_rate or --grad_clip and resume")

    def learning_rate(self, step):
        """The learning rate of update ``step`` (see :func:`learning_rate_at`)."""
        return learning_rate_at(self.config, self.steps_per_epoch, step)

    def validate(self):
        """Loss over every validation character, summaries, a sample, and the best checkpoint."""
        summaries, step = self.summaries, self.step
        val_loss = evaluate_stream(self.session, self.eval_model, self.run_data.val)
        summaries.scalars(summaries.val, step, loss=val_loss, bits_per_char=val_loss / LN2)
        summaries.text(summaries.val, step, "sample", self._sample_text())
        release_free_memory()  # the sampler's first run compiles it
        improved = self.best is None or val_loss < self.best[1]
        if improved:
            self.best = (step, val_loss)
            self.evals_since_best = 0
            self.rundir.save_best(self.best_saver, self.session, step, val_loss)
        else:
            self.evals_since_best += 1
        self.history.append({"minutes": round((time.time() - self.started) / 60, 2), "step": step,
                             "val_loss": round(val_loss, 4)})
        log(f"validation at step {step}: {val_loss:.4f} nats/char, {val_loss / LN2:.4f} bits/char"
            + (" (best)" if improved else f" (best {self.best[1]:.4f} at step {self.best[0]})"))
        return val_loss

    def save(self):
        path = self.rundir.save(self.saver, self.session, self.step, self.config, self.run_data.vocab)
        log(f"saved {path}")
        return path

    def stop_reason(self, steps_this_run, max_steps, max_minutes):
        """Why the loop stops after this step (a status), or None to go on."""
        c = self.config
        if c.patience and self.evals_since_best >= c.patience:
            log(f"stopping: no validation improvement in {c.patience} evaluations")
            return "patience"
        if self.stop.signum is not None:
            return "interrupted"
        if max_steps is not None and steps_this_run >= max_steps:
            return "max_steps"
        if max_minutes is not None and time.time() - self.started >= 60 * max_minutes:
            return "max_minutes"
        return None

    def run(self, max_steps=None, max_minutes=None):
        c, loader = self.config, self.loader
        log(f"training: {loader.num_batches} batches/epoch, {c.num_epochs} epochs, "
            f"{self.total_steps} steps; starting at step {self.step}")
        if self.step >= self.total_steps:
            if self.total_steps < c.num_epochs * self.steps_per_epoch:
                log(f"nothing to do: step {self.step} is the end of the {c.decay_schedule} schedule, whose "
                    f"learning rate reached 0 at step {c.decay_steps:,}; raise --final_lr_frac or "
                    "--decay_steps to go on")
            else:
                log(f"nothing to do: step {self.step} already reaches {c.num_epochs} epochs; "
                    "raise --num_epochs to go on")
            return TrainResult("complete", self.step, best=self.best)

        progress = _Progress(self)
        steps_this_run = 0
        loss = val_loss = validated = None
        status = "complete"
        while self.step < self.total_steps:
            step_start, before = time.perf_counter(), self.step
            loss, norm = self.train_step()
            progress.add(time.perf_counter() - step_start, loss, norm)
            if steps_this_run == 0:
                release_free_memory()  # what compiling the step used and freed
            steps_this_run += 1
            step = self.step

            def crossed(every):
                return _crossed(before, step, every)

            epoch_eval = c.validates_at_epoch_ends and crossed(self.steps_per_epoch)
            if crossed(c.print_every) or step >= self.total_steps:
                progress.report()
            if self.eval_model is not None and (crossed(c.eval_every) or epoch_eval
                                                or step >= self.total_steps):
                val_loss, validated = self.validate(), step
            status = self.stop_reason(step - self.first_step, max_steps, max_minutes) or status
            if status != "complete":
                break
            if crossed(c.save_every) and step < self.total_steps:
                self.save()

        if status in ("max_steps", "max_minutes") and self.eval_model is not None and validated != self.step:
            # A budgeted run ends with the number it was run for: the weights it stops with.
            val_loss = self.validate()
        path = self.save()
        _plot(self.summaries, self.rundir.plot_path)
        minutes = (time.time() - self.started) / 60
        if status == "interrupted":
            log(f"interrupted by {signal.Signals(self.stop.signum).name} at step {self.step}; "
                "run the same command to resume")
        log(f"{status}: step {self.step}/{self.total_steps}, train loss {loss:.4f}, {minutes:.1f} min this run"
            + (f", best validation {self.best[1]:.4f} nats/char at step {self.best[0]}" if self.best else ""))
        return TrainResult(status, self.step, loss=loss, val_loss=val_loss, best=self.best, path=path,
                           signum=self.stop.signum, history=self.history, minutes=minutes)

    def _sample_text(self, n=300):
        """``n`` characters from the current weights, primed with a newline (or the first character)."""
        vocab = self.run_data.vocab
        prime = [vocab.index.get("\n", 0)]
        return "".join(vocab.decode(ids) for ids in
                       generate_ids(self.session, self.sample_model, prime, n, seed=self.step))


def run_length(config, steps_per_epoch):
    """The global step a run ends at: --num_epochs of ``steps_per_epoch`` steps, or before that
    the end of a 'cosine' or 'linear' schedule that decays to 0 (--final_lr_frac 0), after which
    no update changes a weight (a budgeted run ends with its budget, not idling to its time)."""
    total = config.num_epochs * steps_per_epoch
    if config.decay_schedule != "epoch" and config.final_lr_frac == 0 and config.decay_steps:
        total = min(total, config.decay_steps)
    return total


def learning_rate_at(config, batches_per_epoch, step):
    """The learning rate of update ``step`` (the global step before it): a function of the step
    and the saved config only, so a resumed run continues the schedule exactly.

    'epoch': --learning_rate x --decay_rate ** epoch, as in 0.1.0. 'cosine' and 'linear': a linear
    warm-up to --learning_rate over --warmup_steps, then down to --final_lr_frac x --learning_rate
    at --decay_steps (and there after), so a run whose budget is known ends with a small learning
    rate instead of being cut off at a high one.
    """
    c = config
    if c.decay_schedule == "epoch":
        return c.learning_rate * c.decay_rate ** (step // batches_per_epoch)
    if step < c.warmup_steps:
        return c.learning_rate * (step + 1) / c.warmup_steps
    progress = min(1.0, (step - c.warmup_steps) / max(1, c.decay_steps - c.warmup_steps))
    if c.decay_schedule == "cosine":
        remaining = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        remaining = 1.0 - progress
    final = c.final_lr_frac * c.learning_rate
    return final + (c.learning_rate - final) * remaining


def _crossed(before, step, every):
    """Whether a multiple of ``every`` was reached going from step ``before`` to ``step``: one
    step, or several on an asynchronous cluster's chief, whose global step counts the others' too."""
    return step // every > before // every


class _Progress:
    """The progress line and training summaries every ``print_every`` steps: mean loss and
    gradient norm since the last line, and speed over the time spent in training steps only.

    A trainer whose global step also counts other workers' updates (``counts_others`` true: an
    asynchronous chief) reports the cluster's speed instead: global steps advanced over the wall
    time since the last line. The ETA counts global steps either way."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.losses, self.norms = [], []
        self.seconds = 0.0
        self.wall, self.from_step = time.time(), trainer.step

    def add(self, seconds, loss, norm):
        self.seconds += seconds
        self.losses.append(loss)
        self.norms.append(norm)

    def report(self):
        t = self.trainer
        c, step, total = t.config, t.step, t.total_steps
        epoch = (step - 1) // t.steps_per_epoch
        now = time.time()
        ms_per_step = 1000 * self.seconds / len(self.losses)
        if getattr(t, "counts_others", False):
            chars_per_sec = (step - self.from_step) * t.chars_per_step / (now - self.wall)
            speed = f"{chars_per_sec:,.0f} chars/s (cluster)"
        else:
            chars_per_sec = len(self.losses) * t.chars_per_step / self.seconds
            speed = f"{chars_per_sec:,.0f} chars/s"
        eta = (total - step) * (now - t.started) / (step - t.first_step)  # wall clock, incl. evals
        lr, loss = t.learning_rate(step - 1), np.mean(self.losses)
        print(f"step {step}/{total}  epoch {epoch + 1}/{c.num_epochs}  loss {loss:.4f}  lr {lr:.2e}  "
              f"{ms_per_step:.1f} ms/step  {speed}  ETA {_duration(eta)}", flush=True)
        t.summaries.scalars(t.summaries.train, step, loss=loss, learning_rate=lr,
                            grad_norm=np.mean(self.norms), chars_per_sec=chars_per_sec, bits_per_char=loss / LN2)
        self.losses, self.norms, self.seconds = [], [], 0.0
        self.wall, self.from_step = now, step


def _check_log_dir(log_dir):
    """Refuse a --log_dir that cannot hold TensorBoard's runs before anything else happens."""
    for path in (log_dir, os.path.join(log_dir, "train"), os.path.join(log_dir, "val")):
        if os.path.exists(path) and not os.path.isdir(path):
            raise ConfigError(f"--log_dir {log_dir}: {path} is a file, not a directory; "
                              "choose another --log_dir or move the file")


def _plot(summaries, path):
    """Draw the loss curves into ``path``; a failed plot never fails the run."""
    from charrnn.plot import plot_losses  # matplotlib loads only when a run ends

    summaries.train.flush()
    summaries.val.flush()
    try:
        log(f"plot: {plot_losses(summaries.log_dir, path)}")
    except (CharRNNError, OSError, ValueError) as e:
        log(f"warning: no loss plot ({e})")


def _duration(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"
