"""Sampling from a trained save directory: determinism, prime handling, the in-graph loop."""
import os

import numpy as np
import pytest

from charrnn import train as trainer
from charrnn.errors import CheckpointError, ConfigError
from charrnn.sample import Sampler
from conftest import make_data_dir, tiny_config

TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer. " * 6


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    data = make_data_dir(root, TEXT)
    save = str(root / "save")
    config = tiny_config(hidden_size=32, num_layers=2, num_epochs=8, val_frac=0.1, eval_every=20)
    trainer.train(trainer.prepare(config, data, save), save, str(root / "logs"))
    sampler = Sampler(save)
    yield save, sampler
    sampler.close()


def text(sampler, prime, n, **kw):
    return "".join(sampler.generate(prime, n, **kw))


def assert_sampler_follows_evaluation(save):
    """The in-graph sampler's written-out math against the evaluation graph's: each greedy
    character is the argmax of the evaluation graph's logits after the text before it, and
    chunks change neither greedy nor seeded text (for the cell types and options other test
    modules train)."""
    from charrnn.model import EvalGraph
    from charrnn.rundir import RunDir

    sampler = Sampler(save)
    prime = "Now is "
    greedy = text(sampler, prime, 40, greedy=True)
    assert text(sampler, prime, 40, greedy=True, chunk_size=7) == greedy
    seeded = text(sampler, prime, 40, seed=4)
    assert text(sampler, prime, 40, seed=4, chunk_size=9) == seeded
    assert text(sampler, prime, 40, seed=4) == seeded
    sampler.close()
    model = RunDir(save).open_model("auto")
    ids = list(model.vocab.encode(greedy))
    session, graph = model.restore(lambda c: EvalGraph(c, batch_size=1, seq_length=len(ids) - 1))
    logits = session.run(graph.logits, {graph.inputs: [ids[:-1]], graph.targets: [ids[1:]]})[0]
    session.close()
    assert list(np.argmax(logits, -1)[len(prime) - 1:]) == ids[len(prime):]


def test_same_seed_same_text_and_prime_plus_n_characters(trained):
    _, sampler = trained
    a = text(sampler, "To be", 120, seed=3)
    assert a == text(sampler, "To be", 120, seed=3)
    assert a != text(sampler, "To be", 120, seed=4)
    assert a.startswith("To be") and len(a) == 5 + 120


def test_chunked_generation_equals_one_run(trained):
    _, sampler = trained
    whole = text(sampler, "the ", 90, seed=7, chunk_size=1000)
    for chunk in (1, 7, 45):
        assert text(sampler, "the ", 90, seed=7, chunk_size=chunk) == whole


def numpy_lstm(sampler):
    """An independent per-character forward pass in numpy on the checkpoint's weights:
    returns step(char_id) -> logits, carrying its own state."""
    from charrnn.tfcompat import load

    tf, _ = load()
    reader = tf.train.load_checkpoint(sampler.path)
    w = {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()}
    config = sampler.config
    H = config.hidden_size
    state = [(np.zeros(H), np.zeros(H)) for _ in range(config.num_layers)]

    def step(char_id):
        x = w["model/embedding"][char_id]
        for layer in range(config.num_layers):
            c, h = state[layer]
            prefix = f"model/rnn/multi_rnn_cell/cell_{layer}/lstm_cell/"
            gates = np.concatenate([x, h]) @ w[prefix + "kernel"] + w[prefix + "bias"]
            i, j, f, o = np.split(gates, 4)
            sigmoid = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
            c = sigmoid(f + 1.0) * c + sigmoid(i) * np.tanh(j)  # forget_bias 1.0
            h = sigmoid(o) * np.tanh(c)
            state[layer] = (c, h)
            x = h
        return x @ w["model/softmax_w"] + w["model/softmax_b"]

    return step


def test_greedy_matches_a_numpy_lstm_reading_the_same_weights(trained):
    """The in-graph loop against an independent per-character forward pass in numpy."""
    _, sampler = trained
    vocab, step = sampler.vocab, numpy_lstm(sampler)
    prime, n = "whether ", 60
    for ch in prime:
        logits = step(vocab.index[ch])
    expected = prime
    for _ in range(n):
        nxt = int(np.argmax(logits))
        expected += vocab.chars[nxt]
        logits = step(nxt)
    assert text(sampler, prime, n, greedy=True) == expected


