"""Generation speed through an exported SavedModel against charrnn-sample; prints one JSON object.

usage: python bench/export_speed.py --save_dir SAVE [--n 20000] [--runs 5]

Each figure is chars/s of --n generated characters (median of --runs, seeds 0, 1, ..., after a
warm-up call that compiles), each in a fresh process:
- sample: charrnn-sample's Sampler, set up as charrnn-sample sets itself up (its XLA flags);
- saved_model_load: ``tf.saved_model.load(DIR).signatures["generate"]`` in plain TensorFlow
  (charrnn not importable), XLA's default flags; ``..._with_sampling_xla_flags``: with
  charrnn-sample's XLA_FLAGS;
- saved_model_session: a TF1 session over the SavedModel's MetaGraph, as TF Serving runs it;
- saved_model_noxla_*: the same two on a ``charrnn-export --noxla`` export (the generation loop
  left to TensorFlow's executor).
Each SavedModel figure says whether its texts were charrnn-sample's, and the seconds from loading
to the end of the first call (which compiles).
"""
import json
import os
import subprocess
import sys
import tempfile

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from charrnn.cli import run_command  # noqa: E402
from charrnn.tfcompat import SAMPLING_XLA_FLAGS  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("save_dir", "save", "Folder of a trained model.")
flags.DEFINE_integer("n", 20000, "Characters generated per timed call.")
flags.DEFINE_integer("runs", 5, "Timed calls (seeds 0, 1, ...) after one warm-up call.")
flags.DEFINE_string("prime", "The ", "Prime of every call.")

PLAIN_TF = r"""
import json, statistics, sys, time
sys.modules["charrnn"] = None
import tensorflow as tf
directory, mode, prime, n, runs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
t0 = time.perf_counter()
if mode == "load":  # TF2: a concrete function per signature
    generate = tf.saved_model.load(directory).signatures["generate"]
    def call(seed):
        return generate(prime=tf.constant(prime), num_chars=tf.constant(n), temperature=tf.constant(1.0),
                        seed=tf.constant(seed, tf.int64))["text"].numpy().decode("utf-8")
else:  # a TF1 session over the MetaGraph, as TF Serving runs a SavedModel
    tf1 = tf.compat.v1
    tf1.disable_eager_execution()
    session = tf1.Session(graph=tf.Graph())
    signature = tf1.saved_model.loader.load(session, ["serve"], directory).signature_def["generate"]
    names = {k: v.name for k, v in signature.inputs.items()}
    def call(seed):
        feed = {names["prime"]: prime, names["num_chars"]: n, names["temperature"]: 1.0, names["seed"]: seed}
        return session.run(signature.outputs["text"].name, feed).decode("utf-8")
call(0)
first = time.perf_counter() - t0
speeds, texts = [], []
for seed in range(runs):
    t = time.perf_counter()
    texts.append(call(seed))
    speeds.append(n / (time.perf_counter() - t))
print(json.dumps({"chars_per_sec": round(statistics.median(speeds)), "runs": [round(s) for s in speeds],
                  "load_and_first_call_sec": round(first, 2), "texts": texts}))
"""

SAMPLER = r"""
import json, statistics, sys, time
from charrnn.sample import Sampler
from charrnn.tfcompat import use_sampling_xla_flags
save_dir, prime, n, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
use_sampling_xla_flags()
sampler = Sampler(save_dir)
"".join(sampler.generate(prime, n))
speeds, texts = [], []
for seed in range(runs):
    t = time.perf_counter()
    texts.append("".join(sampler.generate(prime, n, seed=seed)))
    speeds.append(n / (time.perf_counter() - t))
print(json.dumps({"chars_per_sec": round(statistics.median(speeds)), "runs": [round(s) for s in speeds],
                  "texts": texts}))
"""


def _run(script, *args, env=None):
    out = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                         env=env)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.splitlines()[-1])


def main():
    from charrnn.export import export

    common = [FLAGS.prime, FLAGS.n, FLAGS.runs]
    with tempfile.TemporaryDirectory() as tmp:
        compiled = export(FLAGS.save_dir, os.path.join(tmp, "xla"))
        plain = export(FLAGS.save_dir, os.path.join(tmp, "noxla"), xla=False)
        sample = _run(SAMPLER, FLAGS.save_dir, *common)
        flags_env = dict(os.environ, XLA_FLAGS=" ".join(SAMPLING_XLA_FLAGS))
        result = {"n": FLAGS.n, "runs": FLAGS.runs, "sample": sample,
                  "saved_model_load": _run(PLAIN_TF, compiled, "load", *common),
                  "saved_model_session": _run(PLAIN_TF, compiled, "session", *common),
                  "saved_model_load_with_sampling_xla_flags": _run(PLAIN_TF, compiled, "load", *common,
                                                                   env=flags_env),
                  "saved_model_noxla_load": _run(PLAIN_TF, plain, "load", *common),
                  "saved_model_noxla_session": _run(PLAIN_TF, plain, "session", *common)}
    for name, value in result.items():
        if name.startswith("saved_model"):
            value["same_text_as_sample"] = value["texts"] == sample["texts"]
    for value in result.values():
        if isinstance(value, dict):
            del value["texts"]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    run_command(main, "export_speed")
