"""Device mesh, logical-axis rules, and the shardings of params and batches.

Model code names logical axes ("embed", "heads", ...); one rules table in
`MeshConfig.rules` maps each to mesh axes ("data", "fsdp", "tensor"). A mesh
axis that does not divide a dimension is dropped for that tensor (it stays
replicated along that axis) rather than failing deep inside XLA.
"""

from __future__ import annotations

import contextlib
import contextvars
import math

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxlm.config import ConfigError, MeshConfig
from jaxlm.params import is_spec

MESH_AXES = ("data", "fsdp", "tensor")

_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("jaxlm_sharding", default=None)


def mesh_shape(config: MeshConfig, n_devices: int) -> tuple[int, int, int]:
  """Resolves -1 in (data, fsdp, tensor) and checks the product is n_devices."""
  sizes = [config.data, config.fsdp, config.tensor]
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if n_devices % known:
      raise ConfigError(f"mesh: {n_devices} devices are not divisible by "
                        f"the fixed axes' product {known}")
    sizes[sizes.index(-1)] = n_devices // known
  if math.prod(sizes) != n_devices:
    raise ConfigError(f"mesh.data*mesh.fsdp*mesh.tensor = {math.prod(sizes)} but "
                      f"{n_devices} devices are available; set one axis to -1 to fill")
  return tuple(sizes)


def make_mesh(config: MeshConfig, devices=None) -> jax.sharding.Mesh:
  """A (data, fsdp, tensor) mesh over all (or the given) devices."""
  devices = jax.devices() if devices is None else devices
  # Auto axes: XLA's partitioner propagates shardings from the params, batch and
  # the constraints the model places (jax >= 0.8 defaults to Explicit axes).
  return jax.make_mesh(mesh_shape(config, len(devices)), MESH_AXES, devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(axes, rules, shape=None, mesh=None) -> P:
  """PartitionSpec for logical `axes` under `rules`.

  With a mesh, mesh axes of size 1, or whose size does not divide the
  dimension in `shape`, are left out, so such a tensor is replicated along
  them instead of failing to compile.
  """
  table = dict(rules)
  used: set[str] = set()
  out = []
  for i, name in enumerate(axes):
    if name not in table:
      raise ConfigError(f"logical axis {name!r} has no rule in mesh.rules; "
                        f"known: {', '.join(table)}")
    chosen: list[str] = []
    for ax in table[name]:
      if ax in used:
        continue
      if mesh is not None:
        size = mesh.shape[ax]
        shard = math.prod(mesh.shape[a] for a in chosen) * size
        if size == 1 or (shape is not None and shape[i] % shard):
          continue
      chosen.append(ax)
      used.add(ax)
    out.append(tuple(chosen) if len(chosen) > 1 else (chosen[0] if chosen else None))
  return P(*out)


def tree_shardings(specs, mesh, rules):
  """NamedShardings for a tree of ParamSpec (anything with .axes and .shape)."""
  return jax.tree.map(lambda s: NamedSharding(mesh, logical_to_spec(s.axes, rules, s.shape,
                                                                     mesh)),
                      specs, is_leaf=is_spec)


def like_params(state, params, param_shardings, default: NamedSharding):
  """Shardings for an optimizer state: each leaf that ends in a parameter's path with
  that parameter's shape (Adam's moments, Muon's momentum) takes its sharding; the
  rest (step counters, Adafactor's factored row and column moments) take `default`.

  Matching by key path, not by the state's structure, works for any optax
  transformation, including those that split the params (Muon, masked decay).
  """
  by_path = {}
  for path, p in jax.tree_util.tree_leaves_with_path(params):
    by_path[_dict_keys(path)] = p.shape
  flat = dict(zip(by_path, jax.tree.leaves(param_shardings,
                                           is_leaf=lambda x: isinstance(x, NamedSharding))))

  def pick(path, leaf):
    keys = _dict_keys(path)
    for start in range(len(keys)):
      shape = by_path.get(keys[start:])
      if shape is not None:
        return flat[keys[start:]] if shape == getattr(leaf, "shape", None) else default
    return default

  return jax.tree_util.tree_map_with_path(pick, state)


def _dict_keys(path) -> tuple:
  return tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))


