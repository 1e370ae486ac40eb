"""Decoder-only Transformer (GPT-2 / LLaMA family) as pure functions of params.

Dimension legend (docs/architecture.md): B batch, T length, S key length, D
model width, N query heads, K kv heads, H head dim, F MLP width, V vocab,
L layers.

`param_specs(config)` is the single description of the parameters; `init`,
the shardings, the weight-decay mask and `param_count` all derive from it
(jaxlm.params).
The layer stack runs over params stacked on a leading L axis (layer_stack).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from jaxlm import params as params_lib
from jaxlm import sharding
from jaxlm.config import ModelConfig
from jaxlm.models import layers
from jaxlm.models.attention import dot_product_attention
from jaxlm.params import ParamSpec, normal


# What a layer keeps for the backward pass: "full" keeps only its input (and
# recomputes the rest), "dots" keeps matmul outputs and recomputes elementwise ops.
REMAT_POLICIES = {"full": jax.checkpoint_policies.nothing_saveable,
                  "dots": jax.checkpoint_policies.save_from_both_policies(
                      jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
                      jax.checkpoint_policies.save_only_these_names(layers.MATMUL_NAME))}


def param_specs(config: ModelConfig) -> dict:
  """The tree of ParamSpec describing every parameter of the model."""
  c = config
  D, N, K, H, F, V, L = (c.d_model, c.n_heads, c.kv_heads, c.head_dim, c.ff_dim, c.vocab_size,
                         c.n_layers)
  # μP (Yang et al. 2022, table 3): hidden matrices, whose fan-in and fan-out both
  # grow with width, draw with std ∝ 1/sqrt(fan_in) and take Adam steps ∝ 1/fan_in,
  # both relative to the base width (width_mult is 1 there, and under "standard").
  # Embeddings, norms and biases keep width-independent init and lr; the readout
  # is scaled in unembed().
  std = c.init_std / math.sqrt(c.width_mult)
  hidden_lr = 1.0 / c.width_mult
  out_std = std / math.sqrt(2 * L)  # GPT-2: scale residual projections by depth
  lead, lead_axes = (L,), ("layers",)

  def matrix(shape, axes, init_std):
    return ParamSpec(shape, lead_axes + axes, normal(init_std), decay=True, lr_scale=hidden_lr)

  attn = {
      "wq": matrix((L, D, N, H), ("embed", "heads", "head_dim"), std),
      "wk": matrix((L, D, K, H), ("embed", "kv_heads", "head_dim"), std),
      "wv": matrix((L, D, K, H), ("embed", "kv_heads", "head_dim"), std),
      "wo": matrix((L, N, H, D), ("heads", "head_dim", "embed"), out_std),
  }
  if c.qk_norm:  # RMSNorm scales of each head's queries and keys (shared by the heads)
    attn["q_norm"] = {"scale": ParamSpec((L, H), lead_axes + ("head_dim",), params_lib.ones)}
    attn["k_norm"] = {"scale": ParamSpec((L, H), lead_axes + ("head_dim",), params_lib.ones)}
  if c.use_bias:
    attn["bq"] = ParamSpec((L, N, H), lead_axes + ("heads", "head_dim"), params_lib.zeros)
    attn["bk"] = ParamSpec((L, K, H), lead_axes + ("kv_heads", "head_dim"), params_lib.zeros)
    attn["bv"] = ParamSpec((L, K, H), lead_axes + ("kv_heads", "head_dim"), params_lib.zeros)
    attn["bo"] = ParamSpec((L, D), lead_axes + ("embed",), params_lib.zeros)
  specs = {
      "embed": ParamSpec((V, D), ("vocab", "embed"), normal(c.init_std), embedding=True),
      "layers": {
          "attn_norm": layers.norm_specs(c.norm, D, lead, lead_axes),
          "attn": attn,
          "mlp_norm": layers.norm_specs(c.norm, D, lead, lead_axes),
          "mlp": layers.mlp_specs(c.mlp, D, F, c.use_bias, std, out_std, lead, lead_axes,
                                  hidden_lr),
      },
      "final_norm": layers.norm_specs(c.norm, D),
  }
  if c.positions == "learned":
    specs["pos_embed"] = ParamSpec((c.max_seq_len, D), ("positions", "embed"),
                                   normal(c.init_std), embedding=True)
  if not c.tie_embeddings:
    # μP's readout in table 8's form: init and lr width-independent, the logits
    # multiplied by 1/width_mult (unembed()), like a tied embedding.
    specs["unembed"] = ParamSpec((D, V), ("embed", "vocab"), normal(c.init_std), decay=True,
                                 embedding=True)
  return specs


def init(config: ModelConfig, rng: jax.Array) -> dict:
  """Draws initial params (a nested dict of arrays) from the spec tree."""
  return params_lib.init_params(param_specs(config), rng, jnp.dtype(config.param_dtype))


def param_count(config: ModelConfig) -> dict[str, int]:
  """Total and non-embedding parameter counts, from the config alone."""
  return params_lib.param_count(param_specs(config))


def default_positions(tokens_BT: jax.Array) -> jax.Array:
  """Positions 0..T-1 in every row: each row one document."""
  return jnp.broadcast_to(jnp.arange(tokens_BT.shape[1], dtype=jnp.int32), tokens_BT.shape[:2])


def self_attention(segment_ids_BT, config: ModelConfig, causal: bool = True):
  """The training-time `attend`: attention within documents (causal, or not for an
  encoder); its aux output is the largest attention score (None where the attention
  implementation does not give it), which costs nothing when unused."""
  return functools.partial(dot_product_attention, is_causal=causal, segment_ids=segment_ids_BT,
                           implementation=config.attention, scale=config.attention_scale,
                           return_max_logit=True)


# An attention sublayer in three pieces, so that a key/value cache (models/decode.py)
# and cross-attention (models/encoder_decoder.py) reuse them instead of copying them.
def project_queries(p: dict, x_BTD: jax.Array, positions_BT: jax.Array,
                    config: ModelConfig, q_BTNH=None) -> jax.Array:
  """Queries (B, T, N, H) of attention params p: projection (or the given product
  q_BTNH), bias, QK-norm, rotary."""
  if q_BTNH is None:
    q_BTNH = layers.dense(x_BTD, p["wq"])
  if "bq" in p:
    q_BTNH = q_BTNH + p["bq"].astype(x_BTD.dtype)
  if "q_norm" in p:  # model.qk_norm (Dehghani et al. 2023): bounded attention logits
    q_BTNH = layers.norm(p["q_norm"], q_BTNH, "rmsnorm", config.norm_eps)
  if config.positions == "rope":
    q_BTNH = layers.rope(q_BTNH, positions_BT, config.rope_theta)
  return sharding.constrain(q_BTNH, ("batch", "length", "act_heads", "head_dim"))


def project_keys_values(p: dict, x_BSD: jax.Array, positions_BS: jax.Array,
                        config: ModelConfig, kv=None) -> tuple[jax.Array, jax.Array]:
  """Keys (rotated by position) and values (B, S, K, H) of attention params p (kv: the
  two products, where already computed)."""
  k_BSKH, v_BSKH = kv if kv is not None else (layers.dense(x_BSD, p["wk"]),
                                              layers.dense(x_BSD, p["wv"]))
  if "bk" in p:
    k_BSKH, v_BSKH = k_BSKH + p["bk"].astype(x_BSD.dtype), v_BSKH + p["bv"].astype(x_BSD.dtype)
  if "k_norm" in p:
    k_BSKH = layers.norm(p["k_norm"], k_BSKH, "rmsnorm", config.norm_eps)
  if config.positions == "rope":
    k_BSKH = layers.rope(k_BSKH, positions_BS, config.rope_theta)
  return sharding.constrain(k_BSKH, ("batch", "length", "act_kv_heads", "head_dim")), v_BSKH


def project_out(p: dict, o_BTNH: jax.Array) -> jax.Array:
  """The output projection (B, T, D) of attention params p."""
  out_BTD = layers.dense(o_BTNH, p["wo"], n_in=2)
  return out_BTD + p["bo"].astype(out_BTD.dtype) if "bo" in p else out_BTD


def attention_sublayer(p, x_BTD, positions_BT, config, attend):
  """Q/K/V projections (+ biases, rotary), `attend(q, k, v) -> (o, aux)`, output
  projection: (out_BTD, aux)."""
  q_BTNH, k_BTKH, v_BTKH = layers.dense_shared(x_BTD, [p["wq"], p["wk"], p["wv"]])
  q_BTNH = project_queries(p, x_BTD, positions_BT, config, q_BTNH)
  k_BTKH, v_BTKH = project_keys_values(p, x_BTD, positions_BT, config, (k_BTKH, v_BTKH))
  o_BTNH, aux = attend(q_BTNH, k_BTKH, v_BTKH)
  return project_out(p, o_BTNH), aux


def block(x_BTD, p, positions_BT, config, attend):
  """One pre-norm layer with `attend(q, k, v) -> (o, aux)`; returns (x_BTD, aux)."""
  h_BTD = layers.norm(p["attn_norm"], x_BTD, config.norm, config.norm_eps)
  a_BTD, aux = attention_sublayer(p["attn"], h_BTD, positions_BT, config, attend)
  return mlp_sublayer(p, x_BTD + a_BTD, config), aux


def mlp_sublayer(p, x_BTD, config):
  """The residual MLP sublayer of a layer's params p: x + mlp(norm(x)), constrained."""
  h_BTD = layers.norm(p["mlp_norm"], x_BTD, config.norm, config.norm_eps)
  x_BTD = x_BTD + layers.mlp(p["mlp"], h_BTD, config.mlp)
  return sharding.constrain(x_BTD, ("batch", "length", "act_embed"))


