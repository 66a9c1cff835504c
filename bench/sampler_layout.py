"""Sampling chars/s with layer 0's next recurrent product inside layer 1's ('fused') or apart.

usage: python bench/sampler_layout.py SAVE_DIR [ROUNDS]

Runs ROUNDS (default 3) alternated rounds; in each, one fresh process per layout, set up as
charrnn-sample sets itself up (its XLA flags), generating 20,000 characters three times in one
chunk after a warm-up (as bench/speed.py's sampling figure). Prints one JSON object: the CPU
model, the model's shape, whether charrnn fuses it by default (charrnn.model.fuses_recurrent_products),
each round's chars/s and each layout's median. 'apart' is the layout charrnn used before.
"""
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(1, os.path.dirname(os.path.abspath(__file__)))


def child(save_dir, layout, hidden_size):
    """bench/speed.py's sampling measurement, with the layout forced through the threshold that
    charrnn.model.fuses_recurrent_products reads: 0 never fuses, 8H^2 fuses at this width."""
    from charrnn import model
    from speed import _sample_only  # bench/speed.py, beside this script

    model.GEMV_FMA_PER_THREAD = 0 if layout == "apart" else 8 * hidden_size * hidden_size
    _sample_only(save_dir)


def main(save_dir, rounds):
    from charrnn import model
    from charrnn.rundir import RunDir
    from charrnn.tfcompat import cpu_model

    config = RunDir(save_dir).open_model("auto").config
    results = {"fused": [], "apart": []}
    for _ in range(rounds):
        for layout in results:
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", layout,
                                  str(config.hidden_size), save_dir],
                                 capture_output=True, text=True, check=True).stdout
            results[layout].append(int(out.split()[-1]))
    print(json.dumps({"cpu": cpu_model(), "model": f"{config.num_layers}x{config.hidden_size} {config.model}",
                      "fused_by_default": model.fuses_recurrent_products(config), "chars_per_sec": results,
                      "median": {layout: statistics.median(runs) for layout, runs in results.items()}}))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[4], sys.argv[2], int(sys.argv[3]))
    elif len(sys.argv) in (2, 3):
        main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) == 3 else 3)
    else:
        sys.exit(__doc__.strip().splitlines()[2])
