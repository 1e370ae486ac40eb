"""The collectives of a compiled step, their bytes, and the analytic minimum (jaxlm/train/comm.py)."""

import re

import numpy as np
import pytest

from jaxlm import config as config_lib
from jaxlm import params as params_lib
from jaxlm import registry, sharding
from jaxlm.train import comm, plan
from jaxlm.train.step import Trainer
from tests.helpers import tiny_variant

HLO = """\
%body.3 (p: (s32[], f32[64])) -> (s32[], f32[64]) {
  %ar.in = f32[64]{0} all-reduce(f32[64]{0} %x), channel_id=9, replica_groups=[2,4]<=[8], to_apply=%add, metadata={op_name="jit(step)/transpose(jvp())/while/body/dot_general"}
}

%cond.4 (p: (s32[], f32[64])) -> pred[] {
  ROOT %lt = pred[] compare(s32[] %i, s32[] %n), direction=LT
}

ENTRY %main.5 (a: f32[8,16]) -> f32[8,16] {
  %ag = bf16[8,16]{1,0} all-gather(bf16[2,16]{1,0} %a), channel_id=1, replica_groups=mesh['axis_0'=2,'axis_1'=4] {'axis_1'}, dimensions={0}, metadata={op_name="jit(step)/jvp()/dot_general"}
  %ar = (f32[100]{0}, f32[28]{0}) all-reduce(f32[100]{0} %g, f32[28]{0} %h), replica_groups={{0,1},{2,3},{4,5},{6,7}}, to_apply=%add, metadata={op_name="jit(step)/transpose(jvp())/reduce_sum"}
  %rs = f32[4]{0} reduce-scatter(f32[16]{0} %k), replica_groups={{0,1,2,3},{4,5,6,7}}, dimensions={0}
  %one = f32[4]{0} all-reduce(f32[4]{0} %z), replica_groups={{0},{1},{2},{3},{4},{5},{6},{7}}, to_apply=%add
  %w = (s32[], f32[64]) while((s32[], f32[64]) %t), condition=%cond.4, body=%body.3, backend_config={"known_trip_count":{"n":"3"}}
}
"""


def test_collectives_are_read_from_every_replica_group_form_and_loop():
  items = comm.collectives(HLO, n_devices=8)
  kinds = sorted((c.kind, c.group, c.array_bytes, c.phase) for c in items)
  assert kinds == [("all-gather", 4, 256, "forward"),        # bf16[8,16], groups over axis_1
                   ("all-reduce", 2, 512, "backward"),       # a tuple of 128 floats
                   ("all-reduce", 4, 256, "backward"),       # in the loop body: 3 times
                   ("all-reduce", 4, 256, "backward"),
                   ("all-reduce", 4, 256, "backward"),
                   ("reduce-scatter", 4, 64, "update")]      # the whole 16 floats reduced
  moved = comm.by_kind(items)  # ring bytes: (g-1)/g of the array, twice for an all-reduce
  assert moved["all-gather"] == {"count": 1, "bytes": 256 * 3 / 4}
  assert moved["all-reduce"] == {"count": 4, "bytes": 2 * 512 / 2 + 3 * 2 * 256 * 3 / 4}
  assert moved["reduce-scatter"]["bytes"] == 64 * 3 / 4


# XLA's TPU form: no known_trip_count; a counter from 0 by 2 while < 8 (4 turns), and a
# ring step as an async collective-permute whose start names (operand, result, contexts).
TPU_HLO = """\
%ring_body (p: (bf16[2,8], u32[])) -> (bf16[2,8], u32[]) {
  %p = (bf16[2,8], u32[]) parameter(0)
  %i = u32[] get-tuple-element(%p), index=1
  %two = u32[]{:T(128)} constant(2)
  %next = u32[]{:T(128)} add(%i, %two)
  %cp = (bf16[2,8]{1,0}, bf16[2,8]{1,0}, u32[]{:S(2)}, u32[]{:S(2)}) collective-permute-start(%x), channel_id=3, source_target_pairs={{0,1},{1,2},{2,3},{3,0}}, metadata={op_name="jit(step)/jvp()/while/body/dot_general"}
  ROOT %out = (bf16[2,8], u32[]) tuple(%y, %next)
}

%ring_cond (p: (bf16[2,8], u32[])) -> pred[] {
  %eight = u32[]{:T(128)} constant(8)
  %p = (bf16[2,8], u32[]) parameter(0)
  %i = u32[] get-tuple-element(%p), index=1
  ROOT %lt = pred[]{:T(512)} compare(%i, %eight), direction=LT
}

ENTRY %main (a: bf16[2,8]) -> bf16[2,8] {
  %zero = u32[]{:T(128)} constant(0)
  %t = (bf16[2,8], u32[]) tuple(%a, %zero)
  %w = (bf16[2,8], u32[]) while(%t), condition=%ring_cond, body=%ring_body
}
"""


