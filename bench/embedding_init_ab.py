"""Experiment: the embedding's initializer, glorot-uniform (charrnn today) vs N(0, 1) (PyTorch's).

usage: python bench/embedding_init_ab.py DATA glorot|normal MINUTES
Trains the default configuration (2x256, batch 50, seq 50) with the 90/10 split for MINUTES and
prints one JSON line with the validation curve. "normal" swaps in N(0, 1) for the embedding only,
by wrapping tf.compat.v1.get_variable; nothing in charrnn changes.
"""
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from charrnn.tfcompat import cpu_model, load  # noqa: E402

tf, tf1 = load()
data, mode, minutes = sys.argv[1], sys.argv[2], float(sys.argv[3])
if mode == "normal":
    real_get_variable = tf1.get_variable

    def get_variable(name, *args, **kwargs):
        if name == "embedding":
            kwargs["initializer"] = tf1.random_normal_initializer(stddev=1.0)
        return real_get_variable(name, *args, **kwargs)

    tf1.get_variable = get_variable

from charrnn import train as trainer  # noqa: E402
from charrnn.config import Config  # noqa: E402

work = tempfile.mkdtemp(prefix="charrnn-init-")
try:
    os.makedirs(os.path.join(work, "data"))
    shutil.copy(data, os.path.join(work, "data", "input.txt"))
    run = trainer.prepare(Config(eval_every=200, num_epochs=50), os.path.join(work, "data"),
                          os.path.join(work, "save"), fresh=True, cache_dir=os.path.join(work, "cache"))
    result = trainer.train(run, os.path.join(work, "save"), os.path.join(work, "logs"), max_minutes=minutes)
    print(json.dumps({"cpu": cpu_model(), "embedding_init": mode, "steps": result.step,
                      "curve": result.history}))
finally:
    shutil.rmtree(work, ignore_errors=True)
