"""Run configuration: one dataclass of hyperparameters (charrnn/rundir.py saves it as config.json).

Each field's metadata holds its help text and bounds; the CLI generates its flags from them and
one checker (``Config.validate``, ``Config.from_dict``) reads them for flags, presets and files.
"""
import dataclasses
import math

from charrnn.errors import ConfigError

# Fields that fix the shapes of the weights, the carried state or the data layout: a resume must
# match them exactly. Everything else may be changed on resume by passing the flag again.
FIXED_FIELDS = ("vocab_size", "hidden_size", "num_layers", "batch_size", "seq_length", "val_frac",
                "data_sha256", "model", "layer_norm")
# Fixed fields added after 0.1.0: a config.json without one ran with the field's default.
ADDED_FIXED_FIELDS = ("model", "layer_norm")


def _field(default, help, *, from_data=False, min=None, above=None, max=None, below=None,
           choices=None, zero=None, auto=None, absent=None):
    """A Config field with its flag's help and its bounds: ``min``/``max`` inclusive,
    ``above``/``below`` exclusive; ``zero`` names what 0 means where 0 is allowed; ``auto``
    says how a value of None (the flag's "auto") is decided before a run is saved, and ``absent``
    what a saved config.json that lacks the field ran with.
    ``from_data`` fields are set from the training text, not by a flag."""
    bounds = dict(min=min, above=above, max=max, below=below, choices=choices, zero=zero, auto=auto,
                  absent=absent)
    metadata = {"help": help, "from_data": from_data, **{k: v for k, v in bounds.items() if v is not None}}
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class Config:
    """Every hyperparameter of a run. Library code takes this whole; flags map onto it in the CLI."""

    # Model shape.
    vocab_size: int = _field(0, "Distinct characters in the training text.", from_data=True, min=2)
    hidden_size: int = _field(256, "LSTM units per layer (also the embedding size).", above=0)
    num_layers: int = _field(2, "Number of stacked LSTM layers.", above=0)
    # Data layout: batch_size rows of the text, cut into windows of seq_length characters.
    batch_size: int = _field(50, "Parallel rows of text per step.", above=0)
    seq_length: int = _field(50, "Characters per row per step (truncated BPTT length).", above=0)
    val_frac: float = _field(0.1, "Fraction at the end of the text held out for validation.",
                             min=0, below=1)
    data_sha256: str = _field("", "Fingerprint of the training text, so a resume reads the same "
                              "stream.", from_data=True)
    # Cleaning the text while it is prepared; both choices are part of data_sha256.
    bad_text: str = _field("refuse", "NUL bytes and invalid UTF-8 in the training text: 'refuse' "
                           "(say which file and where), 'drop' them, or 'replace' them with U+FFFD "
                           "(then one more vocabulary entry); counted per file.",
                           choices=("refuse", "drop", "replace"))
    min_char_count: int = _field(0, "Fold characters seen fewer times than this in the training text "
                                 "into one, U+FFFD; 0 keeps every character.", min=0, zero="off")
    max_val_chars: int = _field(0, "Score at most this many characters (the first ones) of the "
                                "held-out text at each validation; 0 scores all of it.", min=0, zero="all")
    # Set by charrnn-train --init_from and --extend_vocab (not flags of their own): where the weights
    # started from, and which characters were new to them.
    init_from: str = _field("", "The checkpoint whose weights this run started from (fine-tuning); "
                            "empty for a run from scratch.", from_data=True)
    added_chars: str = _field("", "The characters charrnn-train --extend_vocab added to the --init_from "
                              "model's vocabulary (fresh embedding rows and softmax columns); empty if "
                              "none.", from_data=True)
    # Optimisation.
    num_epochs: int = _field(10, "Total epochs of the run (a resume counts from step 0).", above=0)
    learning_rate: float = _field(2e-3, "Adam learning rate at epoch 0.", above=0)
    decay_rate: float = _field(0.97, "Learning-rate multiplier per epoch.", above=0, max=1)
    grad_clip: float = _field(5.0, "Clip gradients to this global norm.", above=0)
    dropout: float = _field(0.0, "Drop probability on LSTM inputs and outputs in training.",
                            min=0, below=1)
    seed: int = _field(0, "Seed for weights and dropout; recorded in config.json.")
    # Added after 0.1.0 (issue 15): a schedule that ends with a step budget. A saved config.json
    # without these fields ran with the per-epoch decay, which is still the default.
    decay_schedule: str = _field("epoch", "Learning-rate schedule: 'epoch' multiplies it by "
                                 "--decay_rate once per epoch (open-ended training); 'cosine' and "
                                 "'linear' warm up over --warmup_steps, then decay to "
                                 "--final_lr_frac x --learning_rate at step --decay_steps.",
                                 choices=("epoch", "cosine", "linear"))
    decay_steps: int = _field(0, "The step at which 'cosine' and 'linear' reach their end; fixed "
                              "in config.json when the run starts, so a resume keeps it.", min=0,
                              zero="--num_epochs x batches per epoch")
    warmup_steps: int = _field(100, "Steps of linear warm-up from 0 to --learning_rate, for "
                               "'cosine' and 'linear' ('epoch' has none, as in 0.1.0).", min=0)
    final_lr_frac: float = _field(0.0, "The learning rate 'cosine' and 'linear' end at, as a "
                                  "fraction of --learning_rate.", min=0, max=1)
    # The recurrent cell (issue 15), as karpathy's char-rnn offers them: a config.json without it
    # ran an LSTM. Part of the weights' shape (FIXED_FIELDS).
    model: str = _field("lstm", "Recurrent cell: 'lstm' (LSTMCell, the default), 'gru' (GRUCell: one "
                        "state tensor per layer) or 'rnn' (BasicRNNCell, tanh).",
                        choices=("lstm", "gru", "rnn"))
    # Regularizers (issue 15), off by default: a config.json without them ran without them.
    variational_dropout: bool = _field(False, "Draw each --dropout mask once per row and step and "
                                       "use it at every time step of the window (variational "
                                       "dropout on inputs and outputs), instead of per character.")
    input_dropout: bool = _field(True, "Apply --dropout to the embedded input characters as well as to "
                                 "each layer's output (as 0.1.0 does); --noinput_dropout drops the "
                                 "layers' outputs only, and the layerwise graph then looks the first "
                                 "layer's input projection up in a (V, 4H) table instead of "
                                 "multiplying it out (about 25% faster at 2x384).")
    weight_decay: float = _field(0.1, "Decoupled weight decay (AdamW): each step also shrinks the "
                                 "weight matrices (not biases) by learning rate x this; 0 is plain "
                                 "Adam (0.1.0's, and what a saved run without this field resumes "
                                 "with).", min=0, absent=0.0)
    weight_drop: float = _field(0.0, "DropConnect on the recurrent kernels (AWD-LSTM's weight drop): "
                                "each training step drops this fraction of every layer's "
                                "hidden-to-hidden weights, the same ones for every row and time step "
                                "of the batch (the rest scaled by 1/keep); 0 is off. Needs --rnn_impl "
                                "layerwise.", min=0, below=1, zero="off")
    zoneout_c: float = _field(0.0, "Zoneout on the LSTM cell state (Krueger et al. 2016): in training, each "
                              "unit of each row keeps its previous cell value with this probability at "
                              "each time step instead of updating; evaluation and sampling use the "
                              "expectation, p x previous + (1 - p) x update. 0 is off. Needs --rnn_impl "
                              "layerwise.", min=0, below=1, zero="off")
    zoneout_h: float = _field(0.0, "Zoneout on the LSTM hidden state (the layer's output), as --zoneout_c "
                              "does on the cell. Needs --rnn_impl layerwise.", min=0, below=1, zero="off")
    # Layer normalization inside the LSTM (issue 15), off by default: a config.json without it ran
    # without it. It adds weights, so it is part of the weights' shape (FIXED_FIELDS).
    layer_norm: bool = _field(False, "Layer normalization inside each LSTM layer (Ba, Kiros & Hinton "
                              "2016): gates = LN(x W_x) + LN(h W_h) + bias and h = o x tanh(LN(c)), each "
                              "LN with its own learned gain and shift; the cell is carried "
                              "unnormalized. --model lstm only; either --rnn_impl.")
    # Initialization (issue 15): only a fresh run's starting weights, so a config.json without it
    # (0.1.0's) ran with 0, and a resume or --init_from does not read it.
    forget_bias_init: float = _field(0.0, "Starting value of each LSTM layer's forget-gate bias, on top "
                                     "of the 1 LSTMCell always adds to the forget gate: 0 (0.1.0's) "
                                     "starts the gate at sigmoid(1), 1 at sigmoid(2), so cells keep "
                                     "more of their state early in training (Gers et al. 2000). The "
                                     "other gates' biases start at 0. --model lstm only.",
                                     min=0, max=10)
    # Speed: how the training graph is built. Both share checkpoints and give the same losses.
    rnn_impl: str = _field("cell", "Training graph: 'cell' is MultiRNNCell+dynamic_rnn; 'layerwise' "
                           "computes the same LSTM one layer at a time (faster; same checkpoints).",
                           choices=("cell", "layerwise"))
    xla: bool = _field(None, "Compile the whole training step with XLA: true (--xla), false "
                       "(--noxla) or auto (the default): time both graphs for a few steps at "
                       "start-up and take XLA only if it is clearly faster here. config.json "
                       "records the choice, so a resume uses the same graph.",
                       auto="timed at start-up", absent=True)
    deterministic: bool = _field(False, "Use TensorFlow's op determinism, so a resumed run is "
                                 "bit-identical on any device (on CPUs it already is).")
    # Training on a cluster (issue 12): a config.json without it ran on one machine, where it
    # changes nothing.
    sync_replicas: bool = _field(True, "On a cluster, synchronous updates: each global step takes "
                                 "exactly one gradient from every worker (--nosync_replicas: each "
                                 "worker applies its own gradient as soon as it has it, and a global "
                                 "step is one worker's batch). No effect on one machine.")
    # Bookkeeping.
    print_every: int = _field(50, "Steps between progress lines and summaries.", above=0)
    save_every: int = _field(500, "Steps between checkpoints.", above=0)
    eval_every: int = _field(500, "Steps between validation runs (also at epoch ends with "
                             "--decay_schedule epoch) and at the end.", above=0)
    patience: int = _field(0, "Stop after this many validations without improvement; 0 never "
                           "stops early.", min=0, zero="off")
    max_to_keep: int = _field(5, "Latest checkpoints to keep.", above=0)

    def problems(self):
        """One line per wrongly typed or out-of-range value. Fields read from the data may still
        hold their defaults: a config made from flags has not seen the text yet."""
        return _problems({f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
                         unset_ok=True)

    def validate(self):
        """Raise ConfigError naming every problem on one line."""
        problems = self.problems()
        if problems:
            raise ConfigError("; ".join(problems))

    @classmethod
    def from_dict(cls, raw, where):
        """The Config of a saved run's ``raw`` dict, checked field by field; ``where`` starts errors.

        Fields added after a run was saved take their defaults; the fixed ones (the model's shape,
        the data) never do. An int is taken for a float, a bool never for a number.
        """
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - set(fields))
        missing = sorted(set(FIXED_FIELDS) - set(ADDED_FIXED_FIELDS) - set(raw))
        if unknown or missing:
            raise ConfigError(f"{where}: unknown fields {unknown}, missing fields {missing}; "
                              "it was not written by this charrnn version")
        values = {**{name: f.metadata.get("absent", f.default) for name, f in fields.items()}, **raw}
        problems = _problems(values, unset_ok=False)
        if problems:
            raise ConfigError(f"{where}: " + "; ".join(problems))
        return cls(**{name: float(value) if fields[name].type is float else value
                      for name, value in values.items()})

    @property
    def validates_at_epoch_ends(self):
        """Whether training also validates at each epoch end (besides every eval_every steps and
        at the end): with the per-epoch schedule (0.1.0's), whose learning rate changes there; a
        step schedule's epoch ends would only take time from its budget."""
        return self.decay_schedule == "epoch"

    def fixed_differences(self, other):
        """List 'name: saved X, now Y' for every fixed field where ``other`` differs."""
        return [f"{name}: saved {getattr(self, name)!r}, now {getattr(other, name)!r}"
                for name in FIXED_FIELDS if getattr(self, name) != getattr(other, name)]


