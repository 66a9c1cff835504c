"""Ctrl-C and SIGTERM as a flag a loop checks, for the training loop and the cluster launcher."""
import signal


class StopSignal:
    """Turns SIGINT/SIGTERM into ``signum``, which the loop checks between its steps, so it can
    save (or tell its tasks) and exit. With ``second_forces``, a second signal while the loop
    winds down gets the default behaviour back (a second Ctrl-C while saving ends the process)."""

    def __init__(self, second_forces=True):
        self.signum = None
        self.second_forces = second_forces

    def __enter__(self):
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum, frame):
        if self.second_forces and self.signum is not None:
            signal.signal(signum, self._previous[signum])
        self.signum = signum

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
