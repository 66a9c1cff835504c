"""Where the time of one training step goes, per XLA instruction; prints a table and one JSON line.

usage: python bench/profile_step.py --data FILE [--steps 20] [--warmup 10] [--logdir DIR]
       [charrnn-train's config flags: --hidden_size 256 --rnn_impl layerwise --xla ...]

Builds the real training graph (TrainGraph) as bench/speed.py does, runs --warmup steps, times
--steps untraced steps, then traces --steps more with TensorFlow's profiler
(``tf.profiler.experimental.start/stop``) and parses the trace (the ``.xplane.pb``) itself.

What the trace holds, checked on TensorFlow 2.21 (its XLA CPU backend runs thunks): one event
per executed HLO instruction of the compiled step (named as the instruction, e.g. ``MatMul.19``;
a ``while.N`` event is only the loop's launch, its iterations run as continuations on either
thread), one per TensorFlow op the executor runs outside the XLA cluster (``name:Type``), and,
in the metadata plane, the optimized HLO module itself (instruction names, opcodes, shapes, the
TF op each came from, which computation is which loop's body). No ``XLA_FLAGS`` (the wheel knows
``--xla_cpu_enable_xprof_traceme``, but the per-instruction events are there without it) and no
``--xla_dump_to`` are needed.

XLA may run a large dot asynchronously on its intra-op thread pool (whose tasks are not
traced): the instruction's event can end long before the product is done, and a later
``end: NAME`` event marks its completion, so an op is taken to be in flight from its event's
start to its ``end:`` mark. Independent products outside the loops (e.g. the gradients after a
backward loop) are then in flight at the same time, sharing the two cores.

Each instruction gets a category from that HLO (a dot inside a forward/backward loop body, a dot
outside the loops, other instructions inside/outside loops). Wall time is then attributed along
the timeline: at each instant the time is split evenly among the ops in flight then; time inside
a loop's span (its body's first op to its last, per step) with no op in flight is loop overhead
(thunk dispatch, the condition, starting each iteration); time of the step with no op in flight
anywhere is "not covered" (the executor, XLA's launch, the session). The shares sum to 100% of
the traced steps' wall time (SessionRun). The profiler adds a little per event, so the traced
step is slower than the untraced one; both are printed.
"""
import bisect
import collections
import glob
import json
import os
import statistics
import sys
import time

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from charrnn.cli import benchmark_config, benchmark_run, define_benchmark_flags, run_command  # noqa: E402
from charrnn.errors import ConfigError  # noqa: E402
from charrnn.model import TrainGraph  # noqa: E402
from charrnn.tfcompat import cpu_model, load, session_config  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("steps", 20, "Training steps traced (and as many timed untraced before them).")
flags.DEFINE_integer("warmup", 10, "Steps run before anything is timed (the first compiles the step).")
flags.DEFINE_string("logdir", None, "Keep the profiler's trace here (default: a temporary folder, removed).")
flags.DEFINE_string("trace", None, "Parse this .xplane.pb (kept with --logdir by a run with the same config "
                    "flags) instead of training and tracing.")
define_benchmark_flags()

# Categories, in the order the table prints them.
FORWARD_PRODUCTS = "recurrent products, forward loops"
BACKWARD_PRODUCTS = "recurrent products, backward loops"
LOOP_FUSIONS = "other ops in loop bodies (elementwise fusions, copies)"
LOOP_OVERHEAD = "loop overhead (in a while, no op running; loop condition)"
INPUT_PRODUCTS = "products outside loops: input projections + grads"
RECURRENT_GRAD = "products outside loops: dW_h after the loop"
SOFTMAX_PRODUCTS = "products outside loops: softmax projection + grads"
OTHER_PRODUCTS = "products outside loops: other"
ADAM = "XLA ops outside loops: Adam, clipping"
OTHER_XLA = "XLA ops outside loops: the rest"
TF_OPS = "TensorFlow executor ops outside the XLA cluster"
UNCOVERED = "not covered by any op (executor, launch, session)"
CATEGORIES = [FORWARD_PRODUCTS, BACKWARD_PRODUCTS, LOOP_FUSIONS, LOOP_OVERHEAD, INPUT_PRODUCTS, RECURRENT_GRAD,
              SOFTMAX_PRODUCTS, OTHER_PRODUCTS, ADAM, OTHER_XLA, TF_OPS, UNCOVERED]