def flag_fields():
    """The Config fields a user sets by flag (all but those read from the data), in order."""
    return [f for f in dataclasses.fields(Config) if not f.metadata["from_data"]]


def _problems(values, unset_ok):
    """One line per wrong value in ``values`` (every field by name); with ``unset_ok``, a field
    read from the data may hold its default."""
    problems = []
    for field in dataclasses.fields(Config):
        value, meta = values[field.name], field.metadata
        if value is None and "auto" in meta and unset_ok:
            continue  # decided when the run starts; a saved config always holds the decision
        if not _has_type(value, field.type):
            problems.append(f"field {field.name} should be {field.type.__name__}, got {value!r}")
        elif not _within(meta, value) and not (unset_ok and meta["from_data"] and value == field.default):
            name = field.name if meta["from_data"] else f"--{field.name}"
            problems.append(f"{name} must be {_requirement(field)} (got {value!r})")
    # DropConnect and zoneout are written into the layerwise LSTM: for a GRU or an RNN, say that
    # instead of asking for --rnn_impl layerwise, which computes LSTMs only.
    lstm_only = [f"--{name}" for name in ("weight_drop", "zoneout_c", "zoneout_h")
                 if _has_type(values[name], float) and 0 < values[name] < 1]
    if lstm_only and values["model"] != "lstm":
        problems.append(f"{' and '.join(lstm_only)} regularize{'s' if len(lstm_only) == 1 else ''} LSTMs only "
                        f"(written into the layerwise LSTM); drop {'it' if len(lstm_only) == 1 else 'them'} "
                        f"to train --model {values['model']}")
    elif "--weight_drop" in lstm_only and values["rnn_impl"] != "layerwise":
        problems.append("--weight_drop needs --rnn_impl layerwise (the cell graph's LSTMCell reads its "
                        "recurrent kernel itself); add --rnn_impl layerwise (same checkpoints)")
    zoned = [name for name in lstm_only if name.startswith("--zoneout")]
    if zoned and values["model"] == "lstm" and values["rnn_impl"] != "layerwise":
        problems.append(f"{' and '.join(zoned)} need{'s' if len(zoned) == 1 else ''} --rnn_impl layerwise "
                        "(zoneout's training is written into the layerwise graph only); add --rnn_impl "
                        "layerwise (same checkpoints)")
    if _has_type(values["forget_bias_init"], float) and values["forget_bias_init"] != 0 and values["model"] != "lstm":
        problems.append(f"--forget_bias_init starts LSTMs' forget gates only; drop it to train --model {values['model']}")
    if values["layer_norm"] is True and values["model"] != "lstm":
        problems.append(f"--layer_norm normalizes LSTMs only; drop it to train --model {values['model']}")
    if values["model"] != "lstm" and values["rnn_impl"] == "layerwise":
        problems.append(f"--rnn_impl layerwise computes LSTMs only; train --model {values['model']} "
                        "with --rnn_impl cell")
    return problems


