"""Config: flags generated from its fields, and the one checker for flags, presets and config.json."""
import dataclasses
import json
import math
import os

import pytest
from absl import flags

from charrnn.cli import config_argv, config_from_flags, define_config_flags
from charrnn.config import FIXED_FIELDS, Config, flag_fields
from charrnn.errors import ConfigError
from charrnn.presets import PRESETS
from charrnn.rundir import RunDir

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "release-0.1.0", "savedir")
FLAG_NAMES = [f.name for f in flag_fields()]
FLOAT_FLAGS = [f.name for f in flag_fields() if f.type is float]


def parsed(*argv):
    """A fresh FlagValues holding the generated config flags, parsed from ``argv``."""
    flag_values = flags.FlagValues()
    define_config_flags(flag_values)
    flag_values(["prog", *argv])
    return flag_values


def refusal(make):
    """The one-line message of the ConfigError that ``make()`` raises."""
    with pytest.raises(ConfigError) as caught:
        make()
    message = str(caught.value)
    assert "\n" not in message
    return message


def saved_dict(**changes):
    """The fields of a saved run (vocabulary and fingerprint set), with ``changes``."""
    return {**dataclasses.asdict(Config(vocab_size=60, data_sha256="ab" * 32, xla=True)), **changes}


def test_every_flag_field_has_help_and_only_data_fields_are_not_flags():
    assert {f.name for f in dataclasses.fields(Config)} - set(FLAG_NAMES) == {"vocab_size", "data_sha256", "init_from",
                                                                             "added_chars"}
    for field in flag_fields():
        assert field.metadata["help"].strip(), field.name


def test_flags_are_generated_for_exactly_the_flag_fields_with_their_defaults():
    flag_values = parsed()
    assert sorted(flag_values) == sorted(FLAG_NAMES)
    for field in flag_fields():
        flag = flag_values[field.name]
        assert flag.default == field.default, field.name
        assert type(flag.value) is field.type or (flag.value is None and "auto" in field.metadata), field.name
        assert flag.help.endswith(field.metadata["help"])  # an enum's starts with its choices
    assert flag_values["rnn_impl"].parser.enum_values == ["cell", "layerwise"]
    assert flag_values["xla"].boolean
    assert [parsed(arg)["xla"].value for arg in ("--xla", "--noxla", "--xla=auto", "--xla=false")] == [
        True, False, None, False]
    config, explicit = config_from_flags(None, flag_values)
    assert config == Config() and explicit == []


@pytest.mark.parametrize("changes, message", [
    (dict(learning_rate=0.0), "--learning_rate must be a positive number (got 0.0)"),
    (dict(dropout=1.5), "--dropout must be in [0, 1) (got 1.5)"),
    (dict(val_frac=1.0), "--val_frac must be in [0, 1) (got 1.0)"),
    (dict(decay_rate=0.0), "--decay_rate must be in (0, 1] (got 0.0)"),
    (dict(patience=-1), "--patience must be 0 (off) or positive (got -1)"),
    (dict(hidden_size=0), "--hidden_size must be a positive integer (got 0)"),
    (dict(rnn_impl="fast"), "--rnn_impl must be cell or layerwise (got 'fast')"),
    (dict(vocab_size=1), "vocab_size must be at least 2 (got 1)"),
    (dict(hidden_size=True), "field hidden_size should be int, got True"),
    (dict(dropout="0.1"), "field dropout should be float, got '0.1'"),
    (dict(dropout=False), "field dropout should be float, got False"),
    (dict(num_layers=0, grad_clip=-1.0),
     "--num_layers must be a positive integer (got 0); --grad_clip must be a positive number (got -1.0)"),
])
def test_checker_refuses_with_one_line(changes, message):
    assert refusal(Config(**changes).validate) == message


