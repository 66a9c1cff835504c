"""Command-line entry points. Flags live here only; library code takes a Config."""
import os
import sys

from absl import app, flags

from charrnn.config import Config
from charrnn.errors import CharRNNError

FLAGS = flags.FLAGS
_DEFAULTS = Config()


def _fail(program, message):
    print(f"{program}: error: {message}", file=sys.stderr)
    sys.exit(2)


def _run(main, program):
    def guarded(argv):
        if len(argv) > 1:
            _fail(program, f"unexpected arguments {argv[1:]}; every option is a --flag (see --help)")
        try:
            return main()
        except CharRNNError as e:
            _fail(program, str(e))
        except BrokenPipeError:  # e.g. charrnn-sample | head: the reader has all it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
        except KeyboardInterrupt:  # outside training's own handler (which saves first)
            print(f"{program}: interrupted", file=sys.stderr)
            sys.exit(130)

    # The flags are defined in this module, not the entry script: make them the script's key
    # flags so --help lists them (absl files __main__'s flags under sys.argv[0]).
    for flag in FLAGS.get_flags_for_module(__name__):
        FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    app.run(guarded)


# ---------------------------------------------------------------- charrnn-train

_CONFIG_FLAGS = ("hidden_size", "num_layers", "batch_size", "seq_length", "val_frac", "num_epochs",
                 "learning_rate", "decay_rate", "grad_clip", "dropout", "seed", "print_every",
                 "save_every", "eval_every", "patience", "max_to_keep", "rnn_impl", "xla", "deterministic")


def _define_train_flags():
    d = _DEFAULTS
    flags.DEFINE_string("data_dir", "data", "Folder whose *.txt files (UTF-8) are the training text.")
    flags.DEFINE_string("save_dir", "save", "Folder for checkpoints, config.json and vocab.json. "
                        "If it holds a checkpoint, training resumes from it.")
    if "log_dir" in FLAGS:  # absl.logging defines --log_dir for log files it never writes here
        delattr(FLAGS, "log_dir")
    flags.DEFINE_string("log_dir", "logs", "TensorBoard folder (runs 'train' and 'val').")
    flags.DEFINE_boolean("fresh", False, "Start over even if --save_dir holds a checkpoint "
                         "(its checkpoints are deleted).")
    flags.DEFINE_integer("max_steps", None, "Stop after this many steps of this invocation "
                         "(checkpointed; run again to go on).")
    flags.DEFINE_enum("preset", None, ["cpu30"], "A named configuration (see README); flags given "
                      "explicitly override its values. cpu30: the best validation loss on ~1 MB of "
                      "text in 30 minutes on a 2-core CPU.")
    flags.DEFINE_float("max_minutes", None, "Stop after this much wall time in this invocation "
                       "(checkpointed; run again to go on).")
    flags.DEFINE_integer("hidden_size", d.hidden_size, "LSTM units per layer (also the embedding size).")
    flags.DEFINE_integer("num_layers", d.num_layers, "Number of stacked LSTM layers.")
    flags.DEFINE_integer("batch_size", d.batch_size, "Parallel rows of text per step.")
    flags.DEFINE_integer("seq_length", d.seq_length, "Characters per row per step (truncated BPTT length).")
    flags.DEFINE_float("val_frac", d.val_frac, "Fraction at the end of the text held out for validation.")
    flags.DEFINE_integer("num_epochs", d.num_epochs, "Total epochs of the run (a resume counts from step 0).")
    flags.DEFINE_float("learning_rate", d.learning_rate, "Adam learning rate at epoch 0.")
    flags.DEFINE_float("decay_rate", d.decay_rate, "Learning-rate multiplier per epoch.")
    flags.DEFINE_float("grad_clip", d.grad_clip, "Clip gradients to this global norm.")
    flags.DEFINE_float("dropout", d.dropout, "Drop probability on LSTM inputs and outputs in training.")
    flags.DEFINE_integer("seed", d.seed, "Seed for weights and dropout; recorded in config.json.")
    flags.DEFINE_integer("print_every", d.print_every, "Steps between progress lines and summaries.")
    flags.DEFINE_integer("save_every", d.save_every, "Steps between checkpoints.")
    flags.DEFINE_integer("eval_every", d.eval_every, "Steps between validation runs (also at epoch ends).")
    flags.DEFINE_integer("patience", d.patience, "Stop after this many validations without "
                         "improvement; 0 never stops early.")
    flags.DEFINE_integer("max_to_keep", d.max_to_keep, "Latest checkpoints to keep.")
    flags.DEFINE_enum("rnn_impl", d.rnn_impl, ["cell", "layerwise"],
                      "Training graph: 'cell' is MultiRNNCell+dynamic_rnn; 'layerwise' computes the "
                      "same LSTM one layer at a time (faster; same checkpoints).")
    flags.DEFINE_boolean("xla", d.xla, "Compile the whole training step with XLA (--noxla: don't).")
    flags.DEFINE_boolean("deterministic", d.deterministic, "Use TensorFlow's op determinism, so "
                         "a resumed run is bit-identical on any device (on CPUs it already is).")


