"""charrnn: a character-level stacked-LSTM language-model trainer (TF1 graph mode)."""

__version__ = "0.1.0"
