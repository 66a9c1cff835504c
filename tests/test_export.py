"""Exporting a SavedModel: plain TensorFlow in a fresh process gives charrnn-sample's text and
charrnn-eval's numbers; bad input fails the signature; charrnn-export refuses bad folders."""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from charrnn import train as trainer
from charrnn.data import EvalStream
from charrnn.errors import CheckpointError
from charrnn.evaluate import evaluate_text
from charrnn.export import MAX_NUM_CHARS, eval_layout, export
from charrnn.model import MAX_CHUNK
from charrnn.rundir import RunDir
from charrnn.sample import Sampler
from conftest import make_data_dir, run_cli, snapshot, tiny_config

TEXT = ("To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer "
        "the slings and arrows of outrageous fortune — au café. ") * 6

# Run in a fresh interpreter: plain TensorFlow, with charrnn made unimportable.
PLAIN_TF = r"""
import json, math, sys
sys.modules["charrnn"] = None  # importing charrnn now fails: the SavedModel must not need it
import tensorflow as tf

model = tf.saved_model.load(sys.argv[1])
results = {}
for name, signature, inputs in json.load(sys.stdin):
    args = {k: tf.constant(v.encode("utf-8", "surrogateescape") if dtype == "string" else v, dtype)
            for k, (dtype, v) in inputs.items()}
    try:
        out = model.signatures[signature](**args)
        results[name] = {k: v.numpy().decode("utf-8") if v.dtype == tf.string else v.numpy().item()
                         for k, v in out.items()}
    except tf.errors.InvalidArgumentError as e:
        results[name] = {"error": type(e).__name__, "message": e.message}
print(json.dumps(results))
"""


def generate(prime, n, temperature=1.0, seed=0, **filters):
    inputs = {"prime": ("string", prime), "num_chars": ("int32", n),
              "temperature": ("float32", temperature), "seed": ("int64", seed)}
    if filters:
        inputs.update(top_k=("int32", filters.get("top_k", 0)), top_p=("float32", filters.get("top_p", 1.0)))
        return ["generate_filtered", inputs]
    return ["generate", inputs]


def score(text):
    return ["score", {"text": ("string", text)}]


def assert_export_agrees(save, models_dir, text):
    """A --noxla export of ``save``, run by plain TensorFlow in a fresh process, generates the
    Sampler's greedy text and scores ``text`` as charrnn-eval does: for the cell types and
    options each test module trains (the export's own tests cover the rest)."""
    version = export(save, models_dir, xla=False)
    calls = {"greedy": generate("Now is ", 60, 0.0), "score": score(text)}
    plain = subprocess.run([sys.executable, "-c", PLAIN_TF, version], capture_output=True, text=True,
                           input=json.dumps([[name, *call] for name, call in calls.items()]), timeout=600)
    assert plain.returncode == 0, plain.stderr[-2000:]
    results = json.loads(plain.stdout.splitlines()[-1])
    sampler = Sampler(save)
    assert results["greedy"]["text"] == "".join(sampler.generate("Now is ", 60, greedy=True))
    sampler.close()
    assert results["score"]["nats_per_char"] == pytest.approx(evaluate_text(save, text)["nats_per_char"],
                                                              rel=1e-5)


