"""Named configurations users can pick with --preset; explicit flags still override them."""

PRESETS = {
    # Best validation loss on a ~1 MB text (tiny-shakespeare) in 30 minutes on a 2-core CPU.
    "cpu30": dict(hidden_size=384, num_layers=2, batch_size=50, seq_length=50, dropout=0.3,
                  num_epochs=50, learning_rate=2e-3, decay_rate=0.95, rnn_impl="layerwise", xla=True,
                  eval_every=500),
}
