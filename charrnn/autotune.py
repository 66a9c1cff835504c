"""Speed-only choices made by measurement on the user's machine: whether XLA compiles the step.

Both graphs compute the same thing (tests compare them); only their speed differs, and which is
faster depends on the CPU: XLA made the default graph 37-43% faster on an AMD EPYC and 13%
slower on an Intel Xeon (issue 14). With ``--xla auto`` both are timed for a few steps in
throwaway graphs (the run's own graph, seed and data position are untouched), alternated so that
a noisy neighbour slows both alike, and XLA is taken only if it is faster by a clear margin: the
simpler graph wins anything closer. Each graph's fastest round counts. The run records the
choice in config.json, so a resume builds the same graph and stays bit-exact.

A wall-clock budget becomes a step total the same way (:func:`steps_in_minutes`): once, before
the run, so the learning-rate schedule can end where the time does and resume stays exact.
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


def steps_in_minutes(config, loader, val, minutes, log=None):
    """How many training steps of ``config`` fit in ``minutes`` of wall time, evaluations of
    ``val`` (an EvalStream, or None) included: every eval_every steps, and at epoch ends with
    the per-epoch schedule.

    Times, in throwaway graphs, the first steps (XLA's compilation), the mean of the next
    ROUNDS x STEPS_PER_ROUND steps (the mean, not the fastest: the budget must hold under the
    load there is) and one evaluation pass. Returns (steps, seconds this measurement took).
    """
    from charrnn.evaluate import evaluate_stream
    from charrnn.model import EvalGraph

    tf, tf1 = load()
    started = time.perf_counter()
    timed = _TimedStep(config, loader)
    try:
        first_steps = timed.run(WARMUP_STEPS)
        per_step = timed.run(ROUNDS * STEPS_PER_ROUND) / (ROUNDS * STEPS_PER_ROUND)
    finally:
        timed.close()
    per_eval = 0.0
    if val is not None:
        graph = tf.Graph()
        with graph.as_default():
            model = EvalGraph(config, batch_size=val.batch_size)
            init = [tf1.global_variables_initializer(), tf1.local_variables_initializer()]
        with tf1.Session(graph=graph, config=session_config()) as session:
            session.run(init)
            per_eval = second_run_seconds(lambda: evaluate_stream(session, model, val))
    release_free_memory()
    seconds = time.perf_counter() - started
    # The measurement is part of the budget.
    steps = steps_that_fit(config, loader.num_batches, 60 * minutes - seconds - first_steps, per_step,
                           per_eval if val is not None else None)
    if log:
        log(f"budget: {minutes:g} min = {steps:,} steps ({1000 * per_step:.1f} ms/step, "
            f"{per_eval:.1f} s per evaluation, first steps {first_steps:.1f} s; measured in {seconds:.1f} s)")
    return steps, seconds


def budget_steps(config, loader, val, minutes, log=None):
    """:func:`steps_in_minutes` for the graph the run will take: ``--xla auto`` (config.xla None)
    is decided first, since the step total depends on it. Returns (config with xla resolved,
    steps, seconds the measurement took)."""
    if config.xla is None:
        config = dataclasses.replace(config, xla=choose_xla(config, loader, log)[0])
    steps, seconds = steps_in_minutes(config, loader, val, minutes, log=log)
    return config, steps, seconds


def second_run_seconds(run):
    """Seconds the second of two calls of ``run`` takes: the first builds the kernels."""
    run()
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def steps_that_fit(config, steps_per_epoch, seconds, per_step, per_eval=None):
    """How many training steps of ``per_step`` seconds fit in ``seconds``, with an evaluation of
    ``per_eval`` seconds (None: no validation) every eval_every steps, at each epoch end of
    ``steps_per_epoch`` steps with the per-epoch schedule, and one at the end; at least 1."""
    evals_per_step = 0.0
    if per_eval is not None:
        seconds -= per_eval  # the last step's validation
        evals_per_step = 1 / config.eval_every + (1 / steps_per_epoch if config.validates_at_epoch_ends else 0)
    return max(1, int(seconds / (per_step + (per_eval or 0.0) * evals_per_step)))


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
