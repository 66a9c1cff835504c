"""Named configurations users can pick with --preset; explicit flags still override them."""

PRESETS = {
    # Best validation loss on a ~1 MB text (tiny-shakespeare) in 30 minutes on a 2-core CPU: 2x512,
    # batches of 25 rows (a step costs half as much, so twice the updates on the same characters),
    # a cosine schedule that ends with the time (PRESET_MINUTES) and decoupled weight decay 0.3,
    # chosen on a development split (README, Quality: 1.3859 and 1.3867 nats/char with two seeds,
    # against 1.4038 and 1.3981 for the batch-50 cpu30 and 1.4356 for 0.1.0's).
    "cpu30": dict(hidden_size=512, num_layers=2, batch_size=25, seq_length=50, dropout=0.3,
                  num_epochs=50, learning_rate=2e-3, decay_rate=0.95, rnn_impl="layerwise", xla=True,
                  eval_every=500, decay_schedule="cosine", weight_decay=0.3),
}

# The wall-clock budget a preset is made for: charrnn-train's --max_minutes when the flag is not
# given. A new run turns it into its schedule's step total once, at the start (saved as
# decay_steps); every invocation, a resume included, stops after that much wall time.
PRESET_MINUTES = {"cpu30": 30.0}