def test_loops_without_a_known_trip_count_count_their_turns():
  items = comm.collectives(TPU_HLO, n_devices=4)
  assert [(c.kind, c.group, c.array_bytes) for c in items] == [("collective-permute", 2, 32)] * 4


def test_minimum_of_each_parallelism():
  P, kw = 1000, dict(tokens_per_device=64, d_model=8, n_layers=2)
  assert comm.minimum(P, {"data": 4}, **kw) == {
      "gradients": 4 * P * 2 * 3 / 4, "fsdp parameters": 0.0, "tensor activations": 0.0}
  fsdp = comm.minimum(P, {"fsdp": 4}, **kw)
  # gathered forward and backward, in the compute dtype (param_bytes)
  assert fsdp["gradients"] == 4 * P * 3 / 4 and fsdp["fsdp parameters"] == 2 * 4 * P * 3 / 4
  # 3 microbatches: FSDP's gathers and reduce-scatter each time, the data all-reduce once
  parts = comm.minimum(P, {"data": 2, "fsdp": 4}, **kw, microbatches=3)
  assert parts["gradients"] == 4 * P * (3 * 3 / 4 + 2 * 1 / 8)
  assert parts["fsdp parameters"] == 3 * 2 * 4 * P * 3 / 4
  assert comm.minimum(P, {"tensor": 2}, **kw)["tensor activations"] == 4 * 2 * 2 * 0.5 * 64 * 8 * 4
  # An encoder-decoder (3 encoder layers over 32 source tokens per device): the encoder's
  # 4 all-reduces per layer, the decoder's cross-attention (2 per layer) and the memory's
  # gradient (once), each of (tokens, d) and 2 (T-1)/T of it per device.
  seq2seq = comm.minimum(P, {"tensor": 2}, **kw, encoder_layers=3, source_tokens_per_device=32)
  rows = 4 * 2 * 64 + 4 * 3 * 32 + 2 * 2 * 64 + 32
  assert seq2seq["tensor activations"] == 2 * 0.5 * rows * 8 * 4


def _compiled(name, mesh, **changes):
  c = config_lib.replace(tiny_variant(registry.experiment(name)), **{
      "mesh.data": mesh[0], "mesh.fsdp": mesh[1], "mesh.tensor": mesh[2],
      "train.batch_size": 16, **changes})
  trainer = Trainer(c, sharding.make_mesh(c.mesh), np.ones(c.model.vocab_size, np.int32))
  compiled = plan.compile_step(trainer)
  return plan.communication(compiled, trainer, params_lib.param_count(trainer.specs)["total"])


def test_data_parallel_step_moves_its_minimum_and_chunked_loss_rows_stay_put():
  items, least = _compiled("llama_small", (8, 1, 1))
  assert {c.kind for c in items} == {"all-reduce"}  # the gradients', and a few scalars
  assert sum(c.moved_bytes for c in items) == pytest.approx(sum(least.values()), rel=0.02)
  # With the loss computed in chunks, each chunk takes rows from every device
  # (strided), so no row is gathered anywhere. (The output weight's gradient is then
  # all-reduced once per chunk on CPU: docs/sharding.md.)
  items, _ = _compiled("llama_small", (8, 1, 1), **{"train.loss_chunk": 64})
  assert {c.kind for c in items} == {"all-reduce"}


