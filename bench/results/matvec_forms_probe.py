"""Probe (issue 14, sampling): the batch-1 step of a 2x256 LSTM as an XLA loop, with its two
matrix-vector products written three ways: one dot (what charrnn-sample does), multiply + reduce
(so XLA might partition it over both cores as a loop fusion), and two dots over halves of the
output columns. Run: python bench/results/matvec_forms_probe.py. Output of one run (AMD EPYC,
shared load: two training jobs on the 2 cores, so absolute figures are inflated):
  dot 81.5 us/char, reduce 598 us/char, split2 4725 us/char (medians of 5); all three agree to 1e-6.
Neither alternative splits the work usefully here: the dot stays.
"""
import time, os, sys
import numpy as np
import tensorflow as tf
H = 256
rng = np.random.RandomState(0)
W0 = tf.constant(rng.randn(H, 4*H).astype(np.float32) * 0.05)
W1 = tf.constant(rng.randn(2*H, 4*H).astype(np.float32) * 0.05)
N = 2000

def cell(g, c):
    i, j, f, o = tf.split(g, 4, axis=1)
    c = tf.sigmoid(f + 1) * c + tf.sigmoid(i) * tf.tanh(j)
    return c, tf.sigmoid(o) * tf.tanh(c)

def make(kind):
    def mm(x, w):
        if kind == "dot":
            return tf.matmul(x, w)
        if kind == "reduce":
            return tf.reduce_sum(tf.transpose(x) * w, axis=0, keepdims=True)
        if kind == "split2":  # two dots over halves of the output columns
            a, b = tf.split(w, 2, axis=1)
            return tf.concat([tf.matmul(x, a), tf.matmul(x, b)], 1)
    @tf.function(jit_compile=True)
    def loop(h0):
        def body(t, c0, h0, c1, h1, acc):
            c0, h0 = cell(mm(h0, W0), c0)
            c1, h1 = cell(mm(tf.concat([h0, h1], 1), W1), c1)
            return t + 1, c0, h0, c1, h1, acc + tf.reduce_sum(h1)
        z = tf.zeros([1, H])
        return tf.while_loop(lambda t, *_: t < N, body, [0, z, h0, z, z, 0.0])[-1]
    return loop

kinds = sys.argv[1:] or ["dot", "reduce", "split2"]
loops = {k: make(k) for k in kinds}
h0 = tf.ones([1, H]) * 0.1
ref = None
for k, f in loops.items():
    v = float(f(h0))
    print(k, "value", v)
res = {k: [] for k in kinds}
for r in range(5):
    for k, f in loops.items():
        t = time.perf_counter(); f(h0).numpy(); res[k].append((time.perf_counter() - t) / N * 1e6)
for k in kinds:
    print(k, "us/char median", round(float(np.median(res[k])), 2), [round(x, 1) for x in res[k]])
