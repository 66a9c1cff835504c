"""Command-line entry points. Flags live here only; library code takes a Config."""
import contextlib
import math
import os
import shutil
import sys
import tempfile

from absl import app, flags

from charrnn.config import Config, flag_fields
from charrnn.errors import CharRNNError, ConfigError
from charrnn.presets import PRESET_MINUTES, PRESETS
from charrnn.rundir import CHECKPOINT_CHOICES

FLAGS = flags.FLAGS


def _fail(program, message):
    print(f"{program}: error: {message}", file=sys.stderr)
    sys.exit(2)


def run_command(main, program):
    """app.run(main) for a command or bench script named ``program``: a CharRNNError, a stray
    argument or Ctrl-C becomes one line on stderr and a non-zero exit."""
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
    # flags so --help lists them (absl files __main__'s flags under sys.argv[0]). A bench script
    # gets its config flags listed this way too.
    for flag in FLAGS.get_flags_for_module(__name__):
        FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    app.run(guarded)


# ---------------------------------------------------------------- config flags

def define_config_flags(flag_values=FLAGS):
    """Define one flag per Config field a user sets, with the field's help and default.

    Bounds are not given to absl (its range errors take two lines): ``Config.validate`` checks them.
    """
    kinds = {int: flags.DEFINE_integer, float: flags.DEFINE_float, bool: flags.DEFINE_boolean,
             str: flags.DEFINE_string}
    for field in flag_fields():
        help_text = field.metadata["help"]
        if "auto" in field.metadata:  # only booleans so far: --name, --noname, --name=auto
            flag = flags.BooleanFlag(field.name, field.default, help_text)
            flag.parser = _AutoBooleanParser()
            flags.DEFINE_flag(flag, flag_values)
        elif "choices" in field.metadata:
            flags.DEFINE_enum(field.name, field.default, list(field.metadata["choices"]), help_text,
                              flag_values=flag_values)
        else:
            kinds[field.type](field.name, field.default, help_text, flag_values=flag_values)


class _AutoBooleanParser(flags.BooleanParser):
    """A boolean flag that also takes "auto" (None): the run decides."""

    def parse(self, argument):
        if isinstance(argument, str) and argument.strip().lower() == "auto":
            return None
        return super().parse(argument)

    def flag_type(self):
        return "bool or auto"


def define_preset_flag(flag_values=FLAGS):
    """Define --preset, naming one of PRESETS."""
    flags.DEFINE_enum("preset", None, sorted(PRESETS), "A named configuration (see README); flags "
                      "given explicitly override its values. cpu30: the best validation loss on ~1 MB "
                      "of text in 30 minutes on a 2-core CPU.", flag_values=flag_values)


def config_from_flags(preset_name, flag_values=FLAGS):
    """The Config the parsed flags describe, and the names of the fields given as flags.

    Explicit flags beat the preset, which beats the defaults. Only the explicit ones change a
    resumed run (train.prepare): a preset describes how a run starts, so a resume keeps the saved
    values of the preset's other fields, even where a later release changed the preset. Not
    validated: join ``config.problems()`` with any other flag errors.
    """
    preset = PRESETS[preset_name] if preset_name else {}
    values, explicit = {}, []
    for field in flag_fields():
        flag = flag_values[field.name]
        values[field.name] = flag.value if flag.present else preset.get(field.name, flag.value)
        if flag.present:
            explicit.append(field.name)
    return Config(**values), explicit


def define_benchmark_flags(flag_values=FLAGS):
    """--data, --preset and the config flags: what a bench script that trains on one text takes."""
    flags.DEFINE_string("data", None, "UTF-8 text file to train on (required).", flag_values=flag_values)
    define_preset_flag(flag_values)
    define_config_flags(flag_values)


def benchmark_config(flag_values=FLAGS):
    """(Config, problems) from define_benchmark_flags' flags: the config's problems and --data's."""
    config, _ = config_from_flags(flag_values["preset"].value, flag_values)
    problems = config.problems()
    data = flag_values["data"].value
    if not data:
        problems.append("--data is required: the UTF-8 text file to train on")
    elif not os.path.isfile(data):
        problems.append(f"--data {data}: no such file")
    return config, problems