def test_fsdp_gathers_the_output_weight_instead_of_reducing_logits():
  items, least = _compiled("llama_small", (1, 8, 1))
  vocab = registry.experiment("llama_small").model.vocab_size
  assert not [c for c in items if c.kind == "all-reduce" and c.phase == "forward"
              and f",{vocab}]" in c.shape.replace(" ", "")]
  gathered = sum(c.moved_bytes for c in items if c.kind == "all-gather")
  assert gathered <= 1.1 * least["fsdp parameters"]
  lines = comm.report(items, least)
  assert lines[0].startswith("communication ") and "measured / minimum" in lines[0]


@pytest.mark.parametrize("name,mesh", [("gpt2_small", (8, 1, 1)), ("gpt2_small", (2, 4, 1)),
                                       ("gpt2_small", (1, 4, 2)), ("llama_small", (2, 2, 2))])
def test_step_moves_at_most_a_tenth_over_its_minimum(name, mesh):
  # A tied table's two gradients were reduced apart (2x its bytes with data parallelism),
  # and on CPU gradients under tensor parallelism were all-reduced whole, then sliced
  # (transformer.device_tables, sharding.device_copies; docs/sharding.md).
  items, least = _compiled(name, mesh)
  assert sum(c.moved_bytes for c in items) <= 1.1 * sum(least.values())


def test_fsdp_layer_gradients_are_reduce_scattered_on_cpu():
  # XLA's CPU pipeline all-reduced them whole and sliced them (2x the bytes); sharding.Split
  # writes the reduce-scatter out. The encoder-decoder's 257-token vocabulary leaves the
  # layers' gradients most of the bytes (0.97x the minimum before: all-reduces; now 0.67x).
  items, least = _compiled("shakespeare_restore", (1, 8, 1))
  backward_all_reduce = sum(c.moved_bytes for c in items
                            if c.kind == "all-reduce" and c.phase == "backward")
  assert backward_all_reduce <= 0.05 * least["gradients"]
  scattered = sum(c.moved_bytes for c in items if c.kind == "reduce-scatter")
  assert scattered == pytest.approx(least["gradients"], rel=0.1)


@pytest.mark.parametrize("mesh", [(8, 1, 1), (2, 4, 1), (2, 1, 4)],
                         ids=["data8", "data2_fsdp4", "data2_tensor4"])
def test_accumulated_gradients_are_reduced_over_data_once(mesh):
  # Under automatic sharding each microbatch's gradient was all-reduced over "data" inside
  # the loop (twice the all-reduced bytes with 2 microbatches: 2.00x / 0.85x / 2.15x the
  # minimum); each data group now accumulates its own and the sum is all-reduced once
  # (accumulated_grad's local form), and the step stays as near its minimum as without
  # microbatches (1.00x / 0.54x / 1.30x; 2x1x4's tensor all-reduces are promoted to f32).
  reduced, ratio = {}, {}
  for k in (1, 2):
    items, least = _compiled("llama_small", mesh, **{"train.microbatches": k,
                                                     "train.batch_size": 32})
    reduced[k] = sum(c.moved_bytes for c in items if c.kind == "all-reduce")
    ratio[k] = sum(c.moved_bytes for c in items) / sum(least.values())
  assert reduced[2] <= 1.05 * reduced[1]
  assert ratio[2] <= max(1.1, 1.05 * ratio[1])


def test_grouped_queries_share_one_input_gradient_reduction():
  # Under tensor parallelism each layer's backward pass all-reduces two (tokens, d) input
  # gradients, the attention's and the MLP's (plus one for the output projection). GQA's
  # queries, of another shape than its keys and values, were reduced apart (three per
  # layer); layers.dense_shared now runs them as one product of per-device head blocks.
  c = {"model.n_heads": 8, "model.n_kv_heads": 2, "model.d_model": 64,
       "model.compute_dtype": "float32"}
  items, _ = _compiled("llama_small", (1, 4, 2), **c)
  rows = 16 * 32 // 4  # batch 16 x length 32 over 4 fsdp devices
  reduced = [a for x in items if x.kind == "all-reduce" and x.phase == "backward"
             and x.group == 2 for a in re.findall(r"f32\[(\d+,\d+)\]", x.shape)]
  assert reduced.count(f"{rows},64") == 2 * 2 + 1  # 2 layers