@pytest.mark.parametrize("name", FLOAT_FLAGS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_checker_refuses_nan_and_infinities_in_every_float_field(name, value):
    message = refusal(Config(**{name: value}).validate)
    assert message.startswith(f"--{name} must be ") and message.endswith(f"(got {value})")


def test_checker_takes_an_int_for_a_float_and_a_config_not_yet_given_its_data():
    Config(learning_rate=1, dropout=0).validate()
    Config().validate()  # vocab_size 0 and no fingerprint: the text is read later


def test_from_dict_checks_fields_and_makes_floats():
    config = Config.from_dict(saved_dict(learning_rate=1, val_frac=0), "x.json")
    assert type(config.learning_rate) is float and type(config.val_frac) is float
    assert refusal(lambda: Config.from_dict(saved_dict(bogus=1), "x.json")) == (
        "x.json: unknown fields ['bogus'], missing fields []; it was not written by this charrnn version")
    without_shape = {k: v for k, v in saved_dict().items() if k != "hidden_size"}
    assert "missing fields ['hidden_size']" in refusal(lambda: Config.from_dict(without_shape, "x.json"))
    # A field newer than the file takes its default; the shape and the data never do.
    assert Config.from_dict({k: saved_dict()[k] for k in FIXED_FIELDS}, "x.json").patience == 0
    # A saved run holds a decision, never "auto": one without the field compiled with XLA, as 0.1.0.
    assert Config.from_dict({k: saved_dict()[k] for k in FIXED_FIELDS}, "x.json").xla is True
    assert "field xla should be bool, got None" in refusal(lambda: Config.from_dict(saved_dict(xla=None), "x.json"))
    assert refusal(lambda: Config.from_dict(saved_dict(vocab_size=0), "x.json")) == (
        "x.json: vocab_size must be at least 2 (got 0)")
    assert refusal(lambda: Config.from_dict(saved_dict(**json.loads('{"dropout": NaN, "seed": 1.0}')),
                                            "x.json")) == (
        "x.json: --dropout must be in [0, 1) (got nan); field seed should be int, got 1.0")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_passes_the_checker(name):
    assert set(PRESETS[name]) <= set(FLAG_NAMES)
    config, explicit = config_from_flags(name, parsed())
    config.validate()
    assert explicit == []  # only flags change a resumed run; the preset sets up new ones


def test_an_explicit_flag_beats_the_preset_which_beats_the_defaults():
    config, explicit = config_from_flags("cpu30", parsed("--dropout=0.1", "--seed=3"))
    assert config.dropout == 0.1 and config.seed == 3  # explicit
    assert config.hidden_size == PRESETS["cpu30"]["hidden_size"] != Config().hidden_size  # preset
    assert config.grad_clip == Config().grad_clip  # default
    assert sorted(explicit) == ["dropout", "seed"]
    assert refusal(config_from_flags(None, parsed("--dropout=nan"))[0].validate) == (
        "--dropout must be in [0, 1) (got nan)")


def test_config_argv_gives_back_the_same_config():
    config = Config(hidden_size=32, dropout=0.25, learning_rate=1e-05, rnn_impl="layerwise", xla=False)
    assert config_from_flags(None, parsed(*config_argv(config)))[0] == config


def test_the_0_1_0_fixture_config_loads_to_the_same_values():
    with open(os.path.join(FIXTURE, "config.json"), encoding="utf-8") as f:
        raw = json.load(f)["config"]
    config = RunDir(FIXTURE).read_config()
    values = dataclasses.asdict(config)
    assert {k: v for k, v in values.items() if k in raw} == raw
    # Fields added after 0.1.0 take their defaults, which change nothing about the run.
    added = {k: v for k, v in values.items() if k not in raw}
    assert added == {"bad_text": "refuse", "min_char_count": 0, "max_val_chars": 0, "init_from": "",
                     "added_chars": "",
                     # the per-epoch decay of 0.1.0; the others only matter to cosine and linear
                     "decay_schedule": "epoch", "decay_steps": 0, "warmup_steps": 100, "final_lr_frac": 0.0,
                     "model": "lstm", "variational_dropout": False, "input_dropout": True, "weight_decay": 0.0,
                     "weight_drop": 0.0, "zoneout_c": 0.0, "zoneout_h": 0.0, "layer_norm": False,
                     "forget_bias_init": 0.0,  # only a fresh run's starting weights
                     "sync_replicas": True}  # only a cluster reads it
    assert all(type(getattr(config, f.name)) is f.type for f in dataclasses.fields(Config))
