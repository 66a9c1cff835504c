"""The training loop: stateful batches, learning-rate decay, validation, summaries, checkpoints."""
import dataclasses
import json
import math
import os
import signal
import sys
import time

import numpy as np

from charrnn import checkpoint
from charrnn.config import Config, load_config, save_config, write_json_atomic
from charrnn.data import EvalStream, TextLoader, Vocab, fingerprint, format_chars, read_text_dir, split_ids
from charrnn.errors import CharRNNError, CheckpointError, ConfigError, TrainingError
from charrnn.model import EVAL, SAMPLE, TRAIN, CharRNN
from charrnn.tfcompat import load, release_free_memory, session_config

LN2 = math.log(2)


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


def prepare(config, data_dir, save_dir, explicit=(), fresh=False):
    """Read the data and reconcile ``config`` with any run already in ``save_dir``.

    ``explicit`` names the fields the user set on the command line: on resume those override the
    saved config (fixed fields must still match), every other field keeps its saved value.
    Raises before anything on disk changes.
    """
    config.validate()
    text, files = read_text_dir(data_dir)
    notes = [f"data: {len(text):,} characters from {len(files)} file(s) in {data_dir}"]
    if "\r\n" in text:
        notes.append("data: the text has CRLF line ends; they are kept as characters")
    vocab = Vocab.from_text(text)
    config = dataclasses.replace(config, vocab_size=len(vocab), data_sha256=fingerprint(text))

    resume = checkpoint.has_checkpoint(save_dir) and not fresh
    if resume:
        saved = load_config(save_dir)
        saved_vocab = Vocab.load(save_dir)
        if saved_vocab.chars != vocab.chars:
            added = sorted(set(vocab.chars) - set(saved_vocab.chars))
            removed = sorted(set(saved_vocab.chars) - set(vocab.chars))
            raise ConfigError(
                f"cannot resume {save_dir}: the vocabulary of {data_dir} differs from the saved one "
                f"(new: {format_chars(added) or 'none'}; gone: {format_chars(removed) or 'none'}); "
                "restore the data or pass --fresh to start over")
        merged = dataclasses.replace(saved, **{k: getattr(config, k) for k in explicit})
        merged = dataclasses.replace(merged, vocab_size=config.vocab_size, data_sha256=config.data_sha256)
        differences = saved.fixed_differences(merged)
        if differences:
            raise ConfigError(f"cannot resume {save_dir} with different settings ("
                              + "; ".join(differences) + "); use the saved values or pass --fresh")
        changed = [f"{k} {getattr(saved, k)!r} -> {getattr(merged, k)!r}" for k in explicit
                   if getattr(saved, k) != getattr(merged, k)]
        if changed:
            notes.append("resume: changed " + ", ".join(changed))
        config = merged
        config.validate()

    ids = vocab.encode(text)
    train_ids, val_ids = split_ids(ids, config.val_frac)
    train = TextLoader(train_ids, config.batch_size, config.seq_length)
    val = None
    if val_ids is None:
        notes.append("validation: off (--val_frac 0)")
    else:
        val = EvalStream(val_ids, config.batch_size, config.seq_length)
        notes.append(f"validation: last {len(val_ids):,} characters ({config.val_frac:g} of the text)")
    return Run(config, vocab, train, val, resume, notes)


