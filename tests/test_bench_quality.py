"""bench/quality.py: a fixed step budget on a development split, as the screening runs it."""
import json
import os
import subprocess
import sys

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "quality.py")
TEXT = "".join(f"Line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(120))


def test_steps_and_dev_split_train_on_the_first_part_only_and_end_the_schedule(tmp_path):
    data = tmp_path / "text.txt"
    data.write_text(TEXT)
    keep = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, SCRIPT, "--data", str(data), "--steps", "12", "--dev", "--keep", str(keep),
         "--hidden_size", "16", "--num_layers", "1", "--batch_size", "4", "--seq_length", "8",
         "--decay_schedule", "cosine", "--warmup_steps", "2", "--eval_every", "6", "--noxla"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["steps"] == 12 and report["budget"] == {"steps": 12}
    assert report["config"]["decay_steps"] == 12  # the schedule ends where the budget does
    assert report["split"].startswith("dev")
    # The text trained and validated on is the first 90%: the held-out end is never read.
    held_out = round(len(TEXT) * 0.1)
    assert (keep / "data" / "input.txt").read_text() == TEXT[:len(TEXT) - held_out]
    assert [point["step"] for point in report["curve"]][-1] == 12
