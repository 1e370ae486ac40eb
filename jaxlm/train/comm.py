"""What a compiled step communicates: each collective, its bytes per device, and the minimum.

Backs the communication lines of `--dry_run` and `benchmarks/comm.py`.

`collectives()` reads the optimized HLO text of a compiled step and lists every
all-gather, reduce-scatter, all-reduce, all-to-all and collective-permute over
a group of more than one device, with the bytes each device sends under the
usual ring algorithms (NCCL's "bus bytes"): for a group of g devices and an
array of S bytes (the gathered or reduced whole), an all-gather or a
reduce-scatter moves S (g-1)/g, an all-reduce 2 S (g-1)/g, an all-to-all
S (g-1)/g, a collective-permute S. The phase is read from the op's name:
`transpose(` is the backward pass, `jvp(` the forward one, the rest the
update. A collective inside a while loop's body (a scan over layers or over
loss chunks, or the TPU compiler's windowed all-gather, a ring of
collective-permutes) counts once per iteration where the trip count is known:
XLA's `known_trip_count`, or a condition `i < N` on a counter with constant start,
step and N.

`minimum()` is the analytic least a step must move for its mesh (D data, F
fsdp, T tensor ways; P parameters, b the bytes of a gradient element, in the
parameters' dtype as the optimizer takes them, and p of a gathered parameter,
in the compute dtype the matmuls take; B the per-device batch in tokens, d the
model width, L layers). XLA's TPU compiler reduces a bf16 matmul's gradient in
bf16, below this count:
- gradients: a reduce-scatter over F of P/T elements, then an all-reduce over
  D of the P/(F T) shard: b P/T ((F-1)/F + 2 (D-1)/(D F));
- FSDP parameters: an all-gather over F for the forward pass and another for
  the backward (a gathered layer is not kept between the two):
  2 p P/T (F-1)/F;
- with M microbatches (train.microbatches) the reduce-scatter and the two
  gathers come once per microbatch, the all-reduce over D once;
- tensor parallelism: two activation all-reduces per layer forward (after
  attention and after the MLP) and two backward: 4 L · 2 (T-1)/T · B d a, with
  a the bytes of an activation. An encoder-decoder (L_e encoder layers, S source
  tokens per device, L decoder layers) adds its encoder's 4 L_e S rows, the
  decoder's cross-attention (2 L B) and the encoder output's gradient (S rows, once).
"""

from __future__ import annotations

import dataclasses
import math
import re

KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_OP = re.compile(r"=\s*(?P<shape>.*?)\s(?P<kind>" + "|".join(KINDS) + r")(?:-start)?\((?P<rest>.*)$")
_ARRAY = re.compile(r"\b(pred|[suf]\d+|bf16|f8e\w+)\[([\d,]*)\]")


@dataclasses.dataclass(frozen=True)
class Collective:
  """One collective of a compiled step."""
  kind: str
  group: int          # devices that take part together
  array_bytes: int    # bytes of the whole gathered / reduced array (a tuple's sum)
  phase: str          # forward | backward | update
  op_name: str        # the jax operation it came from
  shape: str

  @property
  def moved_bytes(self) -> float:
    """Bytes one device sends under the ring algorithm of its kind."""
    share = (self.group - 1) / self.group
    return {"all-reduce": 2 * share, "collective-permute": 1.0}.get(self.kind, share) * \
        self.array_bytes


_ITEMSIZE = {"pred": 1, "bf16": 2}


def _itemsize(dtype: str) -> int:
  """Bytes of one element of an HLO type: pred, bf16, f8*, or the bits its name gives."""
  if dtype in _ITEMSIZE:
    return _ITEMSIZE[dtype]
  return 1 if dtype.startswith("f8") else int(re.sub(r"\D", "", dtype)) // 8


def _array_bytes(shape: str) -> list[int]:
  return [math.prod(int(d) for d in dims.split(",") if d) * _itemsize(dtype)
          for dtype, dims in _ARRAY.findall(shape)]


def _group(rest: str, n_devices: int) -> int:
  """The size of a collective's device groups, from any of XLA's replica_groups forms."""
  if m := re.search(r"replica_groups=mesh\[([^\]]*)\][^{]*\{([^}]*)\}", rest):
    sizes = dict(re.findall(r"'(\w+)'=(\d+)", m.group(1)))
    return math.prod(int(sizes[a]) for a in re.findall(r"'(\w+)'", m.group(2)))
  if m := re.search(r"replica_groups=\[([\d,]+)\]<=", rest):
    return int(m.group(1).split(",")[-1])
  if m := re.search(r"replica_groups=\{\{([\d,]*)\}", rest):
    return len(m.group(1).split(","))
  if m := re.search(r"source_target_pairs=\{", rest):
    return 2
  return n_devices  # replica_groups={}: every device