class _StopSignal:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps, so it can save and exit."""

    def __init__(self):
        self.signum = None

    def __enter__(self):
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:  # a second Ctrl-C while saving: restore default behaviour
            signal.signal(signum, self._previous[signum])
        self.signum = signum

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def evaluate(session, model, stream):
    """Mean loss in nats/char over every target of ``stream``, carrying state, no update."""
    session.run(model.reset_state_op)
    total, count = 0.0, 0.0
    for k in range(stream.num_batches):
        x, y, w = stream.batch(k)
        loss_sum, weight_sum, _ = session.run([model.loss_sum, model.weight_sum, model.eval_op],
                                              {model.inputs: x, model.targets: y, model.weights: w})
        total += loss_sum
        count += weight_sum
    return float(total / count)


class _Summaries:
    """Scalar summaries as protos (no graph ops), one writer per TensorBoard run."""

    def __init__(self, log_dir, graph):
        _, tf1 = load()
        self._tf1 = tf1
        # A per-process suffix: event file names carry only the second they were opened, so a
        # resume within the same second would otherwise overwrite the previous run's file.
        suffix = f".{os.getpid()}"
        self.log_dir = log_dir
        self.train = tf1.summary.FileWriter(os.path.join(log_dir, "train"), graph, filename_suffix=suffix)
        self.val = tf1.summary.FileWriter(os.path.join(log_dir, "val"), filename_suffix=suffix)

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


def train(run, save_dir, log_dir, max_steps=None, max_minutes=None):
    """Train (or resume) until ``num_epochs`` are done, patience runs out, or a signal arrives.

    ``max_steps`` / ``max_minutes`` stop this invocation after that many steps / that much wall
    time (evaluations included), with a checkpoint, so running again goes on.
    Returns a dict describing how the run ended.
    """
    tf, tf1 = load()
    c = run.config
    for note in run.notes:
        log(note)
    checkpoint.prepare_save_dir(save_dir)
    # Signals are caught from here on: a Ctrl-C while the graph builds stops after the first step.
    with checkpoint.SaveDirLock(save_dir), _StopSignal() as stop:
        if not run.resume:
            checkpoint.remove_run_files(save_dir)
        if c.deterministic:
            tf.config.experimental.enable_op_determinism()
        graph = tf.Graph()
        with graph.as_default():
            tf1.set_random_seed(c.seed)
            model = CharRNN(c, TRAIN)
            eval_model = CharRNN(c, EVAL, batch_size=run.val.batch_size) if run.val else None
            sample_model = CharRNN(c, SAMPLE) if run.val else None
            variables = tf1.global_variables()
            saver = tf1.train.Saver(variables, max_to_keep=c.max_to_keep, save_relative_paths=True)
            best_saver = tf1.train.Saver(variables, max_to_keep=1, save_relative_paths=True)
            init_global = tf1.global_variables_initializer()
            init_local = tf1.local_variables_initializer()
        graph.finalize()  # every op exists now; the loop must not add any

        with tf1.Session(graph=graph, config=session_config(log)) as session:
            if run.resume:
                path = checkpoint.usable_checkpoint(save_dir, log)
                session.run(init_local)
                checkpoint.restore(session, saver, variables, path, save_dir)
                log(f"resumed from {path}")
            else:
                session.run([init_global, init_local])
            summaries = _Summaries(log_dir, graph if not run.resume else None)
            try:
                return _loop(session, run, model, eval_model, sample_model, saver, best_saver,
                             summaries, save_dir, stop, max_steps, max_minutes)
            finally:
                summaries.close()


def _loop(session, run, model, eval_model, sample_model, saver, best_saver, summaries, save_dir, stop,
          max_steps, max_minutes):
    c, loader = run.config, run.train
    step = int(session.run(model.global_step))
    total_steps = c.num_epochs * loader.num_batches
    chars_per_step = c.batch_size * c.seq_length
    best_path = os.path.join(save_dir, checkpoint.BEST_DIR)
    best = _read_best(best_path)
    evals_since_best = 0
    log(f"training: {loader.num_batches} batches/epoch, {c.num_epochs} epochs, "
        f"{total_steps} steps; starting at step {step}")

    def save():
        path = _save(saver, session, save_dir, step, c, run.vocab)
        log(f"saved {path}")
        return path

    def validate():
        nonlocal best, evals_since_best
        val_loss = evaluate(session, eval_model, run.val)
        summaries.scalars(summaries.val, step, loss=val_loss, bits_per_char=val_loss / LN2)
        summaries.text(summaries.val, step, "sample", _sample_text(session, sample_model, run.vocab, step))
        release_free_memory()  # the sampler's first run compiles it
        improved = best is None or val_loss < best[1]
        if improved:
            best = (step, val_loss)
            evals_since_best = 0
            os.makedirs(best_path, exist_ok=True)
            _save(best_saver, session, best_path, step)
            _write_best(best_path, step, val_loss)
        else:
            evals_since_best += 1
        history.append({"minutes": round((time.time() - started) / 60, 2), "step": step,
                        "val_loss": round(val_loss, 4)})
        log(f"validation at step {step}: {val_loss:.4f} nats/char, {val_loss / LN2:.4f} bits/char"
            + (" (best)" if improved else f" (best {best[1]:.4f} at step {best[0]})"))
        return val_loss

    if step >= total_steps:
        log(f"nothing to do: step {step} already reaches {c.num_epochs} epochs; raise --num_epochs to go on")
        return {"status": "complete", "step": step}

    losses, norms, history = [], [], []
    started = time.time()
    interval_seconds, interval_steps = 0.0, 0  # time inside training steps only, not eval or saves
    steps_this_run = 0
    last_loss = val_loss = None
    status = "complete"
    first = True
    while step < total_steps:
        epoch, k = loader.position(step)
        if k == 0 or first:
            if k == 0:
                session.run(model.reset_state_op)
            model.assign_lr(session, c.learning_rate * c.decay_rate ** epoch)
            first = False
        step_start = time.perf_counter()
        x, y = loader.batch(k)
        _, loss, norm = session.run([model.train_op, model.loss, model.grad_norm],
                                    {model.inputs: x, model.targets: y})
        interval_seconds += time.perf_counter() - step_start
        if steps_this_run == 0:
            release_free_memory()  # what compiling the step used and freed
        if not (math.isfinite(loss) and math.isfinite(norm)):
            # A non-finite gradient norm means this step's update already spoiled the weights.
            what = f"loss is {loss}" if not math.isfinite(loss) else f"gradient norm is {norm}"
            raise TrainingError(f"training diverged: {what} at step {step + 1}; nothing was saved "
                                "after the last checkpoint. Lower --learning_rate or --grad_clip and resume")
        step += 1
        steps_this_run += 1
        interval_steps += 1
        losses.append(loss)
        norms.append(norm)
        last_loss = loss
        end_of_epoch = step % loader.num_batches == 0

        if step % c.print_every == 0 or step == total_steps:
            ms_per_step = 1000 * interval_seconds / interval_steps
            chars_per_sec = interval_steps * chars_per_step / interval_seconds
            eta = (total_steps - step) * (time.time() - started) / steps_this_run  # wall clock, incl. evals
            lr = c.learning_rate * c.decay_rate ** epoch
            print(f"step {step}/{total_steps}  epoch {epoch + 1}/{c.num_epochs}  "
                  f"loss {np.mean(losses):.4f}  lr {lr:.2e}  {ms_per_step:.1f} ms/step  "
                  f"{chars_per_sec:,.0f} chars/s  ETA {_duration(eta)}", flush=True)
            summaries.scalars(summaries.train, step, loss=np.mean(losses), learning_rate=lr,
                              grad_norm=np.mean(norms), chars_per_sec=chars_per_sec,
                              bits_per_char=np.mean(losses) / LN2)
            losses, norms = [], []
            interval_seconds, interval_steps = 0.0, 0

        if eval_model is not None and (step % c.eval_every == 0 or end_of_epoch or step == total_steps):
            val_loss = validate()
            if c.patience and evals_since_best >= c.patience:
                log(f"stopping: no validation improvement in {c.patience} evaluations")
                status = "patience"
                break
        if stop.signum is not None:
            status = "interrupted"
            break
        if max_steps is not None and steps_this_run >= max_steps:
            status = "max_steps"
            break
        if max_minutes is not None and time.time() - started >= 60 * max_minutes:
            status = "max_minutes"
            break
        if step % c.save_every == 0 and step < total_steps:
            save()

    path = save()
    _plot(summaries, save_dir)
    minutes = (time.time() - started) / 60
    if status == "interrupted":
        log(f"interrupted by {signal.Signals(stop.signum).name} at step {step}; "
            "run the same command to resume")
    log(f"{status}: step {step}/{total_steps}, train loss {last_loss:.4f}, {minutes:.1f} min this run"
        + (f", best validation {best[1]:.4f} nats/char at step {best[0]}" if best else ""))
    return {"status": status, "step": step, "loss": float(last_loss), "path": path,
            "val_loss": val_loss, "best": best, "signum": stop.signum, "history": history,
            "minutes": minutes}


def _sample_text(session, model, vocab, step, n=300):
    """``n`` characters from the current weights, primed with a newline (or the first character)."""
    prime = [vocab.index.get("\n", 0)]
    generated = session.run(model.generated, {model.prime: prime, model.num_chars: n, model.seed: step})
    return vocab.decode(generated)


def _save(saver, session, directory, step, config=None, vocab=None):
    """Saver.save (after config and vocabulary, if given), a failed write made a clear error.

    Config and vocabulary go first (atomic writes), so a checkpoint never exists without them;
    written only here, a run that fails before its first save changes nothing on disk.
    TensorFlow writes the new files under temporary names and updates the 'checkpoint' list
    only after they are complete, so the previous checkpoint stays the one a resume loads.
    """
    tf, _ = load()
    try:
        if config is not None:
            save_config(config, directory)
            vocab.save(directory)
        return saver.save(session, os.path.join(directory, checkpoint.CHECKPOINT_PREFIX), global_step=step)
    except (OSError, tf.errors.OpError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise CheckpointError(f"could not save the step-{step} checkpoint in {directory} ({reason}); "
                              "free disk space and run again: the previous checkpoint is kept")


def _plot(summaries, save_dir):
    """Draw the loss curves into save_dir/loss.png; a failed plot never fails the run."""
    from charrnn.plot import plot_losses  # matplotlib loads only when a run ends

    summaries.train.flush()
    summaries.val.flush()
    try:
        log(f"plot: {plot_losses(summaries.log_dir, os.path.join(save_dir, 'loss.png'))}")
    except (CharRNNError, OSError, ValueError) as e:
        log(f"warning: no loss plot ({e})")


def _read_best(best_path):
    try:
        with open(os.path.join(best_path, "best.json"), encoding="utf-8") as f:
            obj = json.load(f)
        return int(obj["step"]), float(obj["val_loss"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_best(best_path, step, val_loss):
    write_json_atomic(os.path.join(best_path, "best.json"),
                      {"step": step, "val_loss": val_loss, "bits_per_char": val_loss / LN2})


def _duration(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"