def embed(params: dict, tokens_BT: jax.Array, positions_BT: jax.Array,
          config: ModelConfig) -> jax.Array:
  """Token (and learned position) embeddings (B, T, D) in the compute dtype."""
  dtype = jnp.dtype(config.compute_dtype)
  x_BTD = _lookup(params["embed"], tokens_BT, "vocab").astype(dtype)
  if config.positions == "learned":
    x_BTD = x_BTD + _lookup(params["pos_embed"], positions_BT, "positions").astype(dtype)
  return sharding.constrain(x_BTD, ("batch", "length", "act_embed"))


def _lookup(table, ids_BT: jax.Array, rows_axis: str) -> jax.Array:
  """Rows of a (R, D) table, or of each device's copy of it (n, R, D) (device_tables)."""
  if table.ndim == 3:
    return sharding.per_device(lambda t_RD, ids_bT: jnp.take(t_RD, ids_bT, axis=0), table, ids_BT)
  # A table whole along D before the lookup (FSDP's all-gather of a parameter): a gather
  # from a table split over D makes XLA reshard its (B, T, D) gradient from the batch's
  # sharding to the table's through a full replication. The gradient is reduce-scattered
  # back (sharding.gathered), except under tensor parallelism, where the scatter-add's
  # reduce-scatter brings that resharding back on mesh (2, 2, 2) (tests/test_sharding.py)
  # and a plain constraint all-reduces the gradient whole instead. A step that
  # differentiates the tables gives each device a copy instead (device_tables).
  if sharding.axis_size("tensor") == 1:
    table = sharding.gathered(table, (rows_axis, "embed"))
  else:
    table = sharding.constrain(table, (rows_axis, "act_embed"))
  return jnp.take(table, ids_BT, axis=0)


