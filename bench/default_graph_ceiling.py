"""Experiment: how fast could the default graph (MultiRNNCell of LSTMCells via dynamic_rnn) get
if the kernel's per-step gradient were taken out of TensorFlow's derived backward loop?

usage: python bench/default_graph_ceiling.py [--hidden_size 256] [--rounds 6] [--window 5]

Builds three training graphs in one process, all compiled whole with XLA:
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
import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from charrnn.config import Config  # noqa: E402
from charrnn.model import TRAIN, CharRNN  # noqa: E402
from charrnn.tfcompat import load, session_config  # noqa: E402


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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden_size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--window", type=int, default=5)
    args = parser.parse_args()
    tf, tf1 = load()
    import numpy as np

    config = Config(hidden_size=args.hidden_size, vocab_size=65, rnn_impl="cell", xla=True)
    cell_class = tf1.nn.rnn_cell.LSTMCell
    stock_call = cell_class.call
    graphs = {}
    for name, call in (("stock", stock_call), ("rewritten", rewritten_call(False)),
                       ("no_dW", rewritten_call(True))):
        cell_class.call = call  # used while the graph is built, not when it runs
        graph = tf.Graph()
        with graph.as_default():
            tf1.set_random_seed(0)
            model = CharRNN(config, TRAIN)
            init = tf1.global_variables_initializer()
        cell_class.call = stock_call
        session = tf1.Session(graph=graph, config=session_config())
        session.run(init)
        graphs[name] = (session, model)

    rng = np.random.RandomState(0)
    feed = rng.randint(0, 65, (config.batch_size, config.seq_length + 1))
    times = {name: [] for name in graphs}
    for round_ in range(args.rounds + 1):  # round 0 compiles and warms up
        for name, (session, model) in graphs.items():
            fd = {model.inputs: feed[:, :-1], model.targets: feed[:, 1:]}
            t0 = time.perf_counter()
            for _ in range(args.window):
                session.run(model.train_op, fd)
            if round_:
                times[name].append((time.perf_counter() - t0) / args.window)
    chars = config.batch_size * config.seq_length
    result = {"hidden_size": args.hidden_size, "rounds": args.rounds}
    for name, ts in times.items():
        ms = 1000 * statistics.median(ts)
        result[name] = {"ms_per_step": round(ms, 1), "chars_per_sec": round(chars / ms * 1000)}
    result["no_dW_speedup"] = round(result["stock"]["ms_per_step"] / result["no_dW"]["ms_per_step"], 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