def test_draws_follow_the_tempered_and_filtered_softmax(trained):
    """The sampler's RNG differs from a per-character loop's, so check the distribution: the
    first character after a prime, over 600 seeds, against numpy's softmax(logits / T)."""
    _, sampler = trained
    vocab, step = sampler.vocab, numpy_lstm(sampler)
    prime, draws, temperature = "the question", 600, 2.0
    for ch in prime:
        logits = step(vocab.index[ch]) / temperature
    p = np.exp(logits - logits.max())
    p /= p.sum()
    assert p.max() < 0.9, "the check needs a spread-out distribution"

    def frequencies(**kw):
        counts = np.zeros(len(vocab))
        for seed in range(draws):
            counts[vocab.index[text(sampler, prime, 1, seed=seed, temperature=temperature, **kw)[-1]]] += 1
        return counts / draws

    tolerance = 4 * np.sqrt(p * (1 - p) / draws) + 0.01  # about 4 standard errors
    assert np.all(np.abs(frequencies() - p) <= tolerance)
    top2 = np.argsort(-p)[:2]
    p2 = np.zeros_like(p)
    p2[top2] = p[top2] / p[top2].sum()
    assert np.all(np.abs(frequencies(top_k=2) - p2) <= 4 * np.sqrt(p2 * (1 - p2) / draws) + 0.01)


def test_chunks_across_the_noise_block_boundary_equal_one_run(trained):
    """Random draws come in blocks of MAX_CHUNK positions; a chunk straddling two blocks must
    still get each position's own draw."""
    from charrnn.model import MAX_CHUNK

    _, sampler = trained
    n = MAX_CHUNK + 40
    whole = text(sampler, "the ", n, seed=11)
    assert text(sampler, "the ", n, seed=11, chunk_size=1000) == whole
    assert text(sampler, "the ", n, seed=11, chunk_size=MAX_CHUNK - 3) == whole
    assert whole != text(sampler, "the ", n, seed=12)


def test_top_k_one_equals_greedy_and_top_p_filters(trained):
    _, sampler = trained
    greedy = text(sampler, "To ", 80, greedy=True)
    assert text(sampler, "To ", 80, seed=1, top_k=1) == greedy
    assert text(sampler, "To ", 80, seed=2, top_p=1e-6) == greedy
    assert text(sampler, "To ", 80, seed=5, temperature=1e-4) == greedy


def test_edge_cases_of_prime_and_n(trained):
    _, sampler = trained
    assert text(sampler, "To", 0) == "To"
    drawn = text(sampler, "", 30, seed=1)
    assert len(drawn) == 30 and set(drawn) <= set(sampler.vocab.chars)
    assert text(sampler, "", 0) == ""
    with pytest.raises(ConfigError, match=r"never saw: 'Q' 'Z'"):
        text(sampler, "Quiz Z", 10)


def test_no_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no such directory"):
        Sampler(str(tmp_path / "missing"))
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        Sampler(str(tmp_path / "empty"))


def test_sampling_xla_flags_join_the_users_own(monkeypatch):
    from charrnn import tfcompat

    tf, _ = tfcompat.load()
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    added = tfcompat.use_sampling_xla_flags()
    if not added:  # a TensorFlow outside the versions checked: nothing is risked
        assert "XLA_FLAGS" not in os.environ
        pytest.skip(f"sampling XLA flags are not used with TensorFlow {tf.__version__}")
    assert added == list(tfcompat.SAMPLING_XLA_FLAGS)
    assert os.environ["XLA_FLAGS"].split() == added
    assert tfcompat.use_sampling_xla_flags() == []  # once is enough
    # A flag the user set keeps the user's value; the others are still added.
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_prefer_vector_width=256 --xla_dump_to=/tmp/x")
    assert tfcompat.use_sampling_xla_flags() == [tfcompat.SAMPLING_XLA_FLAGS[1]]
    assert os.environ["XLA_FLAGS"].split() == ["--xla_cpu_prefer_vector_width=256", "--xla_dump_to=/tmp/x",
                                               tfcompat.SAMPLING_XLA_FLAGS[1]]