PRED = 1  # xla.PrimitiveType PRED: a loop condition's result type


def trace_steps(run, warmup, steps, logdir):
    """Train ``warmup`` steps, time ``steps`` untraced ones, trace ``steps`` more into ``logdir``.

    Returns (untraced ms per step (median), the .xplane.pb file's path)."""
    tf, tf1 = load()
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(0)
        model = TrainGraph(run.config)
        init = tf1.global_variables_initializer()
    graph.finalize()
    with tf1.Session(graph=graph, config=session_config()) as session:
        session.run(init)

        def step(i):
            x, y = run.train.batch(i % run.train.num_batches)
            session.run([model.loss, model.train_op], {model.inputs: x, model.targets: y})

        for i in range(warmup):
            step(i)
        times = []
        for i in range(warmup, warmup + steps):
            t0 = time.perf_counter()
            step(i)
            times.append(time.perf_counter() - t0)
        tf.profiler.experimental.start(logdir)
        try:
            for i in range(warmup + steps, warmup + 2 * steps):
                step(i)
        finally:
            tf.profiler.experimental.stop()
    paths = glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb"))
    if len(paths) != 1:
        raise RuntimeError(f"expected one .xplane.pb under {logdir}, found {paths}")
    return 1000 * statistics.median(times), paths[0]


# ---------------------------------------------------------------- the HLO: what each instruction is

def _modules(space):
    """The optimized HLO modules the metadata plane carries: [HloModuleProto]."""
    from tensorflow.compiler.xla.service import hlo_pb2

    modules = []
    for plane in space.planes:
        if plane.name != "/host:metadata":
            continue
        for meta in plane.event_metadata.values():
            for stat in meta.stats:
                if stat.WhichOneof("value") == "bytes_value":
                    proto = hlo_pb2.HloProto()
                    proto.ParseFromString(stat.bytes_value)
                    modules.append(proto.hlo_module)
    return modules


def _dot_flops(dot, shapes):
    """2 * M * N * K of a dot instruction (``shapes``: instruction id -> ShapeProto)."""
    result = 1
    for d in dot.shape.dimensions:
        result *= d
    lhs = shapes[dot.operand_ids[0]]
    for d in dot.dot_dimension_numbers.lhs_contracting_dimensions:
        result *= lhs.dimensions[d]
    return 2 * result


