"""The typed config tree of a run, its validation, and `--set key=value` overrides.

A config is a frozen dataclass tree: `Config(model, data, optim, train,
checkpoint, mesh, task, init, seed)`. Experiments build one in Python; the command line can
only change leaves, each parsed to the field's declared type. Invalid values are
rejected when the config is built, with the dotted key in the message.
"""

from __future__ import annotations

import dataclasses
from typing import Any

DTYPES = ("float32", "bfloat16", "float16")
LOGGERS = ("stdout", "jsonl", "tensorboard", "wandb")


def names(text: str) -> tuple[str, ...]:
  """The items of a comma-separated key (train.loggers, train.harness_tasks, ...)."""
  return tuple(n.strip() for n in text.split(",") if n.strip())


class ConfigError(ValueError):
  """Bad configuration input; the message names the key and what was expected."""


def _check(ok: bool, key: str, value: Any, expected: str) -> None:
  if not ok:
    raise ConfigError(f"{key}={value!r} is invalid: expected {expected}")


def _fields(config, ok, **expected: str) -> None:
  """_check of ok(value) for each named field of a config section, keyed section.field."""
  section = type(config).__name__.removesuffix("Config").lower()
  for key, text in expected.items():
    _check(ok(getattr(config, key)), f"{section}.{key}", getattr(config, key), text)


def _positive(config, **expected: str) -> None:
  _fields(config, lambda v: v > 0, **expected)


def _nonnegative(config, **expected: str) -> None:
  _fields(config, lambda v: v >= 0, **expected)


def _choices(config, **choices: tuple[str, ...]) -> None:
  for key, options in choices.items():
    _fields(config, lambda v: v in options, **{key: "one of " + ", ".join(options)})


def parse_corpus(spec: str, key: str = "data.corpus") -> tuple[str, str]:
  """(kind, argument) of a data.corpus spec (docs/data.md); ConfigError if it is not one."""
  kind, sep, arg = spec.partition(":")
  if spec == "shakespeare":
    return "shakespeare", ""
  _check(kind in ("files", "hf", "prepared") and bool(sep) and bool(arg.strip()), key, spec,
         "shakespeare, files:GLOB[,GLOB...], hf:NAME_OR_DIR or prepared:DIR")
  _check(kind == "hf" or "://" not in arg, key, spec, "local paths (files and prepared shards "
         "are read through the local filesystem API: mount a bucket with gcsfuse, or use NFS)")
  return kind, arg.strip()


def _weight(text: str) -> float:
  """float(text) if it is a positive finite number, else 0.0."""
  try:
    x = float(text)
  except ValueError:
    return 0.0
  return x if 0 < x < float("inf") else 0.0