def batch_sharding(mesh, rules, ndim: int = 2) -> NamedSharding:
  """Sharding of a (B, T, ...) batch: B over the rule for "batch"."""
  spec = logical_to_spec(("batch",), rules, mesh=mesh)
  return NamedSharding(mesh, P(*spec, *([None] * (ndim - 1))))


@contextlib.contextmanager
def activation_rules(mesh, rules):
  """Within this context, constrain() pins activations to the rules on `mesh`."""
  token = _ACTIVE.set((mesh, tuple(rules)))
  try:
    yield
  finally:
    _ACTIVE.reset(token)


def platform() -> str:
  """The platform the computation being traced is built for: that of the active mesh's
  devices (compile-only TPU devices under `--dry_run --topology`), else JAX's default
  backend. Choices that depend on the hardware (the layer loop, the attention kernel)
  ask this, not jax.default_backend()."""
  active = _ACTIVE.get()
  if active is not None:
    return active[0].devices.flat[0].platform
  return jax.default_backend()


def constrain(x: jax.Array, axes: tuple[str, ...]) -> jax.Array:
  """with_sharding_constraint by logical axes; a no-op outside activation_rules()."""
  active = _ACTIVE.get()
  if active is None:
    return x
  mesh, rules = active
  spec = logical_to_spec(axes, rules, x.shape, mesh)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def gathered(x: jax.Array, axes: tuple[str, ...]) -> jax.Array:
  """A parameter with logical `axes`, gathered whole over the "fsdp" mesh axis where it is
  used (FSDP's all-gather), whose gradient is constrained back to the parameter's own
  sharding.

  A plain constraint's transpose pins the gradient to the gathered layout too, so the
  devices' partial gradients are all-reduced whole and then sliced to each device's
  shard; here they are reduce-scattered into it, half the bytes. A no-op outside
  activation_rules() or where the parameter is not split over "fsdp".
  """
  active = _ACTIVE.get()
  if active is None:
    return x
  mesh, rules = active
  own = logical_to_spec(axes, rules, x.shape, mesh)
  whole = P(*(tuple(a for a in spec_axes(e) if a != "fsdp") or None for e in own))
  if whole == own:
    return x
  own, whole = NamedSharding(mesh, own), NamedSharding(mesh, whole)

  @jax.custom_vjp
  def gather(v):
    return jax.lax.with_sharding_constraint(v, whole)

  gather.defvjp(lambda v: (gather(v), None),
                lambda _, g: (jax.lax.with_sharding_constraint(g, own),))
  return gather(x)


def axis_size(name: str) -> int:
  """The size of mesh axis `name` of the active rules' mesh (1 outside activation_rules())."""
  active = _ACTIVE.get()
  return 1 if active is None else active[0].shape.get(name, 1)


def spec_axes(entry) -> tuple[str, ...]:
  """The mesh axes one PartitionSpec entry names (None, a name, or a tuple of names)."""
  if entry is None:
    return ()
  return (entry,) if isinstance(entry, str) else tuple(entry)


def over_batch(f, batched: tuple, replicated: tuple):
  """f(*batched, *replicated) on each device's own rows: a shard_map, manual over the mesh
  axes of the "batch" rule (the others stay automatic), where arrays in `batched` are
  split along their first axis and those in `replicated` whole on every such device.

  A value f accumulates over its rows in a loop (a weight's gradient summed over loss
  chunks) is then summed across devices once, after f, where a loop under automatic
  sharding all-reduced it in every iteration. Outside activation_rules(): just f.
  """
  active = _ACTIVE.get()
  if active is None:
    return f(*batched, *replicated)
  mesh, rules = active
  spec = logical_to_spec(("batch",), rules, batched[0].shape[:1], mesh)
  entry = spec[0] if len(spec) else None
  axes = spec_axes(entry)
  if not axes:
    return f(*batched, *replicated)
  rows = P(entry)
  return jax.shard_map(f, mesh=mesh, in_specs=(rows,) * len(batched) + (P(),) * len(replicated),
                       out_specs=rows, axis_names=set(axes), check_vma=False)(
                           *batched, *replicated)


def bytes_per_device(tree) -> np.ndarray:
  """Bytes of a tree of jax.Arrays held by each addressable device."""
  totals: dict = {}
  for leaf in jax.tree.leaves(tree):
    for shard in leaf.addressable_shards:
      totals[shard.device] = totals.get(shard.device, 0) + shard.data.nbytes
  return np.array([totals[d] for d in sorted(totals, key=lambda d: d.id)])
