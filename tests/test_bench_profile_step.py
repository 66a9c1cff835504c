"""bench/profile_step.py: a thunk-level profile of the compiled training step, parsed from the trace."""
import json
import os
import subprocess
import sys

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "profile_step.py")
TEXT = "".join(f"Line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(60))


def test_a_tiny_layerwise_step_is_attributed_to_its_loops_and_products(tmp_path):
    data = tmp_path / "text.txt"
    data.write_text(TEXT)
    result = subprocess.run(
        [sys.executable, SCRIPT, "--data", str(data), "--steps", "2", "--warmup", "1", "--hidden_size", "16",
         "--num_layers", "2", "--batch_size", "4", "--seq_length", "8", "--rnn_impl", "layerwise", "--xla"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["traced_steps"] == 2
    categories = report["categories"]
    # The shares are of the traced steps' wall time, split so that they add up to all of it.
    assert abs(sum(row["percent"] for row in categories.values()) - 100) < 1
    assert abs(sum(row["ms_per_step"] for row in categories.values()) - report["traced_ms_per_step"]) < 0.05
    for name in ("recurrent products, forward loops", "recurrent products, backward loops",
                 "other ops in loop bodies (elementwise fusions, copies)",
                 "products outside loops: input projections + grads", "products outside loops: dW_h after the loop",
                 "products outside loops: softmax projection + grads", "XLA ops outside loops: Adam, clipping",
                 "TensorFlow executor ops outside the XLA cluster"):
        assert categories[name]["ms_per_step"] > 0, name
    # One forward and one written-out backward loop per layer, one iteration per time step.
    loops = report["loops"].values()
    assert sorted(loop["kind"] for loop in loops) == ["backward", "backward", "forward", "forward"]
    assert all(loop["iterations_per_step"] == 8 for loop in loops)
    # A recurrent product per layer and time step each way: (B, H) x (H, 4H) forward, by the
    # pretransposed kernel backward.
    products = report["recurrent_product"]
    assert products["forward"]["shape"] == "(4,16) x (16,64)" and products["forward"]["count_per_step"] == 16
    assert products["backward"]["shape"] == "(4,64) x (64,16)" and products["backward"]["count_per_step"] == 16
    assert "layerwise" in result.stdout.splitlines()[0] and report["cpu"]


def test_the_uncompiled_step_is_refused_in_one_line(tmp_path):
    data = tmp_path / "text.txt"
    data.write_text(TEXT)
    result = subprocess.run([sys.executable, SCRIPT, "--data", str(data), "--noxla"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "--noxla" in result.stderr and "Traceback" not in result.stderr