def parse_mixture(corpora: str, mixture: str) -> tuple[tuple[str, str, float], ...]:
  """(name, corpus spec, weight) of each data.mixture item over data.corpora, weights
  normalized to sum to 1; () without a mixture. ConfigError naming the key if malformed."""
  named = {}
  for item in filter(str.strip, corpora.split(";")):
    name, sep, spec = (x.strip() for x in item.partition("="))
    _check(bool(sep) and name.isidentifier() and name not in named, "data.corpora", corpora,
           "NAME=SPEC;NAME=SPEC;... with distinct names (letters, digits, _)")
    parse_corpus(spec, f"data.corpora ({name})")
    named[name] = spec
  items = [(n.strip(), _weight(w)) for n, _, w in (x.partition(":") for x in names(mixture))]
  _check(all(n in named and w > 0 for n, w in items) and len(dict(items)) == len(items),
         "data.mixture", mixture, "NAME:WEIGHT,... with WEIGHT > 0 and each NAME once, one of "
         f"data.corpora ({', '.join(named) or 'none named'})")
  total = sum(w for _, w in items)
  _check(total < float("inf"), "data.mixture", mixture, "weights whose sum is finite")
  return tuple((n, named[n], w / total) for n, w in items)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Transformer shape and options: decoder-only, or encoder-decoder if encoder_layers > 0."""
  vocab_size: int = 2048       # output vocabulary (>= the tokenizer's; pad for speed)
  d_model: int = 256           # residual stream width
  n_layers: int = 4            # Transformer blocks
  n_heads: int = 4             # query heads; head dim = d_model / n_heads
  n_kv_heads: int = 0          # 0: same as n_heads (multi-head); fewer: grouped-query
  d_ff: int = 0                # 0: 4*d_model for gelu, 8/3*d_model (rounded up to 64) for swiglu
  max_seq_len: int = 1024      # longest sequence the model supports (learned positions size)
  positions: str = "rope"      # rope | learned
  norm: str = "rmsnorm"        # rmsnorm | layernorm
  mlp: str = "swiglu"          # swiglu | gelu
  use_bias: bool = False       # biases in attention and MLP projections
  tie_embeddings: bool = True  # output projection shares the token embedding
  attention: str = "auto"      # auto | xla | cudnn | pallas
  param_dtype: str = "float32" # float32 or bfloat16 (float16): parameter storage
  compute_dtype: str = "float32"  # activations and matmul inputs; softmax, norms, loss in float32
  rope_theta: float = 10000.0  # rotary base frequency
  norm_eps: float = 1e-5       # epsilon of RMSNorm / LayerNorm
  init_std: float = 0.02       # std of normal init; residual output projections / sqrt(2 L)
  remat: str = "none"          # none | full | dots: what each layer recomputes in the backward
  layer_loop: str = "auto"     # auto | scan | unroll: how the layer stack runs; auto unrolls on CPU
  encoder_layers: int = 0      # seq2seq encoder blocks (n_layers: the decoder's); 0: none
  parameterization: str = "standard"  # standard | mup (Maximal Update Parametrization, docs/mup.md)
  mup_base_width: int = 128    # mup: the d_model at which mup equals standard
  mup_base_head_dim: int = 0   # mup: head dim at which attention equals standard; 0: own head dim
  qk_norm: bool = False        # RMSNorm of each head's queries and keys before rotary (stability)

  def __post_init__(self):
    _positive(self, **dict.fromkeys(("vocab_size", "d_model", "n_layers", "n_heads",
                                     "max_seq_len"), "a positive integer"))
    _nonnegative(self, n_kv_heads=">= 0 (0 means n_heads)",
                 d_ff=">= 0 (0 means derived from d_model)")
    _check(self.d_model % self.n_heads == 0, "model.n_heads", self.n_heads,
           f"a divisor of model.d_model={self.d_model}")
    _check(self.n_heads % self.kv_heads == 0, "model.n_kv_heads", self.n_kv_heads,
           f"a divisor of model.n_heads={self.n_heads}")
    _check(self.head_dim % 2 == 0 or self.positions != "rope", "model.d_model", self.d_model,
           "an even head dimension (d_model / n_heads) for rotary positions")
    _choices(self, positions=("rope", "learned"), norm=("rmsnorm", "layernorm"),
             mlp=("swiglu", "gelu"), attention=("auto", "xla", "cudnn", "pallas"),
             remat=("none", "full", "dots"), layer_loop=("auto", "scan", "unroll"),
             param_dtype=DTYPES, compute_dtype=DTYPES)
    _positive(self, init_std="a positive float")
    _nonnegative(self, encoder_layers=">= 0 (0 means decoder-only)")
    _choices(self, parameterization=("standard", "mup"))
    _positive(self, mup_base_width="a positive integer")
    _nonnegative(self, mup_base_head_dim=">= 0 (0 means the model's own head dim)")

  @property
  def kv_heads(self) -> int:
    return self.n_kv_heads or self.n_heads

  @property
  def head_dim(self) -> int:
    return self.d_model // self.n_heads

  # Maximal Update Parametrization (Yang et al. 2022, "Tensor Programs V", table 3 and
  # table 8's multiplier form), relative to a base width at which it equals the
  # standard parameterization; docs/mup.md. Under "standard" each is the identity.
  @property
  def width_mult(self) -> float:
    """d_model / mup_base_width under mup (hidden init std / sqrt, Adam lr / this); else 1."""
    return self.d_model / self.mup_base_width if self.parameterization == "mup" else 1.0

  @property
  def readout_mult(self) -> float:
    """Multiplier of the output logits: 1 / width_mult (mup's MuReadout)."""
    return 1.0 / self.width_mult

  @property
  def attention_scale(self) -> float:
    """Softmax scale: 1/sqrt(H) standard; mup: sqrt(H_base)/H (1/H, equal at the base head dim)."""
    scale = self.head_dim ** -0.5
    if self.parameterization == "mup" and self.mup_base_head_dim:
      scale *= (self.mup_base_head_dim / self.head_dim) ** 0.5
    return scale

  @property
  def ff_dim(self) -> int:
    if self.d_ff:
      return self.d_ff
    if self.mlp == "gelu":
      return 4 * self.d_model
    return -(-8 * self.d_model // 3 // 64) * 64  # LLaMA: 2/3 of 4d, rounded up to 64


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Corpus, tokenizer and sequence packing."""
  corpus: str = "shakespeare"  # shakespeare | files:GLOB,... | hf:NAME | prepared:DIR (docs/data.md)
  tokenizer: str = "sentencepiece"  # sentencepiece | bytes | hf (a Hugging Face tokenizer)
  tokenizer_path: str = ""          # sentencepiece: "" is the committed model; hf: its directory
  vocab_size: int = 0               # tokenizer vocabulary; 0 means model.vocab_size
  seq_len: int = 256           # tokens per training window
  mask_documents: bool = True       # packed documents never attend to each other
  source_len: int = 0          # seq2seq: encoder tokens per example (0: data.seq_len)
  text_field: str = "text"     # files: the text of a .jsonl record or .parquet row
  validation_fraction: float = 0.01  # files: documents held out, by a hash of their identity
  cache_dir: str = ""          # where files: corpora are prepared ("": ~/.cache/jaxlm/prepared)
  hf_config: str = ""          # hf: the dataset's configuration (load_dataset's name)
  hf_split: str = "train"      # hf: the split whose documents are used
  corpora: str = ""   # named corpora for data.mixture: NAME=SPEC;NAME=SPEC (SPEC as data.corpus)
  mixture: str = ""   # NAME:WEIGHT,... of data.corpora (token shares): trains on them instead

  def __post_init__(self):
    parse_corpus(self.corpus)
    parse_mixture(self.corpora, self.mixture)
    _fields(self, lambda v: 0 < v < 1, validation_fraction="in (0, 1)")
    _choices(self, tokenizer=("sentencepiece", "bytes", "hf"))
    _check(self.tokenizer != "hf" or bool(self.tokenizer_path), "data.tokenizer_path",
           self.tokenizer_path, "a Hugging Face tokenizer directory with data.tokenizer=hf")
    _positive(self, seq_len="a positive integer")
    _nonnegative(self, source_len=">= 0 (0 means data.seq_len)",
                 vocab_size=">= 0 (0 means model.vocab_size)")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """The optimizer (optax) and its learning-rate schedule: warmup, then cosine, constant or WSD."""
  name: str = "adamw"         # adamw | lion | adafactor | muon (optax.contrib; docs/recipes.md)
  lr: float = 3e-3             # peak learning rate (muon: of the params it leaves to Adam)
  min_lr_ratio: float = 0.1   # final learning rate as a fraction of lr
  warmup_steps: int = 50       # linear warmup from 0
  schedule: str = "cosine"    # cosine | constant | wsd (warmup, stable, decay)
  decay_fraction: float = 0.2  # wsd: the share of train.steps that decays
  decay_steps: int = 0        # wsd: steps that decay, the last ones (0: decay_fraction's)
  decay_shape: str = "linear"  # wsd: linear | cosine | 1-sqrt (Hägele et al. 2024)
  b1: float = 0.9              # AdamW / Lion beta1 (muon: its Adam part's)
  b2: float = 0.95             # AdamW / Lion beta2 (muon: its Adam part's)
  eps: float = 1e-8            # AdamW epsilon
  weight_decay: float = 0.1    # decoupled, on matrices only (not norms, biases, embeddings)
  grad_clip: float = 1.0      # global norm; 0 disables
  adafactor_decay_rate: float = 0.8  # adafactor: second-moment decay exponent
  muon_lr: float = 0.02       # muon: peak learning rate of its matrices (same schedule)
  muon_beta: float = 0.95     # muon: momentum
  muon_ns_steps: int = 5      # muon: Newton-Schulz iterations

  def __post_init__(self):
    _choices(self, name=("adamw", "lion", "adafactor", "muon"))
    _positive(self, lr="a positive float")
    _fields(self, lambda v: 0 <= v <= 1, min_lr_ratio="in [0, 1]")
    _nonnegative(self, warmup_steps=">= 0")
    _choices(self, schedule=("cosine", "constant", "wsd"))
    _fields(self, lambda v: 0 < v <= 1, decay_fraction="in (0, 1]")
    _nonnegative(self, decay_steps=">= 0 (0: from optim.decay_fraction)")
    _choices(self, decay_shape=("linear", "cosine", "1-sqrt"))
    _fields(self, lambda v: 0 <= v < 1, b1="in [0, 1)", b2="in [0, 1)")
    _nonnegative(self, weight_decay=">= 0", grad_clip=">= 0 (0 disables)")
    _fields(self, lambda v: 0 < v <= 1, adafactor_decay_rate="in (0, 1]")
    _positive(self, muon_lr="a positive float")
    _fields(self, lambda v: 0 <= v < 1, muon_beta="in [0, 1)")
    _positive(self, muon_ns_steps="a positive integer")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Length of training, batch, and what is logged and evaluated."""
  steps: int = 1000            # optimizer steps
  batch_size: int = 32         # global batch (sequences), split over data and fsdp
  log_every: int = 25          # steps between progress lines / metrics.jsonl records
  eval_every: int = 250       # 0: evaluate only at the end
  eval_batches: int = 16      # validation batches per evaluation
  final_eval_batches: int = 0  # batches of the final evaluation (0: the whole validation split)
  loss_chunk: int = 0         # rows of batch*length per loss chunk on each device (0: all at once)
  sample_tokens: int = 200    # tokens sampled at the end of the run (0: none)
  sample_prompt: str = "ROMEO.\n"  # prompt of the end-of-run sample
  sample_temperature: float = 0.8  # temperature of the end-of-run sample
  nonfinite: str = "stop"     # non-finite loss or grads: stop (error) | skip (drop the update)
  spike_factor: float = 3.0   # log a spike when loss > factor * running mean; 0: never
  loggers: str = "stdout,jsonl"  # comma-separated: stdout, jsonl, tensorboard, wandb
  wandb_project: str = "jaxlm"   # W&B project of train.loggers=...,wandb
  wandb_mode: str = "online"     # online | offline (no network; `wandb sync` later) | disabled
  layer_stats: bool = True    # per-layer norms, update ratios, largest attention scores
  profile: str = ""           # START:STOP: a jax.profiler trace of those steps ("": none)
  microbatches: int = 1       # gradient accumulation: each batch in this many sequential parts
  microbatch_loop: str = "scan"  # scan (one compiled part) | unroll (a copy per part)
  z_loss: float = 0.0         # coefficient of mean(logsumexp(logits)^2) added to the loss
  hang_timeout: float = 1800.0  # seconds without progress before the run is taken for hung
  harness_tasks: str = ""     # LM Evaluation Harness tasks scored during training, comma-separated
  harness_every: int = 0      # steps between harness evaluations (0: only at the end)
  harness_limit: int = 0      # examples per harness task (0: all)
  harness_fewshot: int = -1   # few-shot examples per harness prompt (-1: each task's own)
  harness_include: str = ""   # directories of lm-eval task YAMLs, comma-separated

  def __post_init__(self):
    _positive(self, **dict.fromkeys(("steps", "batch_size", "log_every", "eval_batches"),
                                    "a positive integer"))
    _nonnegative(self, eval_every=">= 0",
                 final_eval_batches=">= 0 (0: the whole validation split)")
    _choices(self, nonfinite=("stop", "skip"))
    _fields(self, lambda v: v == 0 or v > 1, spike_factor="0 (off) or a float > 1")
    _nonnegative(self, sample_tokens=">= 0", loss_chunk=">= 0 (0: no chunks)",
                 sample_temperature=">= 0")
    names = self.logger_names
    _check(len(set(names)) == len(names) and set(names) <= set(LOGGERS), "train.loggers",
           self.loggers, f"distinct names among {', '.join(LOGGERS)}, comma-separated")
    _choices(self, wandb_mode=("online", "offline", "disabled"))
    start, stop = self.profile_steps or (1, 2)
    _check(0 < start < stop, "train.profile", self.profile,
           "START:STOP, two step numbers with 0 < START < STOP (e.g. 10:15), or empty")
    _check(self.microbatches > 0 and self.batch_size % self.microbatches == 0,
           "train.microbatches", self.microbatches,
           f"a positive divisor of train.batch_size={self.batch_size}")
    _choices(self, microbatch_loop=("scan", "unroll"))
    _nonnegative(self, z_loss=">= 0 (0: off)", hang_timeout=">= 0 seconds (0: no watchdog)",
                 harness_every=">= 0 (0: only at the end)", harness_limit=">= 0 (0: all)")
    _fields(self, lambda v: v >= -1, harness_fewshot=">= 0, or -1 for each task's own")

  @property
  def logger_names(self) -> tuple[str, ...]:
    return names(self.loggers)

  @property
  def profile_steps(self) -> tuple[int, int] | None:
    """(first, last) step of train.profile, None if empty; (0, 0) if malformed."""
    if not self.profile:
      return None
    start, sep, stop = self.profile.partition(":")
    try:
      return (int(start), int(stop)) if sep else (0, 0)
    except ValueError:
      return 0, 0


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """When Orbax checkpoints are written and how many are kept."""
  every: int = 500            # steps between saves; the last step is always saved; 0: only last
  keep: int = 2               # the latest `keep`, plus the one with the best val_loss
  at_steps: tuple[int, ...] = ()  # also save, and keep, these steps (a WSD study's branch points)

  def __post_init__(self):
    _nonnegative(self, every=">= 0")
    _positive(self, keep="a positive integer")
    _check(all(s > 0 for s in self.at_steps), "checkpoint.at_steps", self.at_steps,
           "positive step numbers, comma-separated")


@dataclasses.dataclass(frozen=True)
class TaskConfig:
  """What the run trains for: next-token prediction, or a fine-tuning task on the corpus."""
  kind: str = "lm"            # lm | classify (genre) | sft (speaker) | seq2seq (punctuation)
  pooling: str = "last"       # classify: last | mean: how a passage becomes one vector
  max_response_tokens: int = 16  # sft: longest response kept (prompts are cut from the left)

  def __post_init__(self):
    _choices(self, kind=("lm", "classify", "sft", "seq2seq"), pooling=("last", "mean"))
    _positive(self, max_response_tokens="a positive integer")


@dataclasses.dataclass(frozen=True)
class InitConfig:
  """Where the parameters start: a random draw, or a trained run's checkpoint (grown if smaller)."""
  from_workdir: str = ""      # a run whose latest params start this one ("": random init)
  grow: str = "none"          # none | stack | interleave: how a shallower run's layers fill more
  zero_new: bool = True       # grown layers, heads and units start with zero output (function-preserving)
  from_step: int = 0          # >0: continue init.from_workdir's whole state at this step (a branch)

  def __post_init__(self):
    _choices(self, grow=("none", "stack", "interleave"))
    _check(self.grow == "none" or self.from_workdir, "init.grow", self.grow,
           "'none' unless init.from_workdir names the run to grow from")
    _check(self.from_step >= 0, "init.from_step", self.from_step, ">= 0 (0: params only)")
    _check(not self.from_step or (self.from_workdir and self.grow == "none"), "init.from_step",
           self.from_step, "0 unless init.from_workdir names the run to branch from (and "
           "init.grow=none: a branch continues that run's model and optimizer)")


# Logical axis -> mesh axes. Every logical axis a parameter or activation names
# must appear here (a test checks it); None means replicated.
DEFAULT_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", ()),
    ("act_embed", ()),
    ("act_heads", ("tensor",)),
    ("act_kv_heads", ("tensor",)),
    ("act_mlp", ("tensor",)),
    ("act_vocab", ("tensor",)),
    ("layers", ()),
    ("vocab", ("tensor",)),
    ("embed", ("fsdp",)),
    ("heads", ("tensor",)),
    ("kv_heads", ("tensor",)),
    ("head_dim", ()),
    ("mlp", ("tensor",)),
    ("positions", ()),
    ("classes", ()),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Device mesh shape; -1 fills the remaining devices (at most one axis)."""
  data: int = -1               # data-parallel replicas (batch split, params replicated)
  fsdp: int = 1                # fully sharded data parallel (batch and params split)
  tensor: int = 1              # tensor parallel (heads, MLP and vocab split)
  rules: tuple[tuple[str, tuple[str, ...]], ...] = DEFAULT_RULES  # logical -> mesh axes

  def __post_init__(self):
    sizes = {"mesh.data": self.data, "mesh.fsdp": self.fsdp, "mesh.tensor": self.tensor}
    for key, size in sizes.items():
      _check(size == -1 or size > 0, key, size, "a positive integer or -1 (fill)")
    _check(list(sizes.values()).count(-1) <= 1, "mesh", sizes, "at most one axis set to -1")


@dataclasses.dataclass(frozen=True)
class Config:
  """A whole run: what to train, on what, for how long, on which devices, from where."""
  name: str = "unnamed"        # the experiment name (set by the registry)
  model: ModelConfig = ModelConfig()
  data: DataConfig = DataConfig()
  optim: OptimConfig = OptimConfig()
  train: TrainConfig = TrainConfig()
  checkpoint: CheckpointConfig = CheckpointConfig()
  mesh: MeshConfig = MeshConfig()
  task: TaskConfig = TaskConfig()
  init: InitConfig = InitConfig()
  seed: int = 0                # seeds parameter init, data order and sampling

  def __post_init__(self):
    _fields(self.data, lambda v: v <= self.model.max_seq_len, **dict.fromkeys(
        ("seq_len", "source_len"), f"at most model.max_seq_len={self.model.max_seq_len}"))
    _check(not (self.optim.name == "muon" and self.model.parameterization == "mup"),
           "optim.name", self.optim.name, "adamw, lion or adafactor with "
           "model.parameterization=mup (muon's updates already scale with width)")
    _check(self.seed >= 0, "seed", self.seed, ">= 0")
    _check(not self.data.mixture or self.task.kind == "lm", "data.mixture", self.data.mixture,
           f"empty with task.kind={self.task.kind!r} (mixtures are of pretraining corpora)")
    _check(not self.train.z_loss or self.task.kind in ("lm", "sft"), "train.z_loss",
           self.train.z_loss, f"0 with task.kind={self.task.kind!r} (z-loss is on the output "
           "vocabulary's logits: task.kind lm or sft)")
    _check(not self.init.from_step or self.init.from_step < self.train.steps,
           "init.from_step", self.init.from_step,
           f"below train.steps={self.train.steps} (the branch trains on from it)")
    seq2seq = self.task.kind == "seq2seq"
    _check(seq2seq == (self.model.encoder_layers > 0), "model.encoder_layers",
           self.model.encoder_layers,
           "> 0 with task.kind=seq2seq (an encoder-decoder)" if seq2seq else
           f"0 with task.kind={self.task.kind!r} (a decoder-only model; encoders are for seq2seq)")


def replace(config, **changes):
  """dataclasses.replace that also accepts dotted keys: replace(c, **{"model.d_model": 64})."""
  flat, nested = {}, {}
  for key, value in changes.items():
    head, _, rest = key.partition(".")
    if rest:
      nested.setdefault(head, {})[rest] = value
    else:
      flat[key] = value
  flat.update({head: replace(getattr(config, head), **sub) for head, sub in nested.items()})
  return dataclasses.replace(config, **flat)