@contextlib.contextmanager
def benchmark_run(config, data, prefix):
    """A run of ``config`` prepared on a copy of the text file ``data`` in a temporary folder,
    removed afterwards: yields (charrnn.train.Run, the folder), for bench scripts."""
    from charrnn import train as trainer  # TensorFlow's graph code, only when a bench runs

    work = tempfile.mkdtemp(prefix=prefix)
    try:
        data_dir = os.path.join(work, "data")
        os.makedirs(data_dir)
        shutil.copy(data, os.path.join(data_dir, "input.txt"))
        yield (trainer.prepare(config, data_dir, os.path.join(work, "unused"), cache_dir=os.path.join(work, "cache")),
               work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def config_argv(config):
    """charrnn-train's flags for every field of ``config`` a user sets, e.g. ``--xla=True``."""
    return [f"--{field.name}={'auto' if getattr(config, field.name) is None else getattr(config, field.name)}"
            for field in flag_fields()]


# ---------------------------------------------------------------- charrnn-train

def _define_train_flags():
    flags.DEFINE_string("data_dir", "data", "Folder whose *.txt files (UTF-8) are the training text.")
    flags.DEFINE_string("save_dir", "save", "Folder for checkpoints, config.json and vocab.json. "
                        "If it holds a checkpoint, training resumes from it.")
    if "log_dir" in FLAGS:  # absl.logging defines --log_dir for log files it never writes here
        delattr(FLAGS, "log_dir")
    flags.DEFINE_string("log_dir", "logs", "TensorBoard folder (runs 'train' and 'val').")
    flags.DEFINE_boolean("fresh", False, "Start over even if --save_dir holds a checkpoint "
                         "(its checkpoints are deleted).")
    _define_cache_flag()
    flags.DEFINE_string("init_from", None, "Fine-tune: start a new run in --save_dir from the weights of "
                        "this save directory's model (its shape and character ids; a fresh optimizer, step "
                        "0). Run the same command again to resume it.")
    flags.DEFINE_string("init_checkpoint", "auto", "With --init_from, which checkpoint: " + CHECKPOINT_CHOICES + ".")
    flags.DEFINE_boolean("extend_vocab", False, "With --init_from, give characters of the text the source "
                         "model never saw new ids, with fresh embedding rows and softmax columns (the "
                         "source's characters keep their trained ones); without it they are refused.")
    flags.DEFINE_integer("max_steps", None, "Stop after this many steps of this invocation "
                         "(checkpointed; run again to go on).")
    flags.DEFINE_float("max_minutes", None, "Stop after this much wall time in this invocation "
                       "(checkpointed; run again to go on). A new run with --decay_schedule cosine or "
                       "linear and no --decay_steps ends its schedule there: the steps that fit are "
                       "measured at start-up and saved as its decay_steps. Default: the --preset's "
                       "budget (cpu30: 30), else none; 0: no limit, whatever the preset.")
    define_preset_flag()
    define_config_flags()
    _define_cluster_flags()


def _define_cluster_flags():
    """Where this process runs in a training cluster (see charrnn/cluster.py); none: one process."""
    flags.DEFINE_string("ps_hosts", None, "Cluster: the parameter-server tasks, host:port,... "
                        "(with --worker_hosts, --job_name, --task_index; without them, TF_CONFIG if set).")
    flags.DEFINE_string("worker_hosts", None, "Cluster: the worker tasks, host:port,...; worker 0 is the "
                        "chief (it validates and writes the save directory). --batch_size is each worker's.")
    flags.DEFINE_string("job_name", None, "Cluster: this task's job, ps or worker.")
    flags.DEFINE_integer("task_index", None, "Cluster: this task's index in its job (default 0).")
    flags.DEFINE_float("cluster_timeout", 300.0, "Cluster: seconds to wait for another task to answer "
                       "or for the chief to initialize the variables before giving up.")
    flags.DEFINE_string("local_cluster", None, "Try a cluster on this machine: PS,WORKERS (e.g. 1,2) starts "
                        "that many tasks of this same command on free loopback ports, prefixes their "
                        "output with the task's name, and stops them all on Ctrl-C.")


def _define_cache_flag():
    flags.DEFINE_string("cache_dir", None, "Folder for prepared ids (the text read once into a "
                        "memory-mapped file, reused until a file changes); runs may share it. "
                        "Default: $XDG_CACHE_HOME/charrnn, else ~/.cache/charrnn.")


def _train_main():
    from charrnn import cluster as clusters
    from charrnn import train

    cluster = clusters.describe(FLAGS.ps_hosts, FLAGS.worker_hosts, FLAGS.job_name, FLAGS.task_index,
                                os.environ.get("TF_CONFIG"))
    if FLAGS.local_cluster:
        if any(FLAGS[name].present for name in ("ps_hosts", "worker_hosts", "job_name", "task_index")):
            raise ConfigError("--local_cluster starts its own tasks; drop --ps_hosts, --worker_hosts, "
                              "--job_name and --task_index")
        num_ps, num_workers = clusters.parse_local_cluster(FLAGS.local_cluster)
        # The same command for every task, this flag emptied, each task's cluster flags appended.
        command = [sys.executable, sys.argv[0], *sys.argv[1:], "--local_cluster="]
        sys.exit(clusters.launch_local(num_ps, num_workers, command, train.log))
    if cluster is None:
        return _train_one(train)
    # A task of a cluster: TensorFlow's server threads cannot be stopped, so the task ends its
    # process itself (errors still as one line).
    try:
        status = _train_task(train, clusters, cluster)
    except CharRNNError as e:
        print(f"charrnn-train: error: {cluster.name}: {e}", file=sys.stderr)
        status = 2
    except KeyboardInterrupt:
        print(f"charrnn-train: {cluster.name}: interrupted", file=sys.stderr)
        status = 130
    except Exception as e:  # e.g. a task of the cluster went away: TensorFlow's error, in one line
        from charrnn.tfcompat import load

        if not isinstance(e, load()[1].errors.OpError):
            raise
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        print(f"charrnn-train: error: {cluster.name}: {type(e).__name__}: {first_line[:200]}", file=sys.stderr)
        status = 1
    clusters.exit_process(status)


def _train_task(train, clusters, cluster):
    """Run this process's task of ``cluster``; return its exit status."""
    if not FLAGS.cluster_timeout > 0:
        raise ConfigError(f"--cluster_timeout must be positive (got {FLAGS.cluster_timeout})")
    if cluster.job == "ps":
        clusters.serve_ps(cluster, train.log)
        return 0
    from charrnn import replica

    run = _prepared_run(train, replica=(cluster.index, cluster.num_workers))
    result = replica.run_task(run, cluster, FLAGS.save_dir, FLAGS.log_dir, max_steps=FLAGS.max_steps,
                              max_minutes=_max_minutes(), timeout=FLAGS.cluster_timeout)
    return 128 + result.signum if result is not None and result.signum else 0


def _train_one(train):
    """charrnn-train as a single process."""
    run = _prepared_run(train)
    result = train.train(run, FLAGS.save_dir, FLAGS.log_dir, max_steps=FLAGS.max_steps,
                         max_minutes=_max_minutes())
    if result.signum:
        sys.exit(128 + result.signum)


def _prepared_run(train, replica=None):
    config, explicit = config_from_flags(FLAGS.preset)
    problems = config.problems()
    if FLAGS.max_steps is not None and FLAGS.max_steps <= 0:
        problems.append(f"--max_steps must be positive (got {FLAGS.max_steps})")
    if FLAGS.max_minutes is not None and not FLAGS.max_minutes >= 0:
        problems.append(f"--max_minutes must be positive, or 0 for no limit (got {FLAGS.max_minutes})")
    if problems:
        raise ConfigError("; ".join(problems))
    return train.prepare(config, FLAGS.data_dir, FLAGS.save_dir, explicit, FLAGS.fresh, FLAGS.cache_dir,
                         init_from=FLAGS.init_from, init_checkpoint=FLAGS.init_checkpoint,
                         extend_vocab=FLAGS.extend_vocab, replica=replica, budget_minutes=_max_minutes(),
                         preset=FLAGS.preset)


def _max_minutes():
    """This invocation's time limit: --max_minutes if given (0: none), else the preset's budget."""
    if FLAGS["max_minutes"].present:
        return FLAGS.max_minutes or None
    return PRESET_MINUTES.get(FLAGS.preset)


def train_main():
    _define_train_flags()
    run_command(_train_main, "charrnn-train")


# ---------------------------------------------------------------- charrnn-sample

def _define_model_flags():
    """--save_dir and --checkpoint: which trained model a command opens."""
    flags.DEFINE_string("save_dir", "save", "Folder of a trained model.")
    flags.DEFINE_string("checkpoint", "auto", CHECKPOINT_CHOICES + ".")


def _define_sample_flags():
    _define_model_flags()
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
    if not (math.isfinite(FLAGS.temperature) and FLAGS.temperature >= 0):
        problems.append("--temperature must be 0 (greedy) or a finite positive number "
                        f"(got {FLAGS.temperature})")
    if FLAGS.top_k < 0:
        problems.append(f"--top_k must be 0 (off) or positive (got {FLAGS.top_k})")
    if not 0 < FLAGS.top_p <= 1:
        problems.append(f"--top_p must be in (0, 1] (got {FLAGS.top_p})")
    greedy = FLAGS.argmax or FLAGS.temperature == 0
    if greedy and (FLAGS.top_k or FLAGS.top_p < 1):
        problems.append("--argmax/--temperature 0 always takes the top character; "
                        "drop --top_k/--top_p or sample with a positive temperature")
    if problems:
        raise ConfigError("; ".join(problems))

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
    run_command(_sample_main, "charrnn-sample")


# ---------------------------------------------------------------- charrnn-eval

def _define_eval_flags():
    _define_model_flags()
    flags.DEFINE_string("text", None, "UTF-8 file to score (required).")
    flags.DEFINE_boolean("skip_unknown", False, "Drop characters the model never saw (and count "
                         "them) instead of refusing the text.")
    flags.DEFINE_integer("batch_size", None, "Parallel rows the text is cut into; each starts from "
                         "a zero state. Default: the run's --batch_size.")
    flags.DEFINE_integer("seq_length", 200, "Characters per row per session.run; the state carries "
                         "across windows, so this changes speed, not the result.")
    flags.DEFINE_boolean("json", False, "Print the result as one JSON object instead of a line.")
    _define_cache_flag()


def _eval_main():
    problems = []
    if not FLAGS.text:
        problems.append("--text is required: the UTF-8 file to score")
    for name in ("batch_size", "seq_length"):
        if FLAGS[name].value is not None and FLAGS[name].value <= 0:
            problems.append(f"--{name} must be a positive integer (got {FLAGS[name].value})")
    if problems:
        raise ConfigError("; ".join(problems))

    import json

    from charrnn.evaluate import evaluate_file, format_result
    from charrnn.train import log

    result = evaluate_file(FLAGS.save_dir, FLAGS.text, FLAGS.checkpoint, skip_unknown=FLAGS.skip_unknown,
                           batch_size=FLAGS.batch_size, seq_length=FLAGS.seq_length,
                           cache_dir=FLAGS.cache_dir, log=log)
    print(json.dumps(result) if FLAGS.json else format_result(result), flush=True)


def eval_main():
    _define_eval_flags()
    run_command(_eval_main, "charrnn-eval")


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
    run_command(_plot_main, "charrnn-plot")


# ---------------------------------------------------------------- charrnn-export

def _define_export_flags():
    _define_model_flags()
    flags.DEFINE_string("out", None, "Folder of SavedModel versions (required): the model is written "
                        "to --out/N, N the next free number, the layout TF Serving watches.")
    flags.DEFINE_boolean("xla", True, "Compile the generation loop with XLA, as charrnn-sample does "
                         "(TF Serving then needs --xla_cpu_compilation_enabled); --noxla leaves it to "
                         "TensorFlow's executor: any server runs it, about 3x slower.")


def _export_main():
    if not FLAGS.out:
        raise ConfigError("--out is required: the folder the SavedModel goes into (as --out/N)")

    from charrnn.export import export
    from charrnn.train import log

    print(export(FLAGS.save_dir, FLAGS.out, FLAGS.checkpoint, xla=FLAGS.xla, log=log), flush=True)


def export_main():
    _define_export_flags()
    run_command(_export_main, "charrnn-export")