def _train_main():
    from charrnn import train

    from charrnn.presets import PRESETS

    preset = PRESETS[FLAGS.preset] if FLAGS.preset else {}
    # Explicit flags beat the preset, which beats the defaults; both count as chosen on resume.
    explicit = [name for name in _CONFIG_FLAGS if FLAGS[name].present or name in preset]
    config = Config(**{name: FLAGS[name].value if FLAGS[name].present else preset.get(name, FLAGS[name].value)
                       for name in _CONFIG_FLAGS})
    if FLAGS.max_steps is not None and FLAGS.max_steps <= 0:
        raise_config(f"--max_steps must be positive (got {FLAGS.max_steps})")
    if FLAGS.max_minutes is not None and not FLAGS.max_minutes > 0:
        raise_config(f"--max_minutes must be positive (got {FLAGS.max_minutes})")
    run = train.prepare(config, FLAGS.data_dir, FLAGS.save_dir, explicit, FLAGS.fresh)
    result = train.train(run, FLAGS.save_dir, FLAGS.log_dir, max_steps=FLAGS.max_steps,
                         max_minutes=FLAGS.max_minutes)
    if result.get("signum"):
        sys.exit(128 + result["signum"])


def raise_config(message):
    from charrnn.errors import ConfigError

    raise ConfigError(message)


def train_main():
    _define_train_flags()
    _run(_train_main, "charrnn-train")


# ---------------------------------------------------------------- charrnn-sample

def _define_sample_flags():
    flags.DEFINE_string("save_dir", "save", "Folder of a trained model.")
    flags.DEFINE_string("checkpoint", "auto", "auto (best if any, else latest), best, latest, "
                        "or a checkpoint path prefix.")
    flags.DEFINE_string("prime", "The ", "Text to start from; empty draws the first character.")
    flags.DEFINE_integer("n", 500, "Characters to generate after the prime.")
    flags.DEFINE_float("temperature", 1.0, "Divide logits by this; below 1 is safer, 0 is greedy.")
    flags.DEFINE_integer("top_k", 0, "Sample only from the k most likely characters; 0 = all.")
    flags.DEFINE_float("top_p", 1.0, "Sample only from the smallest set with this much probability.")
    flags.DEFINE_boolean("argmax", False, "Always take the most likely character (greedy).")
    flags.DEFINE_integer("seed", 0, "Random seed; the same seed gives the same text.")


