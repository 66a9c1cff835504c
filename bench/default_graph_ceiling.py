"""Experiment: how fast could the default graph (MultiRNNCell of LSTMCells via dynamic_rnn) get
if the kernel's per-step gradient were taken out of TensorFlow's derived backward loop?

usage: python bench/default_graph_ceiling.py [--rounds 6] [--window 5]
       [charrnn-train's config flags: --hidden_size 512 --noxla ...]

Builds three training graphs of charrnn-train's configuration (its flags and defaults; the
default graph is --rnn_impl cell, compiled whole with XLA) in one process:
- ``stock``: charrnn's default graph, unchanged;
- ``rewritten``: LSTMCell.call rewritten in plain ops with the same math (a control: the
  rewrite alone should change nothing);
- ``no_dW``: the same, with ``stop_gradient`` on the kernel, so the backward loop no longer
  computes ``[x, h]^T @ d_gates`` nor adds it to a running sum at each time step. Its gradient is
  WRONG (the kernels get none): it only bounds from above what moving dW out of the loop (one
  product after it, as ``--rnn_impl layerwise`` does) could gain, while the cell keeps
  multiplying ``[x, h]`` by the whole kernel and back at every step.
Windows of ``--window`` steps alternate between the graphs for ``--rounds`` rounds on a random
batch; prints one JSON line with each graph's median ms/step and chars/s.
"""
import dataclasses
import json
import os
import statistics
import sys
import time

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from charrnn.cli import config_from_flags, define_config_flags, run_command  # noqa: E402
from charrnn.errors import ConfigError  # noqa: E402
from charrnn.model import TrainGraph  # noqa: E402
from charrnn.tfcompat import cpu_model, load, session_config  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("rounds", 6, "Timed rounds, each running every graph for one window.")
flags.DEFINE_integer("window", 5, "Training steps per graph per round.")
define_config_flags()


def rewritten_call(stop_kernel_gradient):
    tf, tf1 = load()

    def call(self, inputs, state):  # LSTMCell without projection, clipping or peepholes
        c_prev, h_prev = state
        kernel = tf.stop_gradient(self._kernel) if stop_kernel_gradient else self._kernel
        gates = tf.matmul(tf.concat([inputs, h_prev], 1), kernel) + self._bias
        i, j, f, o = tf.split(gates, 4, axis=1)
        c = tf.sigmoid(f + self._forget_bias) * c_prev + tf.sigmoid(i) * tf.tanh(j)
        h = tf.sigmoid(o) * tf.tanh(c)
        return h, tf1.nn.rnn_cell.LSTMStateTuple(c, h)

    return call


def main():
    config, _ = config_from_flags(None)
    problems = config.problems()
    if config.rnn_impl != "cell":  # the layerwise graph never calls LSTMCell.call
        problems.append(f"--rnn_impl {config.rnn_impl}: this experiment rewrites LSTMCell, which "
                        "only --rnn_impl cell uses")
    for name in ("rounds", "window"):
        if FLAGS[name].value <= 0:
            problems.append(f"--{name} must be a positive integer (got {FLAGS[name].value})")
    if problems:
        raise ConfigError("; ".join(problems))
    # One graph is timed at a time: --xla auto (the default) means XLA here, as the README's figures.
    config = dataclasses.replace(config, vocab_size=65, xla=config.xla is not False)
    tf, tf1 = load()
    import numpy as np

    cell_class = tf1.nn.rnn_cell.LSTMCell
    stock_call = cell_class.call
    graphs = {}
    for name, call in (("stock", stock_call), ("rewritten", rewritten_call(False)),
                       ("no_dW", rewritten_call(True))):
        cell_class.call = call  # used while the graph is built, not when it runs
        graph = tf.Graph()
        with graph.as_default():
            tf1.set_random_seed(0)
            model = TrainGraph(config)
            init = tf1.global_variables_initializer()
        cell_class.call = stock_call
        session = tf1.Session(graph=graph, config=session_config())
        session.run(init)
        graphs[name] = (session, model)

    rng = np.random.RandomState(0)
    feed = rng.randint(0, 65, (config.batch_size, config.seq_length + 1))
    times = {name: [] for name in graphs}
    for round_ in range(FLAGS.rounds + 1):  # round 0 compiles and warms up
        for name, (session, model) in graphs.items():
            fd = {model.inputs: feed[:, :-1], model.targets: feed[:, 1:]}
            t0 = time.perf_counter()
            for _ in range(FLAGS.window):
                session.run(model.train_op, fd)
            if round_:
                times[name].append((time.perf_counter() - t0) / FLAGS.window)
    chars = config.batch_size * config.seq_length
    result = {"cpu": cpu_model(), "config": {k: getattr(config, k) for k in
                                             ("hidden_size", "num_layers", "batch_size", "seq_length", "xla")},
              "rounds": FLAGS.rounds}
    for name, ts in times.items():
        ms = 1000 * statistics.median(ts)
        result[name] = {"ms_per_step": round(ms, 1), "chars_per_sec": round(chars / ms * 1000)}
    result["no_dW_speedup"] = round(result["stock"]["ms_per_step"] / result["no_dW"]["ms_per_step"], 3)
    print(json.dumps(result))


if __name__ == "__main__":
    run_command(main, "bench/default_graph_ceiling.py")
