#!/usr/bin/env bash
# single-process training speed: release 0.1.0 (7894b01) against main, alternated, 2x256 batch 50 x 50
. /work/venv/bin/activate
D=/work/shared/data/tinyshakespeare.txt
for round in 1 2 3; do
  for graph in "cell --xla" "cell --noxla" "layerwise --xla"; do
    g010=${graph/--noxla/}
    if [ $((round % 2)) = 1 ]; then order="010 main"; else order="main 010"; fi
    for who in $order; do
      if [ $who = 010 ]; then r=$(python /work/wt-010/bench/speed.py --data $D --rnn_impl $g010 --steps 40 --skip_startup --skip_sampling 2>/dev/null | tail -1)
      else r=$(python /work/main/bench/speed.py --data $D --rnn_impl $graph --steps 40 --skip_startup --skip_sampling 2>/dev/null | tail -1); fi
      echo "round $round [$graph] $who $r"
    done
  done
done
