"""A plain PyTorch GPT-2-style model and train step, matching jaxlm's gpt2-style config.

Mirrors jaxlm.models.transformer with positions="learned", norm="layernorm",
mlp="gelu", use_bias=True, tie_embeddings=True: the same parameter shapes and
count, the same init (normal(init_std), residual output projections scaled by
1/sqrt(2 L), zero biases, unit norm scales), and jaxlm.train.optim's optimizer
(global-norm clipping, then AdamW with decay on matrices only, linear warmup and
cosine decay). Used by benchmarks/train_throughput.py as the reference.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
  """One pre-LayerNorm layer: causal self-attention, then a GELU(tanh) MLP."""

  def __init__(self, d: int, n_heads: int, f: int, eps: float):
    super().__init__()
    self.n_heads = n_heads
    self.attn_norm = nn.LayerNorm(d, eps=eps)
    self.qkv = nn.Linear(d, 3 * d)
    self.proj = nn.Linear(d, d)
    self.mlp_norm = nn.LayerNorm(d, eps=eps)
    self.fc = nn.Linear(d, f)
    self.fc_out = nn.Linear(f, d)

  def forward(self, x):
    B, T, D = x.shape
    q, k, v = self.qkv(self.attn_norm(x)).split(D, dim=2)
    # (B, T, D) -> (B, heads, T, head_dim), the layout SDPA takes.
    q, k, v = (t.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2) for t in (q, k, v))
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    x = x + self.proj(o.transpose(1, 2).reshape(B, T, D))
    h = F.gelu(self.fc(self.mlp_norm(x)), approximate="tanh")
    return x + self.fc_out(h)


class GPT(nn.Module):
  """Token and learned position embeddings, L blocks, final LayerNorm, tied output layer."""

  def __init__(self, vocab_size: int, d_model: int, n_layers: int, n_heads: int,
               max_seq_len: int, d_ff: int = 0, norm_eps: float = 1e-5, init_std: float = 0.02):
    super().__init__()
    f = d_ff or 4 * d_model
    self.embed = nn.Embedding(vocab_size, d_model)
    self.pos_embed = nn.Embedding(max_seq_len, d_model)
    self.blocks = nn.ModuleList(Block(d_model, n_heads, f, norm_eps) for _ in range(n_layers))
    self.final_norm = nn.LayerNorm(d_model, eps=norm_eps)
    out_std = init_std / math.sqrt(2 * n_layers)  # as jaxlm: GPT-2's residual scaling
    for name, p in self.named_parameters():
      if name.endswith("bias"):
        nn.init.zeros_(p)
      elif "norm" in name:
        nn.init.ones_(p)
      elif name.endswith(("proj.weight", "fc_out.weight")):
        nn.init.normal_(p, std=out_std)
      else:
        nn.init.normal_(p, std=init_std)

  def forward(self, tokens):
    T = tokens.shape[1]
    x = self.embed(tokens) + self.pos_embed(torch.arange(T, device=tokens.device))
    for block in self.blocks:
      x = block(x)
    return F.linear(self.final_norm(x), self.embed.weight)  # tied: logits = x @ embed.T


def param_count(model: nn.Module) -> int:
  return sum(p.numel() for p in model.parameters())


def make_optimizer(model: GPT, optim, total_steps: int):
  """jaxlm.train.optim.make in PyTorch: AdamW (decay on Linear weights only) and its LR schedule."""
  # Decay matches jaxlm's ParamSpec.decay: matrices, not norms, biases or embeddings.
  decay = [p for n, p in model.named_parameters() if n.endswith("weight") and p.ndim == 2
           and "embed" not in n]
  no_decay = [p for n, p in model.named_parameters() if not any(p is q for q in decay)]
  opt = torch.optim.AdamW([{"params": decay, "weight_decay": optim.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=optim.lr, betas=(optim.b1, optim.b2), eps=optim.eps)
  warmup = min(optim.warmup_steps, max(total_steps - 1, 0))

  def factor(step: int) -> float:
    if step < warmup:
      return step / warmup
    if optim.schedule == "constant":
      return 1.0
    t = min(step - warmup, max(total_steps - warmup, 1)) / max(total_steps - warmup, 1)
    return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

  return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def train_step(model, opt, sched, inputs, targets, grad_clip: float) -> torch.Tensor:
  """One AdamW step on mean next-token cross-entropy; returns the loss (detached)."""
  logits = model(inputs)
  loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))
  loss.backward()
  if grad_clip > 0:
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
  opt.step()
  sched.step()
  opt.zero_grad(set_to_none=True)
  return loss.detach()


def set_threads() -> None:
  # Every core, as XLA's CPU backend uses; torch's default may pick fewer.
  torch.set_num_threads(os.cpu_count())