def classify(module, config):
    """{instruction name: (category, flops or 0, loop name or None, shape text)} for the thunk-level
    instructions of ``module``, and {loop name: "forward"/"backward"}."""
    comps = {c.id: c for c in module.computations}
    shapes = {i.id: i.shape for c in module.computations for i in c.instructions}
    by_id = {i.id: i for c in module.computations for i in c.instructions}
    entry = comps[module.entry_computation_id]

    def inner_dot(instruction):
        """The dot an instruction is or fuses, else None."""
        if instruction.opcode == "dot":
            return instruction
        if instruction.opcode == "fusion":
            for cid in instruction.called_computation_ids:
                for inner in comps[cid].instructions:
                    if inner.opcode == "dot":
                        return inner
        return None

    # Which loop each computation runs in (bodies and conditions of while instructions, and what
    # they call in turn), and whether it is the loop's condition.
    loop_of, is_condition, loops = {}, set(), {}

    def visit(computation, loop):
        for instruction in computation.instructions:
            if instruction.opcode == "while":
                name = instruction.name if loop is None else loop
                loops[name] = "backward" if "gradients" in instruction.metadata.op_name else "forward"
                for cid in instruction.called_computation_ids:
                    loop_of[cid] = name
                    if comps[cid].program_shape.result.element_type == PRED:
                        is_condition.add(cid)
                    visit(comps[cid], name)

    visit(entry, None)
    # Scopes of the written-out backward passes (e.g. model/gradients/model/IdentityN_2_grad): a
    # product there outside the loop is the recurrent kernel's gradient after the loop.
    backward_scopes = {by_id_name.metadata.op_name.rsplit("/", 1)[0] for by_id_name in by_id.values()
                       if by_id_name.opcode == "while" and "gradients" in by_id_name.metadata.op_name}
    V, TB = config.vocab_size, config.batch_size * config.seq_length

    table = {}
    for cid, computation in [(entry.id, entry)] + [(cid, comps[cid]) for cid in loop_of]:
        loop = loop_of.get(cid)
        for instruction in computation.instructions:
            if instruction.opcode in ("parameter", "constant", "tuple", "get-tuple-element", "bitcast"):
                continue  # no thunk of their own
            dot = inner_dot(instruction)
            flops = _dot_flops(dot, shapes) if dot is not None else 0
            dims = [] if dot is None else [list(shapes[o].dimensions) for o in dot.operand_ids]
            if instruction.opcode == "while":
                category = LOOP_OVERHEAD  # its time not covered by its body's ops
            elif loop is not None:
                if cid in is_condition:
                    category = LOOP_OVERHEAD
                elif dot is not None:
                    category = BACKWARD_PRODUCTS if loops[loop] == "backward" else FORWARD_PRODUCTS
                else:
                    category = LOOP_FUSIONS
            elif dot is not None:
                sizes = {d for shape in dims for d in shape}
                scope = instruction.metadata.op_name.rsplit("/", 1)[0]
                if scope in backward_scopes:
                    category = RECURRENT_GRAD
                elif V in sizes and TB in sizes:  # by shapes: a vocabulary of exactly 4H would confuse the two
                    category = SOFTMAX_PRODUCTS
                elif TB in sizes or V in sizes:  # layer 1+'s over T*B positions, layer 0's (V, H) table
                    category = INPUT_PRODUCTS
                else:
                    category = OTHER_PRODUCTS
            elif "Adam" in instruction.metadata.op_name or "global_norm" in instruction.metadata.op_name \
                    or "clip_by_global_norm" in instruction.metadata.op_name:
                category = ADAM
            else:
                category = OTHER_XLA
            shape = " x ".join("(" + ",".join(map(str, d)) + ")" for d in dims)
            table[instruction.name] = (category, flops, loop, shape, instruction.metadata.op_name)
    return table, loops


def consumers(module):
    """{instruction name: names of the instructions with a thunk that read its result} (through
    tuples, bitcasts and get-tuple-elements, which have no thunk of their own)."""
    users = collections.defaultdict(list)
    for computation in module.computations:
        for instruction in computation.instructions:
            for operand in instruction.operand_ids:
                users[operand].append(instruction)
    passthrough = ("tuple", "get-tuple-element", "bitcast")

    def readers(iid, seen):
        for user in users[iid]:
            if user.id in seen:
                continue
            seen.add(user.id)
            if user.opcode in passthrough:
                yield from readers(user.id, seen)
            else:
                yield user.name

    return {i.name: set(readers(i.id, set())) for c in module.computations for i in c.instructions}


# ---------------------------------------------------------------- the trace: where the time went

def _events(plane):
    """[(thread name, start ps, end ps, event name)] of every event of ``plane``, absolute times."""
    md = plane.event_metadata
    out = []
    for line in plane.lines:
        base = line.timestamp_ns * 1000
        for e in line.events:
            start = base + e.offset_ps
            out.append((line.name, start, start + e.duration_ps, md[e.metadata_id].name))
    return out


def _label(name, instructions):
    """What an event is: (category, instruction name) for an HLO instruction, (TF_OPS, op) for a
    TensorFlow op, or None for the runtime's own events (SessionRun, ThunkExecutor::Execute...)."""
    if name in instructions:
        return instructions[name][0], name
    if ":" in name and "::" not in name and not name.startswith("end: "):  # the executor's "node:OpType"
        return TF_OPS, name
    return None


