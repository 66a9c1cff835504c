"""Speed-only choices made by measurement on the user's machine: whether XLA compiles the step.

Both graphs compute the same thing (tests compare them); only their speed differs, and which is
faster depends on the CPU: XLA made the default graph 37-43% faster on an AMD EPYC and 13%
slower on an Intel Xeon (issue 14). With ``--xla auto`` both are timed for a few steps in
throwaway graphs (the run's own graph, seed and data position are untouched), alternated so that
a noisy neighbour slows both alike, and XLA is taken only if it is faster by a clear margin: the
simpler graph wins anything closer. Each graph's fastest round counts. The run records the
choice in config.json, so a resume builds the same graph and stays bit-exact.
"""
import dataclasses
import time

from charrnn.tfcompat import load, release_free_memory, session_config

MARGIN = 1.10  # XLA must take at most 1/1.10 of the plain graph's time per step
WARMUP_STEPS = 3  # the first includes XLA's compilation
ROUNDS, STEPS_PER_ROUND = 3, 3
# The executor threads of the graph that just ran keep spinning for a while, and on two cores
# they slowed the other graph's next steps (XLA's by up to 70%): each timed block waits this long.
SETTLE_SECONDS = 0.2


def prefer_xla(plain_seconds, xla_seconds, margin=MARGIN):
    """Whether XLA's time per step beats the plain graph's by ``margin`` (ties go to plain)."""
    return xla_seconds * margin < plain_seconds


def choose_xla(config, loader, log=None):
    """Time the training step with and without XLA on ``loader``'s batches; return (use XLA,
    a one-line account of the measurement for the log)."""
    started = time.perf_counter()
    candidates = {xla: _TimedStep(dataclasses.replace(config, xla=xla), loader) for xla in (False, True)}
    try:
        for candidate in candidates.values():
            candidate.run(WARMUP_STEPS)
        times = {xla: [] for xla in candidates}
        for _ in range(ROUNDS):
            for xla, candidate in candidates.items():
                time.sleep(SETTLE_SECONDS)
                times[xla].append(candidate.run(STEPS_PER_ROUND) / STEPS_PER_ROUND)
    finally:
        for candidate in candidates.values():
            candidate.close()
        release_free_memory()  # what the throwaway graphs and XLA's compilation used
    # The fastest round of each: interference only ever adds time, and one slow round (a
    # neighbour's burst) must not decide a run of hours.
    plain, xla = min(times[False]), min(times[True])
    use_xla = prefer_xla(plain, xla)
    account = (f"xla: auto chose {'XLA' if use_xla else 'no XLA'} ({1000 * xla:.1f} ms/step with XLA, "
               f"{1000 * plain:.1f} without; XLA needs a {MARGIN - 1:.0%} lead; measured in "
               f"{time.perf_counter() - started:.1f} s)")
    if log:
        log(account)
    return use_xla, account


class _TimedStep:
    """A throwaway training graph and session, stepping through the loader's first batches."""

    def __init__(self, config, loader):
        from charrnn.model import TrainGraph  # the model imports TensorFlow's graph code

        tf, tf1 = load()
        self.loader, self.batch = loader, 0
        graph = tf.Graph()
        with graph.as_default():
            tf1.set_random_seed(config.seed)
            self.model = TrainGraph(config)
            init = tf1.global_variables_initializer()
        graph.finalize()
        self.session = tf1.Session(graph=graph, config=session_config())
        self.session.run(init)

    def run(self, steps):
        """Seconds for ``steps`` training steps."""
        m = self.model
        started = time.perf_counter()
        for _ in range(steps):
            x, y = self.loader.batch(self.batch % self.loader.num_batches)
            self.session.run(m.train_op, {m.inputs: x, m.targets: y})
            self.batch += 1
        return time.perf_counter() - started

    def close(self):
        self.session.close()
