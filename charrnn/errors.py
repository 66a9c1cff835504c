"""Project exceptions: raised where a problem is found, turned into one line at the CLI."""


class CharRNNError(Exception):
    """A problem the user can fix; the message says what and how."""


class DataError(CharRNNError):
    """The training or evaluation text cannot be used."""


class ConfigError(CharRNNError):
    """Flags or a saved run config are invalid or incompatible."""


class CheckpointError(CharRNNError):
    """A save directory holds no usable checkpoint, or cannot be written."""


class TrainingError(CharRNNError):
    """Training cannot go on (e.g. the loss stopped being finite)."""