def in_flight(events, instructions, readers):
    """[(start, end, label)]: when each op of the trace ran, from its event's start to its
    completion. XLA runs some ops asynchronously (large dots, big copies, on the intra-op pool,
    which is not traced): the event ends when the op is dispatched, and an ``end: NAME`` event is
    logged when its completion is handled, which can lag the completion itself; a small op's
    ``end:`` follows its event at once. So an op is in flight until its end mark or, if earlier,
    until the first op that reads its result starts (``readers``, from the HLO). A while
    instruction is left out: its own event is only the loop's launch (see :func:`attribute`)."""
    starts, ends = collections.defaultdict(list), collections.defaultdict(list)
    launches = collections.defaultdict(list)  # every instruction event's start, by name
    for _, start, end, name in events:
        if name.startswith("end: "):
            ends[name[len("end: "):]].append(start)
            continue
        label = _label(name, instructions)
        if label is None:
            continue
        launches[name].append(start)
        if not (label[0] == LOOP_OVERHEAD and name.startswith("while")):
            starts[name].append((start, end, label))
    for times in launches.values():
        times.sort()
    spans = []
    for name, runs in starts.items():
        marks = sorted(ends.get(name, []))
        k = 0
        for start, end, label in sorted(runs):
            # One instance of an instruction is in flight at a time: its completion is handled
            # at the first end mark after its start.
            while k < len(marks) and marks[k] < start:
                k += 1
            done = end
            if k < len(marks):
                done = max(end, marks[k])
                k += 1
            for reader in readers.get(name, ()):
                times = launches.get(reader, [])
                i = bisect.bisect_left(times, end)  # the reader's first start after this dispatch
                if i < len(times) and times[i] < done:
                    done = times[i]
            spans.append((start, max(done, end), label))
    return spans


def _union(intervals):
    """Total length of the union of (start, end) intervals."""
    total, reach = 0, None
    for start, end in sorted(intervals):
        if reach is None or start > reach:
            total += end - start
            reach = end
        elif end > reach:
            total += end - reach
            reach = end
    return total


def attribute(space, instructions, readers):
    """Wall time per category over the traced steps (see the module docstring), and the raw facts.

    Returns {"steps", "wall_ps", "category_ps": {category: ps}, "busy_ps": {category: ps in
    flight}, "instruction": {name: [count, ps in flight]}, "loop_ps": {loop: [span ps, ps covered
    by its body's ops]}}.
    """
    plane = next(p for p in space.planes if p.name == "/host:CPU")
    events = _events(plane)
    runs = sorted((s, e) for _, s, e, n in events if n == "SessionRun")
    if not runs:
        raise RuntimeError("the trace holds no SessionRun event")
    run_starts = [s for s, _ in runs]
    spans = in_flight(events, instructions, readers)
    per_instruction = collections.defaultdict(lambda: [0, 0])
    busy = collections.Counter()
    for start, end, (category, name) in spans:
        per_instruction[name][0] += 1
        per_instruction[name][1] += end - start
        busy[category] += end - start

    # A loop's iterations run as continuations, on either thread. Its span in a step is from its
    # body's first op to its last; what its body's ops do not cover there is the loop's overhead
    # (thunk dispatch, the condition, starting each iteration).
    windows = collections.defaultdict(list)  # (loop, run index) -> [(start, end)] of its ops
    for start, end, (category, name) in spans:
        loop = instructions.get(name, (None, 0, None))[2]
        if loop is not None:
            windows[(loop, bisect.bisect_right(run_starts, start) - 1)].append((start, end, category))
    loops = collections.defaultdict(lambda: [0, 0])
    bounds = []
    for (loop, _), ops in windows.items():
        first, last = min(o[0] for o in ops), max(o[1] for o in ops)
        bounds.append((first, last))
        loops[loop][0] += last - first
        loops[loop][1] += _union([(s, e) for s, e, c in ops if c != LOOP_OVERHEAD])

    # Over the timeline: split each instant among the ops in flight then; inside a loop's span
    # with none in flight it is loop overhead; with nothing at all, not covered.
    points = [(s, 3, None) for s, _ in runs] + [(e, -3, None) for _, e in runs]
    points += [(s, 2, None) for s, _ in bounds] + [(e, -2, None) for _, e in bounds]
    for start, end, label in spans:
        points += [(start, 1, label[0]), (end, -1, label[0])]
    points.sort(key=lambda p: (p[0], p[1]))
    active, in_run, in_loop, previous = collections.Counter(), 0, 0, None
    spent = collections.Counter()
    for t, kind, category in points:
        if previous is not None and t > previous and in_run:
            span = t - previous
            running = sum(active.values())
            if running:
                for name, n in active.items():
                    spent[name] += span * n / running
            else:
                spent[LOOP_OVERHEAD if in_loop else UNCOVERED] += span
        previous = t
        if abs(kind) == 3:
            in_run += 1 if kind > 0 else -1
        elif abs(kind) == 2:
            in_loop += 1 if kind > 0 else -1
        else:
            active[category] += kind
            if not active[category]:
                del active[category]
    return {"steps": len(runs), "wall_ps": sum(e - s for s, e in runs), "category_ps": spent, "busy_ps": busy,
            "instruction": per_instruction, "loop_ps": dict(loops)}


