#!/usr/bin/env bash
# Training chars/s of charrnn's graphs and the PyTorch reference, alternated, several rounds.
# usage: bench/side_by_side.sh DATA [ROUNDS] [TORCH_PYTHON]
#   TORCH_PYTHON: a python with torch==2.13.0 and numpy (a separate venv); default: python3
# Prints one line per run; take the median per row (the machine is shared and noisy).
set -euo pipefail
data=$1; rounds=${2:-3}; torch_python=${3:-python3}
here=$(cd "$(dirname "$0")" && pwd)
# The CPU model beside every line: AMD and Intel parts rank these graphs differently.
cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)
reference=$here/../../shared/bench/torch_lstm.py
for round in $(seq "$rounds"); do
  for hidden in 256 512; do
    steps=$([ "$hidden" = 256 ] && echo 40 || echo 20)
    echo "[$cpu] round $round hidden $hidden torch $("$torch_python" "$reference" "$data" --hidden "$hidden" --steps "$steps")"
    # speed.py's defaults are charrnn-train's (XLA on): the plain graph needs --noxla. The
    # reference trains with plain Adam, so charrnn does too (its default is AdamW since 0.2).
    for graph in "cell --noxla" "cell --xla" "layerwise --xla"; do
      # shellcheck disable=SC2086
      result=$(python "$here/speed.py" --data "$data" --hidden_size "$hidden" --rnn_impl $graph \
               --weight_decay 0 --skip_startup --steps "$steps" 2>/dev/null | tail -1)
      echo "[$cpu] round $round hidden $hidden charrnn[$graph] $result"
    done
  done
done