def device_tables(params: dict, config: ModelConfig, shape_BT: tuple[int, int],
                  output: bool = True) -> dict:
  """params with a tied embedding table and the learned position table as one copy per
  device of the batch's mesh axes (sharding.device_copies), for a loss over a (rows, length) batch
  that is differentiated: each device looks its own rows up (and projects them) in its
  own copy, so a tied table's two gradients are summed on the device and reduced across
  devices once, and no lookup's gradient reshards activations. embed(), next_token_nll()
  and logits_rms() take either form; params unchanged where the batch is not split.

  An untied output weight is copied too: its gradient is then reduce-scattered where
  XLA's CPU pipeline all-reduces it whole. An untied token table is copied only where
  XLA cannot move its lookup's gradient well: under tensor parallelism (all-reduced
  whole) and with both data and FSDP axes (resharded through a full replication, an
  all-gather of every device's activations). With FSDP alone, XLA sends the (B, T, D)
  gradient to the table's shards (an all-to-all), less than a reduced (V, D) table
  while the tokens per device are fewer than the vocabulary.

  On TPU (XLA's TPU compiler, measured on a v5p-16's 8 chips at the experiments' own
  sizes; docs/sharding.md) the tied and position tables are copied unless FSDP alone
  splits the batch: there its windowed einsums move the gradients best (gpt2_small with
  fsdp 8: 0.96x the minimum without the copies, 1.65x with them), while with data or
  tensor axes one reduction of the summed table beats its two (gpt2_small on 2x2x2,
  1x4x2, 2x4x1: 1.13 / 1.15 / 1.15 -> 0.99 / 1.10 / 1.03; at 8x1x1 680 -> 555 MiB a
  step). An untied token table is copied there under tensor parallelism only (llama_small
  2x2x2 1.02 -> 0.99, 2x4x1 0.96 -> 1.03 if copied), and an untied output weight never:
  the TPU compiler reduces a bf16 matmul's gradient in bfloat16, the copy's in float32.
  output=False: a loss without the output projection (a classifier's) treats a tied table
  as an untied token table (one use, nothing to sum) and leaves an untied output weight
  alone.

  The copies are gathered in the compute dtype (each use casts the table to it anyway)
  and cast back, so that their gradients are summed and reduced in the parameters' dtype:
  a bfloat16 model's table moves half the bytes.

  Under tensor parallelism the token table is split along the vocabulary (Megatron's
  vocabulary-parallel embedding): each device looks up its part and the (B, T, D) result
  is all-reduced over "tensor". Where the vocabulary is at most the tokens each device
  looks up (shape_BT's rows x length over the batch's pieces) the copy is whole over
  "tensor" instead: the table's gradient, reduced once, is then smaller than that
  all-reduced activation (shakespeare on 2x2x2: 1.11 -> 1.07x the minimum on a v5p-16's 8
  chips, 1.06 -> 1.01 on 8 CPU devices; gpt2_small's (50304, 768) table would go 0.99 ->
  1.06).
  """
  size = sharding.axis_size
  tpu = sharding.platform() == "tpu"
  rows, length = shape_BT
  if tpu and size("data") == 1 and size("tensor") == 1:
    return params
  tables = {}
  if ((config.tie_embeddings and output) or size("tensor") > 1
      or (not tpu and size("data") > 1 and size("fsdp") > 1)):
    # Only where "tensor" alone splits the vocabulary and not the batch (custom rules).
    batch_axes, pieces = sharding.batch_split(rows)
    whole = (sharding.mesh_axes_of(params["embed"], ("vocab", None)) == {"tensor"}
             and "tensor" not in batch_axes and config.vocab_size <= rows * length // pieces)
    tables["embed"] = (None if whole else "vocab", "embed")
  if output and not config.tie_embeddings and not tpu:
    tables["unembed"] = ("embed", "vocab")
  if config.positions == "learned":
    tables["pos_embed"] = ("positions", "embed")
  return {**params, **{key: sharding.device_copies(params[key], axes, rows,
                                                   gather_dtype=config.compute_dtype)
                       for key, axes in tables.items()}}


def _readout_input(params: dict, x_BTD: jax.Array, config: ModelConfig) -> jax.Array:
  # The readout multiplier (μP: 1/width_mult; exactly 1 under standard) scales the
  # (B, T, D) input of the output matmul rather than the (B, T, V) logits: the same
  # product, V/D times fewer multiplies.
  x_BTD = layers.norm(params["final_norm"], x_BTD, config.norm, config.norm_eps)
  return x_BTD * jnp.asarray(config.readout_mult, x_BTD.dtype)


def unembed_weight(params: dict, config: ModelConfig) -> jax.Array:
  """The output projection (D, V), whole along D like the embedding table at lookup: with D
  sharded (FSDP) XLA would otherwise all-reduce partial (B, T, V) logits, forward and
  backward, instead of all-gathering the weight (24 of 42 MiB per step of the default
  experiment on mesh (2, 4, 1); docs/sharding.md). Its gradient is reduce-scattered back
  to the parameter's sharding (sharding.gathered). (n, D, V), each device's copy, where
  params come from device_tables()."""
  tied = config.tie_embeddings
  w = params["embed"] if tied else params["unembed"]
  if w.ndim == 3:  # each device's copy (device_tables): (n, D, V)
    return jnp.swapaxes(w, 1, 2) if tied else w
  return sharding.gathered(w.T if tied else w, ("embed", "vocab"))


def unembed(params: dict, x_BTD: jax.Array, config: ModelConfig) -> jax.Array:
  """Final norm and output projection: float32 logits (B, T, V)."""
  logits_BTV = layers.dense(_readout_input(params, x_BTD, config),
                            unembed_weight(params, config), out_dtype=jnp.float32)
  return sharding.constrain(logits_BTV, ("batch", "length", "act_vocab"))


def apply(params: dict, tokens_BT: jax.Array, config: ModelConfig, *, positions_BT=None,
          segment_ids_BT=None) -> jax.Array:
  """Next-token logits (B, T, V) in float32 for int tokens (B, T) of params from init().

  positions_BT: each token's position within its document (default 0..T-1).
  segment_ids_BT: each token's document id; attention stays within a document. None
  treats each row as one document.
  """
  x_BTD = trunk(params, tokens_BT, config, positions_BT=positions_BT, segment_ids_BT=segment_ids_BT)
  return unembed(params, x_BTD, config)


def trunk(params: dict, tokens_BT: jax.Array, config: ModelConfig, *, positions_BT=None,
          segment_ids_BT=None, with_stats: bool = False):
  """Embedding and the layer stack: the residual stream (B, T, D) before the final norm.

  with_stats: return (x_BTD, {"max_attention_logit": (L,)}) instead, each layer's
  largest attention score (empty where the attention implementation lacks it).
  """
  c = config
  positions_BT = default_positions(tokens_BT) if positions_BT is None else positions_BT
  x_BTD = embed(params, tokens_BT, positions_BT, c)
  attend = self_attention(segment_ids_BT, c)
  body = lambda x_BTD, p: block(x_BTD, p, positions_BT, c, attend)
  x_BTD, max_logit_L = layer_stack(body, x_BTD, params["layers"], c, param_specs(c)["layers"])
  if not with_stats:
    return x_BTD
  return x_BTD, ({} if max_logit_L is None else {"max_attention_logit": max_logit_L})


def layer_loop(config: ModelConfig, platform: str) -> str:
  """The layer loop, scan or unroll: model.layer_loop, "auto" decided by the platform
  (layer_stack says why)."""
  if config.layer_loop != "auto":
    return config.layer_loop
  return "unroll" if platform == "cpu" else "scan"


def layer_stack(body, x, stacked, config: ModelConfig, specs: dict):
  """Runs `body(x, layer_params) -> (x, aux)` over params stacked on a leading L axis.

  Given the stack's ParamSpecs and a model.remat, each layer's params are gathered over
  FSDP inside the recomputed body and their gradients reduce-scattered back
  (sharding.gathered): the backward pass gathers a layer's weights again. Without remat
  the gathered weights would be kept for the backward pass, a whole model per device (a
  remat policy keeping all but them does not stop it: the custom VJP's output is kept),
  so there XLA places the collectives itself (docs/sharding.md). On CPU with an fsdp
  axis, the matrices split over it go to layers.dense as sharding.Split instead, with or
  without remat: XLA's CPU pipeline all-reduces their gradients whole, split_matmul
  reduce-scatters them.

  Returns (x, aux stacked over L). model.layer_loop picks a `lax.scan` or the
  same body unrolled over the L slices (same params, same arithmetic); "auto"
  unrolls on CPU, where XLA's while loop zero-fills and copies the stacked
  activations it saves for the backward pass (6 x 256 model: 10% faster
  unrolled, 443 MB of temporaries instead of 617; docs/benchmarks.md), and
  scans elsewhere, where one compiled body keeps compile time flat in depth.
  Each layer runs under jax.checkpoint when model.remat is set.
  """
  split = sharding.platform() == "cpu" and sharding.axis_size("fsdp") > 1
  if split or config.remat != "none":
    inner = body

    def prepare(s, w):
      if not split:
        return sharding.gathered(w, s.axes[1:])
      # Matrices as sharding.Split: layers.dense reduce-scatters their gradients.
      split_fsdp = w.ndim > 1 and "fsdp" in sharding.mesh_axes_of(w, s.axes[1:])
      return sharding.Split(w, s.axes[1:]) if split_fsdp else w

    def body(x, p):
      return inner(x, jax.tree.map(prepare, specs, p, is_leaf=params_lib.is_spec))
  if config.remat != "none":
    body = jax.checkpoint(body, policy=REMAT_POLICIES[config.remat])
  if layer_loop(config, sharding.platform()) == "scan":
    return jax.lax.scan(body, x, stacked)
  # One split per leaf, not L indexing ops: the gradient of a split is one
  # concatenate, while that of a[i] is a pad to the whole stack, summed over L.
  L = jax.tree.leaves(stacked)[0].shape[0]
  slices = jax.tree.map(lambda a: [p[0] for p in jax.lax.split(a, [1] * L)], stacked)
  auxes = []
  for i in range(L):
    x, aux = body(x, jax.tree.map(lambda parts, i=i: parts[i], slices,
                                  is_leaf=lambda v: isinstance(v, list)))
    auxes.append(aux)
  return x, jax.tree.map(lambda *a: jnp.stack(a), *auxes)


def next_token_nll(params: dict, x_BTD: jax.Array, targets_BT: jax.Array,
                   config: ModelConfig, chunk: int = 0, return_lse: bool = False):
  """Per-token cross-entropy (B, T) of the trunk's output, without (B, T, V) logits.

  Equal to the cross-entropy of unembed()'s logits, computed `chunk` rows of
  B*T at a time (0: all at once) so the float32 logits never exist whole.
  return_lse: also the logits' log-sum-exp (B, T) (layers.cross_entropy).
  """
  return layers.cross_entropy(_readout_input(params, x_BTD, config),
                              unembed_weight(params, config), targets_BT, chunk, return_lse)


def logits_rms(params: dict, x_BTD: jax.Array, config: ModelConfig) -> jax.Array:
  """The root mean square of the output logits (float32), without computing them.

  sum over rows of |x W|^2 = sum((X^T X) * (W W^T)): two (D, D) Gram matrices,
  V/D times cheaper than the (B*T, V) logits (a growing logit scale is an early
  sign of instability; Wortsman et al. 2023, "Small-scale proxies").
  """
  x_RD = _readout_input(params, x_BTD, config).reshape(-1, x_BTD.shape[-1]).astype(jnp.float32)
  w_DV = unembed_weight(params, config).astype(jnp.float32)
  # (n, D, V): each device's copy (device_tables), the same Gram matrix on each.
  gram_DD = (jnp.mean(jnp.einsum("ndv,nev->nde", w_DV, w_DV), axis=0) if w_DV.ndim == 3
             else w_DV @ w_DV.T)
  total = jnp.sum((x_RD.T @ x_RD) * gram_DD)
  count = float(x_RD.shape[0]) * w_DV.shape[-1]  # a Python float: B*T*V passes 2**31 at scale
  return jnp.sqrt(jnp.maximum(total, 0.0) / count)


def flops_per_token(config: ModelConfig, seq_len: int) -> dict[str, float]:
  """Training FLOPs per token: 6N (non-embedding matmuls + logits) and attention.

  Following Chinchilla's appendix F / PaLM's MFU accounting: every weight
  matmul costs 6 FLOPs per parameter per token (forward + backward), and
  causal attention adds 6 * L * T * D (QK^T and AV, halved for causality,
  tripled for the backward pass; 12 * L * T * D without the halving).
  """
  dense = 6.0 * (param_count(config)["non_embedding"] + config.vocab_size * config.d_model)
  attention = 6.0 * config.n_layers * seq_len * config.d_model
  return {"dense": dense, "attention": attention, "total": dense + attention}