def _sample_main():
    problems = []
    if FLAGS.n < 0:
        problems.append(f"--n must be 0 or more (got {FLAGS.n})")
    if FLAGS.temperature < 0:
        problems.append(f"--temperature must be 0 (greedy) or positive (got {FLAGS.temperature})")
    if FLAGS.top_k < 0:
        problems.append(f"--top_k must be 0 (off) or positive (got {FLAGS.top_k})")
    if not 0 < FLAGS.top_p <= 1:
        problems.append(f"--top_p must be in (0, 1] (got {FLAGS.top_p})")
    greedy = FLAGS.argmax or FLAGS.temperature == 0
    if greedy and (FLAGS.top_k or FLAGS.top_p < 1):
        problems.append("--argmax/--temperature 0 always takes the top character; "
                        "drop --top_k/--top_p or sample with a positive temperature")
    if problems:
        raise_config("; ".join(problems))

    from charrnn.sample import Sampler
    from charrnn.tfcompat import use_sampling_xla_flags
    from charrnn.train import log

    use_sampling_xla_flags()  # before anything is compiled: XLA reads its flags once
    sampler = Sampler(FLAGS.save_dir, FLAGS.checkpoint, log=log)
    pieces = sampler.generate(FLAGS.prime, FLAGS.n, seed=FLAGS.seed,
                              temperature=FLAGS.temperature or 1.0, top_k=FLAGS.top_k,
                              top_p=FLAGS.top_p, greedy=greedy)
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sampler.close()


def sample_main():
    _define_sample_flags()
    _run(_sample_main, "charrnn-sample")


# ---------------------------------------------------------------- charrnn-eval

def _define_eval_flags():
    flags.DEFINE_string("save_dir", "save", "Folder of a trained model.")
    flags.DEFINE_string("text", None, "UTF-8 file to score (required).")
    flags.DEFINE_string("checkpoint", "auto", "auto (best if any, else latest), best, latest, "
                        "or a checkpoint path prefix.")
    flags.DEFINE_boolean("skip_unknown", False, "Drop characters the model never saw (and count "
                         "them) instead of refusing the text.")
    flags.DEFINE_integer("batch_size", None, "Parallel rows the text is cut into; each starts from "
                         "a zero state. Default: the run's --batch_size.")
    flags.DEFINE_integer("seq_length", 200, "Characters per row per session.run; the state carries "
                         "across windows, so this changes speed, not the result.")
    flags.DEFINE_boolean("json", False, "Print the result as one JSON object instead of a line.")


def _eval_main():
    problems = []
    if not FLAGS.text:
        problems.append("--text is required: the UTF-8 file to score")
    for name in ("batch_size", "seq_length"):
        if FLAGS[name].value is not None and FLAGS[name].value <= 0:
            problems.append(f"--{name} must be a positive integer (got {FLAGS[name].value})")
    if problems:
        raise_config("; ".join(problems))

    import json

    from charrnn.data import read_text_file
    from charrnn.evaluate import evaluate_text, format_result
    from charrnn.train import log

    text = read_text_file(FLAGS.text)
    result = evaluate_text(FLAGS.save_dir, text, FLAGS.checkpoint, skip_unknown=FLAGS.skip_unknown,
                           batch_size=FLAGS.batch_size, seq_length=FLAGS.seq_length,
                           source=f"--text {FLAGS.text}", log=log)
    print(json.dumps(result) if FLAGS.json else format_result(result), flush=True)


def eval_main():
    _define_eval_flags()
    _run(_eval_main, "charrnn-eval")


# ---------------------------------------------------------------- charrnn-plot

def _define_plot_flags():
    if "log_dir" in FLAGS:  # absl.logging defines --log_dir for log files it never writes here
        delattr(FLAGS, "log_dir")
    flags.DEFINE_string("log_dir", "logs", "TensorBoard folder written by charrnn-train "
                        "(runs 'train' and 'val').")
    flags.DEFINE_string("out", "loss.png", "PNG file to write (replaced atomically).")
    flags.DEFINE_float("smoothing", 0.6, "Exponential smoothing of the train loss, in [0, 1) like "
                       "TensorBoard's slider but two-sided (no lag); 0 draws no smoothed line.")


def _plot_main():
    from charrnn.plot import plot_losses

    print(plot_losses(FLAGS.log_dir, FLAGS.out, smoothing=FLAGS.smoothing), flush=True)


def plot_main():
    _define_plot_flags()
    _run(_plot_main, "charrnn-plot")
