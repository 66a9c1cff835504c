"""Quality in a wall-clock budget: train a configuration on a text with a 90/10 split, print JSON.

usage: python bench/quality.py --data FILE --minutes 30 [--preset NAME] [charrnn-train flags...]

Runs the real training loop (charrnn.train) for --minutes of wall time, evaluations included,
then prints one JSON object: config, steps, characters seen, final and best validation loss in
nats/char and bits/char, the validation curve (minutes, step, loss) and a 200-character sample
from the best checkpoint. Progress goes to stderr.
"""
import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from charrnn import train as trainer  # noqa: E402
from charrnn.config import Config  # noqa: E402
from charrnn.presets import PRESETS  # noqa: E402
from charrnn.sample import Sampler  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--minutes", type=float, default=30)
    p.add_argument("--preset", default=None, choices=sorted(PRESETS))
    p.add_argument("--keep", default=None, help="keep the save dir here instead of a temp dir")
    for f in dataclasses.fields(Config):
        if f.name not in ("vocab_size", "data_sha256"):
            p.add_argument(f"--{f.name}", type=type(f.default) if f.type is not bool else
                           (lambda v: v.lower() in ("1", "true", "yes")), default=None)
    args = p.parse_args()
    values = dict(PRESETS[args.preset]) if args.preset else {}
    values.update(val_frac=0.1)
    values.update({k: v for k, v in vars(args).items()
                   if k in {f.name for f in dataclasses.fields(Config)} and v is not None})
    config = Config(**values)

    work = args.keep or tempfile.mkdtemp(prefix="charrnn-quality-")
    data_dir = os.path.join(work, "data")
    os.makedirs(data_dir, exist_ok=True)
    shutil.copy(args.data, os.path.join(data_dir, "input.txt"))
    save_dir, log_dir = os.path.join(work, "save"), os.path.join(work, "logs")
    try:
        run = trainer.prepare(config, data_dir, save_dir, fresh=True)
        result = trainer.train(run, save_dir, log_dir, max_minutes=args.minutes)
        sampler = Sampler(save_dir)
        sample = "".join(sampler.generate("\n", 199, seed=0))
        sampler.close()
        c = run.config
        best_step, best = result["best"]
        print(json.dumps({
            "data": os.path.basename(args.data), "preset": args.preset,
            "config": {k: v for k, v in dataclasses.asdict(c).items() if k != "data_sha256"},
            "minutes": round(result["minutes"], 2), "steps": result["step"],
            "chars_seen": result["step"] * c.batch_size * c.seq_length,
            "final_val_nats": result["history"][-1]["val_loss"],
            "final_val_bits": round(result["history"][-1]["val_loss"] / math.log(2), 4),
            "best_val_nats": round(best, 4), "best_val_bits": round(best / math.log(2), 4),
            "best_step": best_step, "curve": result["history"], "sample": sample}))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