def profile(space, config):
    """The report (a dict) of a parsed trace of ``config``'s training step."""
    modules = _modules(space)
    if not modules:
        raise RuntimeError("the trace carries no HLO module: was the step compiled with XLA?")
    instructions, loop_kinds, readers = {}, {}, {}
    for module in modules:
        table, kinds = classify(module, config)
        instructions.update(table)
        loop_kinds.update(kinds)
        readers.update(consumers(module))
    facts = attribute(space, instructions, readers)
    steps, wall = facts["steps"], facts["wall_ps"]
    ms = 1e-9 / steps  # ps over all traced steps -> ms per step

    flops = collections.Counter()  # category -> flops over the traced steps
    for n, (count, _) in facts["instruction"].items():
        if n in instructions:
            flops[instructions[n][0]] += instructions[n][1] * count
    categories = {}
    for c in CATEGORIES:
        spent = facts["category_ps"][c]
        categories[c] = {"ms_per_step": round(spent * ms, 3), "percent": round(100 * spent / wall, 1),
                         "in_flight_ms_per_step": round(facts["busy_ps"][c] * ms, 3)}
        if flops[c] and spent:  # the products' throughput over the wall time attributed to them
            categories[c]["gflops"] = round(flops[c] / (spent / 1e12) / 1e9, 1)
    loops = {}
    for loop, (span, covered) in sorted(facts["loop_ps"].items()):
        body = [n for n, info in instructions.items() if info[2] == loop and info[0] != LOOP_OVERHEAD]
        iterations = max((facts["instruction"][n][0] for n in body if n in facts["instruction"]), default=0)
        loops[loop] = {"kind": loop_kinds[loop], "iterations_per_step": iterations / steps,
                       "ms_per_step": round(span * ms, 3),
                       "overhead_us_per_iteration":
                           round((span - covered) / 1e6 / iterations, 2) if iterations else None}
    products = {}
    for kind, category in (("forward", FORWARD_PRODUCTS), ("backward", BACKWARD_PRODUCTS)):
        names = [n for n, info in instructions.items() if info[0] == category and n in facts["instruction"]]
        count = sum(facts["instruction"][n][0] for n in names)
        if count:
            total = sum(facts["instruction"][n][1] for n in names)
            flops = sum(instructions[n][1] * facts["instruction"][n][0] for n in names)
            products[kind] = {"shape": instructions[names[0]][3], "count_per_step": count / steps,
                              "mean_us": round(total / count / 1e6, 2),
                              "gflops": round(flops / (total / 1e12) / 1e9, 1)}
    outside = []
    for n, info in instructions.items():
        if info[0] in (INPUT_PRODUCTS, RECURRENT_GRAD, SOFTMAX_PRODUCTS, OTHER_PRODUCTS) and n in facts["instruction"]:
            count, total = facts["instruction"][n]
            outside.append({"instruction": n, "op": info[4], "shape": info[3], "us": round(total / count / 1e6, 1),
                            "gflops": round(info[1] * count / (total / 1e12) / 1e9, 1)})
    outside.sort(key=lambda p: -p["us"])
    other_ops = {LOOP_FUSIONS: [], OTHER_XLA: []}  # the costliest first
    for n, info in instructions.items():
        if info[0] in other_ops and n in facts["instruction"]:
            count, total = facts["instruction"][n]
            other_ops[info[0]].append({"instruction": n, "loop": info[2], "op": info[4],
                                       "us": round(total / count / 1e6, 2), "ms_per_step": round(total * ms, 3)})
    for rows in other_ops.values():
        rows.sort(key=lambda p: -p["ms_per_step"])
    for loop, row in loops.items():  # per iteration: the body's ops other than the product
        rest = sum(r["ms_per_step"] for r in other_ops[LOOP_FUSIONS] if r["loop"] == loop)
        row["other_ops_us_per_iteration"] = round(1000 * rest / row["iterations_per_step"], 2) \
            if row["iterations_per_step"] else None
    return {"traced_steps": steps, "traced_ms_per_step": round(wall * ms, 2), "categories": categories,
            "loops": loops, "recurrent_product": products, "products_outside_loops": outside,
            "loop_body_ops": other_ops[LOOP_FUSIONS], "other_xla_ops": other_ops[OTHER_XLA]}