_HEADER = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$")
_CALLEE = re.compile(r"\b(calls|to_apply|body|condition|true_computation|false_computation)="
                     r"%?([\w.\-]+)")


def _trip_counts(lines: list[str]) -> dict[str, int]:
  """{loop body: iterations} for while loops whose condition is `i < N` with i a tuple
  element counted from a constant by a constant step (N, start and step read from the
  HLO). XLA's TPU pipeline leaves no known_trip_count on its loops: the layer scan, and
  the windowed all-gathers of FSDP (a ring of collective-permutes, two steps a turn)."""
  body_of, consts, gte, tuples, adds, roots, results, owner = {}, {}, {}, {}, {}, {}, {}, None
  for line in lines:
    if m := _HEADER.match(line):
      owner = m.group(1)
      continue
    name = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = ", line)
    if not name or owner is None:
      continue
    name = name.group(1)
    if c := re.search(r"\] ?\S* constant\((-?\d+)\)", line):
      consts[name] = int(c.group(1))
    elif g := re.search(r"get-tuple-element\(%[\w.\-]+\), index=(\d+)", line):
      gte[name] = int(g.group(1))
    elif t := re.search(r" tuple\((.*)\)", line):
      operands = re.sub(r"/\*.*?\*/", "", t.group(1)).split(",")  # drop /*index=5*/
      tuples[name] = [a.strip().lstrip("%") for a in operands]
      if line.lstrip().startswith("ROOT"):
        results[owner] = tuples[name]
    elif a := re.search(r" add\(%([\w.\-]+), %([\w.\-]+)\)", line):
      adds[name] = a.groups()
    if "ROOT" in line and "direction=LT" in line:
      args = re.search(r"compare\(%([\w.\-]+), %([\w.\-]+)\)", line)
      if args:
        roots[owner] = args.groups()
    if w := re.search(r" while\(%([\w.\-]+)\), condition=%?([\w.\-]+), body=%?([\w.\-]+)",
                      line):
      body_of[w.group(3)] = (w.group(1), w.group(2))
  out = {}
  for body, (operand, cond) in body_of.items():
    if cond not in roots or roots[cond][0] not in gte or roots[cond][1] not in consts:
      continue
    k, bound = gte[roots[cond][0]], consts[roots[cond][1]]
    init = consts.get((tuples.get(operand) or [""] * (k + 1))[k], 0)
    a, b = adds.get((results.get(body) or [""] * (k + 1))[k], ("", ""))  # the next counter
    step = consts[b] if gte.get(a) == k and b in consts else 1
    if step > 0:
      out[body] = max(-(-(bound - init) // step), 1)
  return out


def _multiplicities(lines: list[str]) -> dict[str, int]:
  """How many times each computation runs per call of the entry computation."""
  owner, edges, entry = None, {}, None
  trips = _trip_counts(lines)
  for line in lines:
    if m := _HEADER.match(line):
      owner = m.group(1)
      entry = owner if line.startswith("ENTRY") else entry
      edges.setdefault(owner, [])
      continue
    if owner is None:
      continue
    trip = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
    for key, callee in _CALLEE.findall(line):
      times = int(trip.group(1)) if trip else trips.get(callee, 1)
      edges[owner].append((callee, times if key == "body" else 1))
    for group in re.findall(r"branch_computations=\{([^}]*)\}", line):
      edges[owner] += [(b.strip().lstrip("%"), 1) for b in group.split(",") if b.strip()]
  counts: dict[str, int] = {}

  def visit(name: str, times: int, depth: int = 0) -> None:
    counts[name] = counts.get(name, 0) + times
    if depth < 64:
      for callee, k in edges.get(name, []):
        visit(callee, times * k, depth + 1)

  if entry is not None:
    visit(entry, 1)
  return counts


def collectives(hlo_text: str, n_devices: int) -> list[Collective]:
  """Every collective over more than one device in a compiled module's HLO text, once per
  execution (a loop body's once per iteration)."""
  lines = hlo_text.splitlines()
  runs = _multiplicities(lines)
  out, owner = [], None
  for line in lines:
    if h := _HEADER.match(line):
      owner = h.group(1)
      continue
    m = _OP.search(line)
    if not m:
      continue
    sizes = _array_bytes(m.group("shape"))
    kind, rest = m.group("kind"), m.group("rest")
    group = _group(rest, n_devices)
    if group < 2 or not sizes:
      continue
    if kind == "reduce-scatter":  # the result is one shard of the reduced array
      total = sum(sizes) * group
    elif "-start(" in line and kind == "all-gather" and len(sizes) > 1:
      total = max(sizes)  # async form: (operand, result)
    elif "-start(" in line and kind == "collective-permute" and len(sizes) > 1:
      total = sizes[0]  # async form: (operand, result, context...)
    else:
      total = sum(sizes)
    op_name = next(iter(re.findall(r'op_name="([^"]*)"', rest)), "")
    phase = ("backward" if "transpose(" in op_name else
             "forward" if "jvp(" in op_name else "update")
    c = Collective(kind, group, total, phase, op_name, m.group("shape")[:80])
    out += [c] * max(runs.get(owner, 1), 1)
  return out


def by_kind(items: list[Collective]) -> dict[str, dict]:
  """{kind: {"count", "bytes"}} with bytes moved per device, kinds that occur only."""
  out = {}
  for c in items:
    row = out.setdefault(c.kind, {"count": 0, "bytes": 0.0})
    row["count"] += 1
    row["bytes"] += c.moved_bytes
  return out


def minimum(params: int, mesh: dict, *, tokens_per_device: int, d_model: int, n_layers: int,
            grad_bytes: int = 4, param_bytes: int = 4, act_bytes: int = 4,
            encoder_layers: int = 0, source_tokens_per_device: int = 0,
            microbatches: int = 1) -> dict[str, float]:
  """The least bytes per device a train step moves on this mesh (module docstring).
  encoder_layers > 0: an encoder-decoder, n_layers its decoder's. With M microbatches
  FSDP's gathers and reduce-scatter come once per microbatch (no device holds a whole
  layer or gradient between them), the all-reduce over data once."""
  M = microbatches
  D, F, T = mesh.get("data", 1), mesh.get("fsdp", 1), mesh.get("tensor", 1)
  per_t = params / T
  B, S = tokens_per_device, source_tokens_per_device
  # Activation all-reduces, each of (tokens, d_model), forward and backward: after the
  # attention and the MLP of every layer, after the decoder's cross-attention, and the
  # gradient of the encoder's output, which every decoder layer reads (summed, then once).
  reduced_rows = 4 * n_layers * B + (4 * encoder_layers * S + 2 * n_layers * B + S
                                     if encoder_layers else 0)
  return {
      "gradients": grad_bytes * per_t * (M * (F - 1) / F + 2 * (D - 1) / (D * F)),
      "fsdp parameters": 2 * M * param_bytes * per_t * (F - 1) / F,
      "tensor activations": 2 * (T - 1) / T * reduced_rows * d_model * act_bytes,
  }


def report(items: list[Collective], least: dict[str, float], largest: int = 5) -> list[str]:
  """Lines for --dry_run: bytes per device by kind and phase, against the minimum, and
  the `largest` collectives with the arrays they move and the operations they serve."""
  total = sum(c.moved_bytes for c in items)
  floor = sum(least.values())
  lines = [f"communication   {total / 2**20:,.2f} MiB per device per step in {len(items)} "
           f"collectives; analytic minimum {floor / 2**20:,.2f} MiB"
           + (f" (measured / minimum {total / floor:.2f})" if floor else "")]
  for kind, row in sorted(by_kind(items).items(), key=lambda kv: -kv[1]["bytes"]):
    phases = {}
    for c in items:
      if c.kind == kind:
        phases[c.phase] = phases.get(c.phase, 0.0) + c.moved_bytes
    split = ", ".join(f"{p} {b / 2**20:,.2f}" for p, b in sorted(phases.items()))
    lines.append(f"  {kind:<18} {row['count']:>4} x, {row['bytes'] / 2**20:>10,.2f} MiB ({split})")
  lines += [f"  minimum: {name:<19} {b / 2**20:>10,.2f} MiB" for name, b in least.items() if b]
  for c in sorted(items, key=lambda c: -c.moved_bytes)[:largest]:
    lines.append(f"  largest: {c.kind} of {c.group}, {c.moved_bytes / 2**20:,.2f} MiB, {c.phase}, "
                 f"{c.shape} from {c.op_name.removeprefix('jit(step)/')[-60:]}")
  return lines
