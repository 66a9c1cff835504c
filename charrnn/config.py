"""Run configuration: one dataclass of hyperparameters, saved as versioned JSON beside checkpoints."""
import dataclasses
import json
import math
import os
import tempfile

from charrnn.errors import ConfigError

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"

# Fields that fix the shapes of the weights, the carried state or the data layout: a resume must
# match them exactly. Everything else may be changed on resume by passing the flag again.
FIXED_FIELDS = ("vocab_size", "hidden_size", "num_layers", "batch_size", "seq_length", "val_frac",
                "data_sha256")


@dataclasses.dataclass
class Config:
    """Every hyperparameter of a run. Library code takes this whole; flags map onto it in the CLI."""

    # Model shape.
    vocab_size: int = 0  # set from the data
    hidden_size: int = 256
    num_layers: int = 2
    # Data layout: batch_size rows of the text, cut into windows of seq_length characters.
    batch_size: int = 50
    seq_length: int = 50
    val_frac: float = 0.1  # the end of the text held out for validation
    data_sha256: str = ""  # fingerprint of the training text, so a resume reads the same stream
    # Optimisation.
    num_epochs: int = 10
    learning_rate: float = 2e-3
    decay_rate: float = 0.97  # learning rate multiplier per epoch
    grad_clip: float = 5.0  # global gradient norm
    dropout: float = 0.0  # drop probability on the LSTM inputs and outputs, training only
    seed: int = 0
    # Speed: how the training graph is built. Both share checkpoints and give the same losses.
    rnn_impl: str = "cell"  # "cell": MultiRNNCell + dynamic_rnn; "layerwise": one layer at a time
    xla: bool = True  # compile the whole training step with XLA
    deterministic: bool = False  # TensorFlow op determinism (bit-identical runs on GPUs too)
    # Bookkeeping.
    print_every: int = 50
    save_every: int = 500
    eval_every: int = 500  # steps between validation runs (also at each epoch end)
    patience: int = 0  # stop after this many evaluations without improvement; 0 = never
    max_to_keep: int = 5

    def validate(self):
        """Raise ConfigError naming every out-of-range value."""
        problems = []
        for name in ("hidden_size", "num_layers", "batch_size", "seq_length", "num_epochs",
                     "print_every", "save_every", "eval_every", "max_to_keep"):
            if getattr(self, name) <= 0:
                problems.append(f"--{name} must be a positive integer (got {getattr(self, name)})")
        for name in ("learning_rate", "grad_clip"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                problems.append(f"--{name} must be a positive number (got {value})")
        if not 0 < self.decay_rate <= 1:
            problems.append(f"--decay_rate must be in (0, 1] (got {self.decay_rate})")
        if not 0 <= self.dropout < 1:
            problems.append(f"--dropout must be in [0, 1) (got {self.dropout})")
        if not 0 <= self.val_frac < 1:
            problems.append(f"--val_frac must be in [0, 1) (got {self.val_frac})")
        if self.rnn_impl not in ("cell", "layerwise"):
            problems.append(f"--rnn_impl must be cell or layerwise (got {self.rnn_impl!r})")
        if self.patience < 0:
            problems.append(f"--patience must be 0 (off) or positive (got {self.patience})")
        if problems:
            raise ConfigError("; ".join(problems))

    def fixed_differences(self, other):
        """List 'name: saved X, now Y' for every fixed field where ``other`` differs."""
        return [f"{name}: saved {getattr(self, name)!r}, now {getattr(other, name)!r}"
                for name in FIXED_FIELDS if getattr(self, name) != getattr(other, name)]


def write_json_atomic(path, obj):
    """Write JSON via a temporary file and rename, so a crash never leaves half a file."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, ensure_ascii=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_json(path, kind):
    """Load a charrnn JSON file, checking its format version; ``kind`` names it in errors."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: missing {kind} file; is this a charrnn save directory?")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: unreadable {kind} file ({e}); restore it or train with --fresh")
    if not isinstance(obj, dict) or obj.get("format_version") != FORMAT_VERSION:
        version = obj.get("format_version") if isinstance(obj, dict) else None
        raise ConfigError(f"{path}: {kind} format version {version!r} is not {FORMAT_VERSION}; "
                          "it was written by another charrnn version")
    return obj


def save_config(config, save_dir):
    write_json_atomic(os.path.join(save_dir, CONFIG_FILE),
                      {"format_version": FORMAT_VERSION, "config": dataclasses.asdict(config)})


def load_config(save_dir):
    """Read and validate ``save_dir/config.json``: known fields only, each of the right type."""
    path = os.path.join(save_dir, CONFIG_FILE)
    raw = read_json(path, "config").get("config")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: no 'config' object")
    fields = {f.name: f for f in dataclasses.fields(Config)}
    unknown = sorted(set(raw) - set(fields))
    # Fields added after a run was saved take their defaults; the model's shape never does.
    missing = sorted(set(FIXED_FIELDS) - set(raw))
    if unknown or missing:
        raise ConfigError(f"{path}: unknown fields {unknown}, missing fields {missing}; "
                          "it was not written by this charrnn version")
    values = {}
    for name, value in raw.items():
        expected = type(getattr(Config, name))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not expected:
            raise ConfigError(f"{path}: field {name} should be {expected.__name__}, got {value!r}")
        values[name] = value
    config = Config(**values)
    try:
        config.validate()
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}")
    if config.vocab_size < 2:
        raise ConfigError(f"{path}: vocab_size {config.vocab_size} is below 2")
    return config