LONG = MAX_CHUNK + 100  # two chunks
CALLS = {
    "seeded": generate("To be", 300, 0.8, 3),
    "long": generate("the ", LONG, 1.0, 11),
    "greedy": generate("whether ", 80, 0.0),
    "one_character_prime": generate("T", 50, 1.0, 5),
    "non_ascii_prime": generate("au café —", 60, 1.2, 2),
    "zero_characters": generate("To", 0),
    "top_k": generate("To be", 120, 1.0, 1, top_k=2),
    "top_p": generate("To be", 120, 1.0, 1, top_p=0.5),
    "filters_off": generate("To be", 300, 0.8, 3, top_k=0, top_p=1.0),
    "score_short": score("To be"),
    "score_two": score("To"),
    "score_long": score(TEXT * 2),
    "unknown_prime": generate("To Ω\x07be", 10),
    "empty_prime": generate("", 10),
    "negative_num_chars": generate("To", -1),
    "too_many_chars": generate("To", MAX_NUM_CHARS + 1),
    "negative_temperature": generate("To", 10, -0.5),
    "nan_temperature": generate("To", 10, float("nan")),
    "negative_top_k": generate("To", 10, top_k=-1),
    "zero_top_p": generate("To", 10, top_p=0.0),
    "large_top_p": generate("To", 10, top_p=1.5),
    "invalid_utf8_prime": generate("To\udcff", 10),
    "invalid_utf8_text": score("To be\udcc3"),
    "unknown_text": score("To be Ω"),
    "one_character_text": score("T"),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    data = make_data_dir(root, TEXT)
    save = str(root / "save")
    config = tiny_config(hidden_size=32, num_layers=2, num_epochs=8, val_frac=0.1, eval_every=20)
    trainer.train(trainer.prepare(config, data, save), save, str(root / "logs"))
    result = run_cli("charrnn-export", "--save_dir", save, "--out", root / "models")
    assert result.returncode == 0, result.stderr
    version = result.stdout.strip()
    assert version == str(root / "models" / "1")
    plain = subprocess.run([sys.executable, "-c", PLAIN_TF, version], input=json.dumps(list(
        [name, *call] for name, call in CALLS.items())), capture_output=True, text=True, timeout=600)
    assert plain.returncode == 0, plain.stderr
    return root, save, version, json.loads(plain.stdout.splitlines()[-1])


def sample_cli(save, prime, n, *flags):
    out = run_cli("charrnn-sample", "--save_dir", save, "--prime", prime, "--n", n, *flags)
    assert out.returncode == 0, out.stderr
    return out.stdout[:-1]  # it ends the text with a newline


def test_generate_prints_what_charrnn_sample_prints(exported):
    _, save, _, results = exported
    assert results["seeded"]["text"] == sample_cli(save, "To be", 300, "--temperature", 0.8, "--seed", 3)
    long = results["long"]["text"]
    assert len(long) == 4 + LONG
    assert long == sample_cli(save, "the ", LONG, "--seed", 11)
    assert results["greedy"]["text"] == sample_cli(save, "whether ", 80, "--temperature", 0)


def test_generate_and_generate_filtered_match_the_sampler(exported):
    _, save, _, results = exported
    sampler = Sampler(save)
    try:
        def text(prime, n, **kw):
            return "".join(sampler.generate(prime, n, **kw))

        assert results["one_character_prime"]["text"] == text("T", 50, seed=5)
        assert results["non_ascii_prime"]["text"] == text("au café —", 60, seed=2, temperature=1.2)
        assert results["zero_characters"]["text"] == "To"
        assert results["top_k"]["text"] == text("To be", 120, seed=1, top_k=2)
        assert results["top_p"]["text"] == text("To be", 120, seed=1, top_p=0.5)
        assert results["top_k"]["text"] != results["top_p"]["text"]
        assert results["filters_off"]["text"] == results["seeded"]["text"]
    finally:
        sampler.close()


def test_score_equals_charrnn_eval(exported, tmp_path):
    _, save, _, results = exported
    for name, text in (("score_short", "To be"), ("score_two", "To"), ("score_long", TEXT * 2)):
        expected = evaluate_text(save, text)
        got = results[name]
        assert got["characters"] == expected["characters"] == len(text) - 1
        assert abs(got["nats_per_char"] - expected["nats_per_char"]) < 1e-5, name
        assert abs(got["bits_per_char"] - expected["bits_per_char"]) < 1e-5, name
    # and charrnn-eval itself, on a text long enough for several windows in every row
    path = tmp_path / "long.txt"
    path.write_text(TEXT * 2, encoding="utf-8")
    out = run_cli("charrnn-eval", "--save_dir", save, "--text", path, "--json")
    assert out.returncode == 0, out.stderr
    assert abs(json.loads(out.stdout)["nats_per_char"] - results["score_long"]["nats_per_char"]) < 1e-5


@pytest.mark.parametrize("name, fragments", [
    ("unknown_prime", ["prime has characters the model never saw", "Ω (U+03A9), U+0007"]),
    ("empty_prime", ["prime is empty"]),
    ("negative_num_chars", [f"num_chars must be in [0, {MAX_NUM_CHARS}] (got -1)"]),
    ("too_many_chars", [f"(got {MAX_NUM_CHARS + 1})"]),
    ("negative_temperature", ["temperature must be 0 (greedy) or a finite positive number (got -0.5"]),
    ("nan_temperature", ["temperature must be", "(got nan)"]),
    ("negative_top_k", ["top_k must be 0 (off) or positive (got -1)"]),
    ("zero_top_p", ["top_p must be in (0, 1]"]),
    ("large_top_p", ["top_p must be in (0, 1]", "(got 1.5"]),
    ("invalid_utf8_prime", ["prime is not valid UTF-8"]),
    ("invalid_utf8_text", ["text is not valid UTF-8"]),
    ("unknown_text", ["text has characters the model never saw: Ω (U+03A9)"]),
    ("one_character_text", ["text has 1 character(s); scoring needs at least 2"]),
])
def test_bad_input_fails_the_signature_naming_the_problem(exported, name, fragments):
    result = exported[3][name]
    assert result.get("error") == "InvalidArgumentError", result
    for fragment in fragments:
        assert fragment in result["message"], result["message"]


def test_saved_model_cli_lists_the_signatures_and_assets_describe_the_model(exported):
    _, save, version, _ = exported
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    shown = subprocess.run([cli, "show", "--dir", version, "--all"], capture_output=True, text=True,
                           timeout=300)
    assert shown.returncode == 0, shown.stderr
    signatures = shown.stdout.split("signature_def[")
    inputs = {block.split("'")[1]: set(part.split("'")[0] for part in block.split("inputs['")[1:])
              for block in signatures[1:]}
    assert inputs["generate"] == {"prime", "num_chars", "temperature", "seed"}
    assert inputs["generate_filtered"] == {"prime", "num_chars", "temperature", "seed", "top_k", "top_p"}
    assert inputs["score"] == {"text"}
    for output in ("outputs['text']", "outputs['nats_per_char']", "outputs['bits_per_char']",
                   "outputs['characters']"):
        assert output in shown.stdout
    assets = RunDir(os.path.join(version, "assets"))
    trained = RunDir(save).open_model()
    assert assets.read_config() == trained.config
    assert assets.read_vocab().to_json() == trained.vocab.to_json()


@pytest.mark.parametrize("length", [2, 3, 4, 5, 6, 17, 199, 801, 1000])
@pytest.mark.parametrize("batch_size, seq_length", [(1, 200), (4, 7), (50, 200)])
def test_eval_layout_is_eval_streams(length, batch_size, seq_length):
    from charrnn.tfcompat import load

    tf, tf1 = load()
    ids = np.random.RandomState(length).randint(0, 9, length).astype(np.int32)
    stream = EvalStream(ids, batch_size, seq_length)
    with tf.Graph().as_default():
        layout = eval_layout(tf.constant(ids), batch_size, seq_length)
        with tf1.Session() as session:
            x, y, w = session.run(layout)
    windows = [stream.batch(k) for k in range(stream.num_batches)]  # EvalStream cuts them on demand
    expected_layout = [np.concatenate([window[i] for window in windows], axis=1) for i in range(3)]
    for got, expected in zip((x, y, w), expected_layout):
        assert got.shape == expected.shape and np.array_equal(got, expected)


def _compiled_nodes(version):
    """How many nodes of the SavedModel's graph (functions included) XLA is to compile."""
    from tensorflow.core.protobuf import saved_model_pb2

    model = saved_model_pb2.SavedModel()
    with open(os.path.join(version, "saved_model.pb"), "rb") as f:
        model.ParseFromString(f.read())
    graph = model.meta_graphs[0].graph_def
    nodes = list(graph.node) + [n for function in graph.library.function for n in function.node_def]
    return sum("_xla_compile_id" in n.attr for n in nodes)


def test_noxla_export_gives_the_same_text_without_compiling(exported, tmp_path):
    root, save, version, results = exported
    plain = export(save, str(tmp_path / "noxla"), xla=False)
    assert _compiled_nodes(version) > 0 and _compiled_nodes(plain) == 0
    calls = [["seeded", *CALLS["seeded"]], ["top_k", *CALLS["top_k"]], ["score_long", *CALLS["score_long"]]]
    out = subprocess.run([sys.executable, "-c", PLAIN_TF, plain], input=json.dumps(calls),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.splitlines()[-1])
    assert got["seeded"] == results["seeded"] and got["top_k"] == results["top_k"]
    assert abs(got["score_long"]["nats_per_char"] - results["score_long"]["nats_per_char"]) < 1e-6


def test_export_again_writes_the_next_version(exported):
    root, save, version, _ = exported
    before = snapshot(version)
    assert export(save, str(root / "models"), which="latest") == str(root / "models" / "2")
    assert snapshot(version) == before
    assert sorted(os.listdir(root / "models")) == ["1", "2"]  # no staging folder left


def test_a_failed_write_leaves_nothing(exported, tmp_path, monkeypatch):
    import errno

    from charrnn.tfcompat import load

    _, save, _, _ = exported
    _, tf1 = load()

    def full_disk(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(tf1.saved_model.Builder, "save", full_disk)
    with pytest.raises(CheckpointError, match=r"could not write the SavedModel \(No space left on device\)"):
        export(save, str(tmp_path / "new"))
    assert not os.path.exists(tmp_path / "new")
    (tmp_path / "old" / "1").mkdir(parents=True)
    with pytest.raises(CheckpointError):
        export(save, str(tmp_path / "old"))
    assert os.listdir(tmp_path / "old") == ["1"]


def _one_error_line(result, *fragments):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("charrnn-export: error: ")]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], result.stderr