def _has_type(value, kind):
    # type(), not isinstance(): True is an int to Python but never a size or a rate here.
    return type(value) is kind or (kind is float and type(value) is int)


def _within(meta, value):
    if "choices" in meta:
        return value in meta["choices"]
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return not (("min" in meta and value < meta["min"]) or ("above" in meta and value <= meta["above"])
                or ("max" in meta and value > meta["max"]) or ("below" in meta and value >= meta["below"]))


def _requirement(field):
    """What the field's values must be, as an error says it: "a positive integer", "in [0, 1)"."""
    meta = field.metadata
    if "choices" in meta:
        *others, last = meta["choices"]
        return f"{', '.join(others)} or {last}" if others else last
    low, high = meta.get("min", meta.get("above")), meta.get("max", meta.get("below"))
    if high is not None:
        low = -math.inf if low is None else low
        return f"in {'[' if 'min' in meta else '('}{low:g}, {high:g}{']' if 'max' in meta else ')'}"
    if low == 0 and "above" in meta:
        return "a positive integer" if field.type is int else "a positive number"
    if low == 0:
        return f"0 ({meta['zero']}) or positive" if "zero" in meta else "0 or more"
    if low is not None:
        return f"{'above' if 'above' in meta else 'at least'} {low:g}"
    return "a finite number"