def test_small_noise_blocks_and_no_input_table_give_the_same_draws_in_any_chunking(trained, monkeypatch):
    """Sampling memory does not grow with chunk x vocabulary: a large vocabulary gets fewer noise
    rows per block (max_chunk) and no (V, 4H) input table. Forced here on a small model, the text
    is the same with and without the table, and the same in any chunking across blocks."""
    from charrnn import model

    save, sampler = trained
    vocab_size = len(sampler.vocab)
    monkeypatch.setattr(model, "NOISE_BLOCK_FLOATS", 7 * vocab_size)  # blocks of 7 positions
    small_blocks = Sampler(save)
    monkeypatch.setattr(model, "TABLE_FLOATS", 0)
    no_table = Sampler(save)
    try:
        assert small_blocks.model.max_chunk == no_table.model.max_chunk == 7
        whole = text(small_blocks, "the ", 60, seed=5)
        for chunk in (1, 3, 7, 1000):
            assert text(no_table, "the ", 60, seed=5, chunk_size=chunk) == whole
        assert text(no_table, "To ", 50, greedy=True) == text(sampler, "To ", 50, greedy=True)
        assert text(small_blocks, "the ", 60, seed=6) != whole
    finally:
        small_blocks.close()
        no_table.close()


def test_layer_0s_next_product_inside_layer_1s_gives_the_same_text(trained, monkeypatch):
    """The sampler of a 2-layer LSTM of 192-256 units computes h0 @ W_h0 for the next character
    in one product with layer 1's, [h0, h1] @ [[W_h0, W_x1], [0, W_h1]] (XLA splits it over two
    threads; forced here at 32 units by scaling XLA's threshold as 32 units scale it). The same math: the same draws as with the two products apart, at a high
    temperature, in any chunking, and greedily; the state differs only by rounding (XLA adds the
    input row into the product apart, after it fused)."""
    from charrnn import model
    from charrnn.tfcompat import load

    tf, _ = load()
    save, sampler = trained
    H = sampler.config.hidden_size

    def fused_kernels(s):  # the (2H, 8H) kernel the fused sampler builds once, outside its loop
        return [op for op in s.session.graph.get_operations()
                if op.type == "ConcatV2" and op.outputs[0].shape.as_list() == [2 * H, 8 * H]]

    assert not model.fuses_recurrent_products(sampler.config) and not fused_kernels(sampler)
    apart = sampler
    monkeypatch.setattr(model, "GEMV_FMA_PER_THREAD", 8 * H * H)  # as 2^19 is to 256 units
    assert model.fuses_recurrent_products(sampler.config)
    sampler = Sampler(save)
    try:
        assert fused_kernels(sampler) and not fused_kernels(apart)
        hot = text(sampler, "the ", 3000, seed=11, temperature=2.5)
        assert text(apart, "the ", 3000, seed=11, temperature=2.5) == hot
        assert text(apart, "the ", 3000, seed=11, temperature=2.5, chunk_size=333) == hot
        assert text(sampler, "the ", 3000, seed=11, temperature=2.5, chunk_size=333) == hot
        assert text(apart, "To ", 200, greedy=True) == text(sampler, "To ", 200, greedy=True)
        # The state after 500 characters: the same to float rounding.
        ids = sampler.vocab.encode("the ")
        states = []
        for s in (sampler, apart):
            m = s.model
            states.append(s.session.run(tf.nest.flatten(m.final_state), {
                m.prime: ids, m.num_chars: 500, m.seed: 11, m.temperature: 2.5}))
        for fused_part, apart_part in zip(*states):
            np.testing.assert_allclose(fused_part, apart_part, rtol=1e-5, atol=1e-6)
    finally:
        sampler.close()


def test_any_int64_seed_works_with_an_empty_prime(trained):
    """The first character of an empty prime is drawn with numpy, whose seeds are 32-bit."""
    _, sampler = trained
    for seed in (-1, 2**40):
        drawn = text(sampler, "", 10, seed=seed)
        assert len(drawn) == 10 and drawn == text(sampler, "", 10, seed=seed)