def print_report(report):
    c = report["config"]
    print(f"{c['num_layers']}x{c['hidden_size']}, batch {c['batch_size']} x seq {c['seq_length']}, "
          f"rnn_impl {c['rnn_impl']}, xla {c['xla']}; CPU: {report['cpu']}")
    untraced = "" if report["untraced_ms_per_step"] is None else \
        f"{report['untraced_ms_per_step']} ms untraced (median of {report['traced_steps']}), "
    print(f"step: {untraced}{report['traced_ms_per_step']} ms traced (mean of {report['traced_steps']})")
    print(f"{'category':<60} {'ms/step':>8} {'% wall':>7} {'in flight':>9} {'GFLOP/s':>8}")
    for name, row in report["categories"].items():
        gflops = f"{row['gflops']:>8.1f}" if "gflops" in row else ""
        print(f"{name:<60} {row['ms_per_step']:>8.2f} {row['percent']:>6.1f}% "
              f"{row['in_flight_ms_per_step']:>9.2f} {gflops}")
    total = sum(r["percent"] for r in report["categories"].values())
    print(f"{'total':<60} {report['traced_ms_per_step']:>8.2f} {total:>6.1f}%")
    for loop, row in report["loops"].items():
        print(f"loop {loop} ({row['kind']}): {row['iterations_per_step']:.0f} iterations/step, "
              f"{row['ms_per_step']} ms/step; per iteration: {row['other_ops_us_per_iteration']} us of ops "
              f"besides the product, {row['overhead_us_per_iteration']} us overhead")
    for kind, row in report["recurrent_product"].items():
        print(f"recurrent product ({kind}) {row['shape']}: {row['count_per_step']:.0f}/step, mean "
              f"{row['mean_us']} us, {row['gflops']} GFLOP/s")
    for row in report["products_outside_loops"]:
        print(f"product outside loops {row['instruction']} {row['shape']} ({row['op']}): "
              f"{row['us']} us in flight, {row['gflops']} GFLOP/s over that")
    for row in report["loop_body_ops"][:8]:
        print(f"loop body op {row['instruction']} in {row['loop']} ({row['op']}): {row['us']} us each, "
              f"{row['ms_per_step']} ms/step")
    for row in report["other_xla_ops"][:8]:
        print(f"XLA op outside loops {row['instruction']} ({row['op']}): {row['us']} us in flight, "
              f"{row['ms_per_step']} ms/step")


def main():
    config, problems = benchmark_config()
    if FLAGS.steps < 1:
        problems.append(f"--steps must be at least 1 (got {FLAGS.steps})")
    if FLAGS.warmup < 1:
        problems.append(f"--warmup must be at least 1, the step that compiles (got {FLAGS.warmup})")
    if FLAGS.trace and not os.path.isfile(FLAGS.trace):
        problems.append(f"--trace {FLAGS.trace}: no such file")
    if config.xla is False:
        problems.append("--noxla: this profile is of the XLA-compiled step; give --xla")
    if problems:
        raise ConfigError("; ".join(problems))

    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    with benchmark_run(config, FLAGS.data, "charrnn-profile-") as (run, work):
        if run.config.xla is None:  # --xla auto: profile the compiled step
            import dataclasses
            run = dataclasses.replace(run, config=dataclasses.replace(run.config, xla=True))
        if FLAGS.trace:
            untraced_ms, path = None, FLAGS.trace
        else:
            untraced_ms, path = trace_steps(run, FLAGS.warmup, FLAGS.steps, FLAGS.logdir or os.path.join(work, "trace"))
        space = xplane_pb2.XSpace()
        with open(path, "rb") as f:
            space.ParseFromString(f.read())
        report = {"cpu": cpu_model(),
                  "config": {k: getattr(run.config, k) for k in
                             ("hidden_size", "num_layers", "batch_size", "seq_length", "rnn_impl", "xla", "dropout")},
                  "untraced_ms_per_step": untraced_ms and round(untraced_ms, 2), **profile(space, run.config)}
        print_report(report)
        print(json.dumps(report))


if __name__ == "__main__":
    run_command(main, "bench/profile_step.py")