def test_export_refuses_an_out_that_is_a_file_or_not_writable(exported, tmp_path):
    _, save, _, _ = exported
    a_file = tmp_path / "models"
    a_file.write_text("not a folder")
    _one_error_line(run_cli("charrnn-export", "--save_dir", save, "--out", a_file), "is a file")
    assert a_file.read_text() == "not a folder"
    if os.geteuid() == 0:  # root writes through permissions; sysfs refuses even root a folder
        try:
            os.rmdir(tempfile.mkdtemp(dir="/sys"))
            pytest.skip("no folder here refuses root a write")
        except OSError:
            locked = "/sys"
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
    _one_error_line(run_cli("charrnn-export", "--save_dir", save, "--out", locked), "not writable")
    _one_error_line(run_cli("charrnn-export", "--save_dir", save), "--out is required")


def test_export_without_a_model_writes_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    _one_error_line(run_cli("charrnn-export", "--save_dir", tmp_path / "empty", "--out", tmp_path / "models"),
                    "holds no checkpoint")
    assert not os.path.exists(tmp_path / "models")


def test_a_zoneout_model_exports_the_samplers_text_and_charrnn_evals_score(tmp_path):
    """--zoneout_c/--zoneout_h: the SavedModel computes zoneout's expectation as the sampler and
    evaluation do (the same functions build it), in plain TensorFlow."""
    data = make_data_dir(tmp_path, TEXT)
    save = str(tmp_path / "save")
    config = tiny_config(num_layers=2, num_epochs=2, rnn_impl="layerwise", zoneout_c=0.5, zoneout_h=0.1)
    trainer.train(trainer.prepare(config, data, save), save, str(tmp_path / "logs"))
    version = export(save, str(tmp_path / "models"), xla=False)
    calls = {"greedy": generate("To be", 60, 0.0), "seeded": generate("To be", 60, seed=3),
             "score": score(TEXT[:200])}
    plain = subprocess.run([sys.executable, "-c", PLAIN_TF, version], capture_output=True, text=True,
                           input=json.dumps([[name, *call] for name, call in calls.items()]), timeout=600)
    assert plain.returncode == 0, plain.stderr[-2000:]
    results = json.loads(plain.stdout.splitlines()[-1])
    sampler = Sampler(save)
    try:
        assert results["greedy"]["text"] == "".join(sampler.generate("To be", 60, greedy=True))
        assert results["seeded"]["text"] == "".join(sampler.generate("To be", 60, seed=3))
    finally:
        sampler.close()
    expected = evaluate_text(save, TEXT[:200])["nats_per_char"]
    assert abs(results["score"]["nats_per_char"] - expected) < 1e-5
