"""Training throughput of jaxlm against a plain PyTorch GPT-2 on the same model and batch.

  python benchmarks/train_throughput.py [--sizes 4x128 6x256 8x512] [--steps 3] [--rounds 8]
      [--batch_size 8] [--seq_len 256] [--vocab 2048] [--check] [--quick]
      [--variants train.loss_chunk=0 train.loss_chunk=1024,model.remat=dots]

For each size (LAYERSxWIDTH, head dim 64), times the real jitted jaxlm Trainer
step as the training loop runs it between log steps (learned positions, LayerNorm,
GELU, biases, tied embeddings, float32, AdamW) and benchmarks/torch_gpt.py's PyTorch
model with the same shapes, init and optimizer, in this one process, on the same
random tokens, in alternating blocks of steps. Reports the median step time after
warm-up as tokens/s, the ratio jaxlm / PyTorch, and the range of that ratio over the
rounds (each round's two blocks compared: on a shared VM it shows how far the
machine's drift moves one figure), and writes JSON. Each --variants entry
(comma-separated jaxlm config overrides) gives one jaxlm row against the same PyTorch
run; --check first confirms that both models compute the same loss from the same params.
On a GPU it also reports MFU (see benchmarks/mfu.py).
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np
import torch

import report
import torch_gpt
from jaxlm import config_io, malloc, sharding
from jaxlm.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig
from jaxlm.models import transformer
from jaxlm.run import loggers
from jaxlm.train.step import Trainer


def make_config(layers: int, width: int, args) -> Config:
  """jaxlm's gpt2-style model at this size; rows are single documents (no mask)."""
  model = ModelConfig(vocab_size=args.vocab, d_model=width, n_layers=layers,
                      n_heads=max(width // 64, 1), max_seq_len=args.seq_len,
                      positions="learned", norm="layernorm", mlp="gelu", use_bias=True,
                      tie_embeddings=True)
  return Config(name=f"gpt_{layers}x{width}", model=model,
                data=DataConfig(seq_len=args.seq_len, mask_documents=False),
                optim=OptimConfig(),
                train=TrainConfig(steps=1000, batch_size=args.batch_size))


def token_batches(config: Config, n: int) -> list[np.ndarray]:
  """n arrays of random tokens (B, T + 1), shared by both frameworks."""
  rng = np.random.default_rng(0)
  shape = (config.train.batch_size, config.data.seq_len + 1)
  return [rng.integers(0, config.model.vocab_size, shape, dtype=np.int32) for _ in range(n)]


def time_steps(steps: dict, n_warmup: int, n_steps: int, rounds: int = 1) -> dict:
  """{name: {step_s (median), warmup_s, loss, times}} of steps {name: step(i) -> loss (blocking)}.

  Each contender runs a block of steps before the next starts: interleaving
  single steps made PyTorch 7-18x slower on 2 cores (likely the idle worker
  threads of one runtime spinning on the cores the other needs). With rounds > 1
  the blocks alternate (A B A B ...), each block after the first starting with
  one untimed step, and the median is over all timed steps: on this shared VM
  a process's speed drifts by 10-20% over a minute, which a single block of
  each contender would book as a difference between them.
  """
  out = {name: {"times": []} for name in steps}
  for name, step in steps.items():
    start = time.perf_counter()
    for i in range(n_warmup):
      step(i)
    out[name]["warmup_s"] = time.perf_counter() - start
  for r in range(rounds):
    for name, step in steps.items():
      if r:
        step(0)
      for i in range(n_steps):
        t = time.perf_counter()
        out[name]["loss"] = step(n_warmup + i)
        out[name]["times"].append(time.perf_counter() - t)
  for r in out.values():
    r["step_s"] = float(np.median(r["times"]))
    # Each block's median: the contenders' blocks of one round ran back to back, so
    # their ratio round by round shows how far the machine's drift moves it.
    r["block_s"] = [float(np.median(r["times"][i:i + n_steps]))
                    for i in range(0, len(r["times"]), n_steps)]
  return out


def jaxlm_step(config: Config, tokens):
  """step(i) -> loss of the real jitted Trainer step (as benchmarks/mfu.py times it): the
  one the training loop runs between log steps, without train.layer_stats' statistics (a
  log step, one in train.log_every, adds them: benchmarks/layer_stats.py)."""
  trainer = Trainer(config, sharding.make_mesh(config.mesh),
                    np.ones(config.model.vocab_size, np.int32))
  state = trainer.init(jax.random.key(0))
  B, T = config.train.batch_size, config.data.seq_len
  batches = [trainer.device_batch({
      "inputs": t[:, :-1], "targets": t[:, 1:], "segment_ids": np.ones((B, T), np.int32),
      "positions": np.broadcast_to(np.arange(T, dtype=np.int32), (B, T)).copy(),
      "weights": np.ones((B, T), np.float32)}) for t in tokens]
  holder = {"state": state}

  def step(i):
    holder["state"], m = trainer.unlogged_step(holder["state"], batches[i % len(batches)])
    return float(m["loss"])  # float() blocks until the step is done

  # For benchmarks/profile_step.py: the optimized HLO of this step.
  step.hlo_text = lambda: trainer.unlogged_step.lower(
      holder["state"], batches[0]).compile().as_text()
  return step


def torch_step(config: Config, tokens, args):
  """(step(i) -> loss, params) of benchmarks/torch_gpt.py's train step on the same tokens."""
  c = config.model
  torch.manual_seed(0)
  model = torch_gpt.GPT(c.vocab_size, c.d_model, c.n_layers, c.n_heads, c.max_seq_len,
                        norm_eps=c.norm_eps, init_std=c.init_std)
  opt, sched = torch_gpt.make_optimizer(model, config.optim, config.train.steps)
  device = "cuda" if args.gpu else "cpu"
  model.to(device)
  batches = [torch.from_numpy(t.astype(np.int64)).to(device) for t in tokens]

  def step(i):
    t = batches[i % len(batches)]
    loss = torch_gpt.train_step(model, opt, sched, t[:, :-1], t[:, 1:], config.optim.grad_clip)
    return float(loss)  # .item() synchronizes (a no-op on CPU, where ops are eager)

  return step, torch_gpt.param_count(model)


def check_same_function(config: Config, tokens) -> float:
  """Max |loss difference| of the two models on jaxlm's initial params (copied into PyTorch)."""
  c = config.model
  params = jax.tree.map(np.asarray, transformer.init(c, jax.random.key(0)))
  model = torch_gpt.GPT(c.vocab_size, c.d_model, c.n_layers, c.n_heads, c.max_seq_len,
                        norm_eps=c.norm_eps, init_std=c.init_std)
  D, ly = c.d_model, params["layers"]
  t = lambda a: torch.from_numpy(np.array(a))  # a writable copy
  with torch.no_grad():
    model.embed.weight.copy_(t(params["embed"]))
    model.pos_embed.weight.copy_(t(params["pos_embed"]))
    model.final_norm.weight.copy_(t(params["final_norm"]["scale"]))
    model.final_norm.bias.copy_(t(params["final_norm"]["bias"]))
    for i, b in enumerate(model.blocks):
      a, m = ly["attn"], ly["mlp"]
      # jaxlm stores (in, out) matrices; nn.Linear keeps (out, in).
      b.qkv.weight.copy_(t(np.concatenate([a[k][i].reshape(D, D) for k in ("wq", "wk", "wv")],
                                          1).T))
      b.qkv.bias.copy_(t(np.concatenate([a[k][i].reshape(D) for k in ("bq", "bk", "bv")])))
      b.proj.weight.copy_(t(a["wo"][i].reshape(D, D).T))
      b.proj.bias.copy_(t(a["bo"][i]))
      b.fc.weight.copy_(t(m["w_in"][i].T))
      b.fc.bias.copy_(t(m["b_in"][i]))
      b.fc_out.weight.copy_(t(m["w_out"][i].T))
      b.fc_out.bias.copy_(t(m["b_out"][i]))
      for name in ("attn_norm", "mlp_norm"):
        getattr(b, name).weight.copy_(t(ly[name]["scale"][i]))
        getattr(b, name).bias.copy_(t(ly[name]["bias"][i]))
    tok = tokens[0]
    logits = model(torch.from_numpy(tok[:, :-1].astype(np.int64)))
    torch_nll = torch.nn.functional.cross_entropy(
        logits.transpose(1, 2), torch.from_numpy(tok[:, 1:].astype(np.int64)),
        reduction="none").numpy()
  jax_logits = transformer.apply(params, tok[:, :-1], c)
  jax_nll = -np.take_along_axis(np.asarray(jax.nn.log_softmax(jax_logits)),
                                tok[:, 1:, None], -1)[..., 0]
  return float(np.abs(jax_nll - torch_nll).max())


def parse_size(text: str) -> tuple[int, int]:
  """"6x256" -> (6, 256)."""
  layers, _, width = text.lower().partition("x")
  return int(layers), int(width)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", nargs="+", default=["4x128", "6x256", "8x512"],
                      help="LAYERSxWIDTH, head dim 64")
  parser.add_argument("--steps", type=int, default=3, help="timed steps per block")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps (compilation)")
  # 8 rounds of 3 rather than 3 of 5 (until 2026-12-07): on a shared 2-core VM one
  # run's ratio moved by +-10% with 3 rounds; more, shorter blocks follow the drift.
  parser.add_argument("--rounds", type=int, default=8,
                      help="alternating blocks of --steps timed steps per contender")
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--seq_len", type=int, default=256)
  parser.add_argument("--vocab", type=int, default=2048)
  parser.add_argument("--variants", nargs="+", default=["train.loss_chunk=0"],
                      help="one jaxlm row each: comma-separated config overrides")
  parser.add_argument("--check", action="store_true",
                      help="first check both models compute the same loss on the same params")
  parser.add_argument("--quick", action="store_true", help="smoke run: one tiny size, 2 steps")
  parser.add_argument("--malloc", choices=("reuse", "default"), default="reuse",
                      help="reuse: glibc keeps freed memory, as jaxlm's command lines set it "
                      "(jaxlm.malloc; applies to both frameworks); default: glibc's defaults")
  parser.add_argument("--out", default="benchmarks/results/train_throughput.json")
  args = parser.parse_args()
  # Before the first JAX computation, as jaxlm.cli.start does (threads keep their arenas).
  args.malloc_reused = args.malloc == "reuse" and malloc.reuse_freed_memory()
  if args.quick:
    args.sizes, args.steps, args.warmup, args.seq_len, args.batch_size = ["2x64"], 2, 1, 64, 4
    args.rounds = 1
  args.gpu = jax.default_backend() == "gpu" and torch.cuda.is_available()
  if jax.default_backend() != "cpu" and not args.gpu:
    print(f"warning: jaxlm runs on {jax.default_backend()} but PyTorch has no GPU (CPU wheel?): "
          "the ratio compares different devices")
  if not args.gpu:
    torch_gpt.set_threads()
  peak = loggers.peak_flops() if args.gpu else None
  tokens_per_step = args.batch_size * args.seq_len
  rows = []
  for size in args.sizes:
    layers, width = parse_size(size)
    base = make_config(layers, width, args)
    counts = transformer.param_count(base.model)
    tokens = token_batches(base, 2)
    if args.check:
      print(f"{size}: max |nll jaxlm - nll PyTorch| on the same params: "
            f"{check_same_function(base, tokens):.2e}", flush=True)
    row = {"size": size, "layers": layers, "width": width, "heads": base.model.n_heads,
           "params_jaxlm": counts["total"], "load_before": os.getloadavg()[0]}
    steps = {f"jaxlm {v}": jaxlm_step(config_io.apply_overrides(base, v.split(",")), tokens)
             for v in args.variants}
    steps["torch"], row["params_torch"] = torch_step(base, tokens, args)
    row.update(time_steps(steps, args.warmup, args.steps, args.rounds))
    row["load_after"] = os.getloadavg()[0]
    per_token = transformer.flops_per_token(base.model, args.seq_len)["total"]
    for key in [k for k in row if k.startswith("jaxlm ") or k == "torch"]:
      r = row[key]
      r["tokens_per_sec"] = tokens_per_step / r["step_s"]
      r["mfu"] = r["tokens_per_sec"] * per_token / peak if peak else None
    for variant in args.variants:
      j = row[f"jaxlm {variant}"]
      j["round_ratios"] = [tb / jb for jb, tb in zip(j["block_s"], row["torch"]["block_s"])]
    print(f"{size}: params jaxlm {counts['total']:,} torch {row['params_torch']:,} "
          f"({'match' if counts['total'] == row['params_torch'] else 'MISMATCH'}); "
          f"load {row['load_before']:.2f} -> {row['load_after']:.2f}", flush=True)
    rows.append(row)

  print(f"\nbatch {args.batch_size} x length {args.seq_len}, vocab {args.vocab}, float32, "
        f"AdamW; median of {args.rounds} x {args.steps} steps after {args.warmup} warm-up; "
        f"{torch.get_num_threads()} PyTorch threads")
  header = ["model", "params", "jaxlm variant", "jaxlm tokens/s", "PyTorch tokens/s",
            "jaxlm / PyTorch", "per round"] + (["jaxlm MFU", "PyTorch MFU"] if peak else [])
  table = []
  for row in rows:
    t = row["torch"]
    for variant in args.variants:
      j = row[f"jaxlm {variant}"]
      table.append([f"{row['layers']} x {row['width']}", f"{row['params_jaxlm'] / 1e6:.2f}M",
                    variant, f"{j['tokens_per_sec']:,.0f}", f"{t['tokens_per_sec']:,.0f}",
                    f"{j['tokens_per_sec'] / t['tokens_per_sec']:.2f}",
                    f"{min(j['round_ratios']):.2f}-{max(j['round_ratios']):.2f}"]
                   + ([f"{j['mfu']:.1%}", f"{t['mfu']:.1%}"] if peak else []))
  print(report.table(header, table))
  report.write(args.out, {
      "torch_threads": torch.get_num_threads(), "batch_size": args.batch_size,
      "seq_len": args.seq_len, "vocab": args.vocab, "steps": args.steps,
      "warmup": args.warmup, "rounds": args.rounds, "loadavg_end": os.getloadavg(),
      "rows": rows})


if __name__ == "__main__":
  main()
