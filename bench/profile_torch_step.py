"""What PyTorch's training step (the reference, ../shared/bench/torch_lstm.py) is made of, per op.

usage: TORCH_PYTHON bench/profile_torch_step.py DATA [--hidden 256] [--steps 20] [--threads 2]

Runs in a Python with torch (2.13.0 CPU) and numpy, not charrnn's environment. The model and step
are torch_lstm.py's (2-layer stateful nn.LSTM, batch 50 x seq 50, Adam 2e-3, clip 5); after 10
warm-up steps, --steps steps are timed and then profiled with torch.profiler. Prints the top ops
by self CPU time, the outermost ops (forward ops, autograd's backward functions, Adam's step) and
one JSON line grouping self CPU time by them: nn.LSTM's forward and backward kernels, the
softmax projection's products, Adam, and the rest.
"""
import argparse
import json
import platform
import time

import numpy as np
import torch

p = argparse.ArgumentParser()
p.add_argument("data")
p.add_argument("--hidden", type=int, default=256)
p.add_argument("--layers", type=int, default=2)
p.add_argument("--batch", type=int, default=50)
p.add_argument("--seq", type=int, default=50)
p.add_argument("--steps", type=int, default=20)
p.add_argument("--threads", type=int, default=2)
a = p.parse_args()
torch.set_num_threads(a.threads)


def cpu_model():
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


text = open(a.data, encoding="utf-8").read()
chars = sorted(set(text))
V, index = len(chars), {c: i for i, c in enumerate(chars)}
ids = np.array([index[c] for c in text], dtype=np.int64)
B, T, H = a.batch, a.seq, a.hidden
nb = len(ids) // (B * T)
X = torch.from_numpy(ids[: nb * B * T].reshape(B, -1))
Y = torch.from_numpy(np.roll(ids[: nb * B * T], -1).reshape(B, -1))


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.e = torch.nn.Embedding(V, H)
        self.l = torch.nn.LSTM(H, H, a.layers, batch_first=True)
        self.d = torch.nn.Linear(H, V)

    def forward(self, x, state):
        o, state = self.l(self.e(x), state)
        return self.d(o), state


model = Model()
opt = torch.optim.Adam(model.parameters(), 2e-3)
state = None


def step(i):
    global state
    j = (i % nb) * T
    logits, state = model(X[:, j:j + T], state)
    state = tuple(t.detach() for t in state)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), Y[:, j:j + T].reshape(-1))
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    opt.step()
    return loss.item()


for i in range(10):
    step(i)
t0 = time.perf_counter()
for i in range(10, 10 + a.steps):
    step(i)
untraced_ms = 1000 * (time.perf_counter() - t0) / a.steps

with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    t0 = time.perf_counter()
    for i in range(10 + a.steps, 10 + 2 * a.steps):
        step(i)
    traced_ms = 1000 * (time.perf_counter() - t0) / a.steps

averages = prof.key_averages()
print(f"{a.layers}x{H}, batch {B} x seq {T}, torch {torch.__version__}, {a.threads} threads; CPU: {cpu_model()}")
print(f"step: {untraced_ms:.2f} ms untraced (mean of {a.steps}), {traced_ms:.2f} ms traced")
print(averages.table(sort_by="self_cpu_time_total", row_limit=15))


def group(root):
    """Which part of the step an op belongs to, by its outermost enclosing op or scope."""
    if "Optimizer.step" in root:
        return "adam"
    if root == "aten::lstm" or "MkldnnRnnLayer" in root or "Lstm" in root or "LSTM" in root:
        # nn.LSTM's oneDNN kernels: a whole layer (input projection, loop, weight gradients) each
        return "lstm_backward" if "evaluate_function" in root else "lstm_forward"
    if root == "aten::linear" or "AddmmBackward" in root or "MmBackward" in root:
        return "softmax_products"  # the projection to the vocabulary and its gradients
    return "rest"  # embedding, loss, clipping, zero_grad, copies, autograd's glue


# Self CPU time, grouped by each op's outermost ancestor: self times partition the profiled time.
by_root = {}
for event in prof.events():
    root = event
    while root.cpu_parent is not None:
        root = root.cpu_parent
    by_root[root.name] = by_root.get(root.name, 0.0) + event.self_cpu_time_total / 1000 / a.steps  # ms/step
groups = {}
for root, ms in by_root.items():
    groups[group(root)] = groups.get(group(root), 0.0) + ms
for root, ms in sorted(by_root.items(), key=lambda kv: -kv[1])[:12]:
    print(f"{ms:8.2f} ms/step  {group(root):<16} {root}")
total = sum(groups.values())
print(json.dumps({"impl": "torch", "hidden": H, "cpu": cpu_model(), "untraced_ms_per_step": round(untraced_ms, 2),
                  "traced_ms_per_step": round(traced_ms, 2),
                  "self_cpu_ms_per_step": {k: round(v, 2) for k, v in sorted(groups.items())},
                  "self_cpu_percent": {k: round(100 * v / total, 1) for k, v in sorted(groups.items())}}))
