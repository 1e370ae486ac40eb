"""Device mesh, logical-axis rules, and the shardings of params and batches.

Model code names logical axes ("embed", "heads", ...); one rules table in
`MeshConfig.rules` maps each to mesh axes ("data", "fsdp", "tensor"). A mesh
axis that does not divide a dimension is dropped for that tensor (it stays
replicated along that axis) rather than failing deep inside XLA.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxlm.config import ConfigError, MeshConfig
from jaxlm.params import is_spec

MESH_AXES = ("data", "fsdp", "tensor")

_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("jaxlm_sharding", default=None)
_PLATFORM: contextvars.ContextVar = contextvars.ContextVar("jaxlm_platform", default=None)


def make_mesh(config: MeshConfig, devices=None) -> jax.sharding.Mesh:
  """A (data, fsdp, tensor) mesh over all (or the given) devices; a -1 axis fills the rest."""
  devices = jax.devices() if devices is None else devices
  sizes, n_devices = [config.data, config.fsdp, config.tensor], len(devices)
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if n_devices % known:
      raise ConfigError(f"mesh: {n_devices} devices are not divisible by "
                        f"the fixed axes' product {known}")
    sizes[sizes.index(-1)] = n_devices // known
  if math.prod(sizes) != n_devices:
    raise ConfigError(f"mesh.data*mesh.fsdp*mesh.tensor = {math.prod(sizes)} but "
                      f"{n_devices} devices are available; set one axis to -1 to fill")
  # Auto axes: XLA's partitioner propagates shardings from the params, batch and
  # the constraints the model places (jax >= 0.8 defaults to Explicit axes).
  return jax.make_mesh(tuple(sizes), MESH_AXES, devices=devices,
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
    if name is None:  # an axis no rule splits (weights stacked for one product)
      out.append(None)
      continue
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
  sharding_of = lambda s: NamedSharding(mesh, logical_to_spec(s.axes, rules, s.shape, mesh))
  return jax.tree.map(sharding_of, specs, is_leaf=is_spec)


def like_params(state, params, param_shardings, default: NamedSharding):
  """Shardings for an optimizer state: each leaf that ends in a parameter's path with
  that parameter's shape (Adam's moments, Muon's momentum) takes its sharding; the
  rest (step counters, Adafactor's factored row and column moments) take `default`.

  Matching by key path, not by the state's structure, works for any optax
  transformation, including those that split the params (Muon, masked decay).
  """
  by_path = {_dict_keys(path): p.shape for path, p in jax.tree_util.tree_leaves_with_path(params)}
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


@contextlib.contextmanager
def on_each_device(axes: tuple[str, ...]):
  """Within this context, code inside a shard_map manual over the mesh `axes` (axes that
  split the batch and no parameter: each device group's own rows): the rules split nothing
  over `axes`, constraints and nested shard_maps take the context's abstract mesh,
  axis_size() is 1 for `axes`, and platform() still names the active mesh's platform."""
  if _ACTIVE.get() is None:
    raise RuntimeError("sharding.on_each_device is used inside activation_rules() only")
  rules = tuple((name, tuple(a for a in over if a not in axes)) for name, over in _ACTIVE.get()[1])
  mesh = jax.sharding.get_abstract_mesh()
  where, token = _PLATFORM.set(platform()), _ACTIVE.set((mesh, rules))
  try:
    yield
  finally:
    _ACTIVE.reset(token)
    _PLATFORM.reset(where)


def platform() -> str:
  """The platform the computation being traced is built for: that of the active mesh's
  devices (compile-only TPU devices under `--dry_run --topology`; inside on_each_device,
  whose abstract mesh has none, the one that context was entered on), else JAX's default
  backend. Choices that depend on the hardware (the layer loop, the attention kernel)
  ask this, not jax.default_backend()."""
  if _PLATFORM.get():
    return _PLATFORM.get()
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


def _batch_entry(rows: int):
  """(mesh, the PartitionSpec entry that splits `rows` rows of a batch, n: the number of
  pieces), or None outside activation_rules() or where the batch is not split."""
  active = _ACTIVE.get()
  if active is None:
    return None
  mesh, rules = active
  spec = logical_to_spec(("batch",), rules, (rows,), mesh)
  entry = spec[0] if len(spec) else None
  n = math.prod(mesh.shape[a] for a in spec_axes(entry))
  return (mesh, entry, n) if n > 1 else None


def batch_split(rows: int) -> tuple[tuple[str, ...], int]:
  """(the mesh axes the active rules split a batch of `rows` rows over, the number of
  pieces): ((), 1) outside activation_rules() or where the batch is not split."""
  where = _batch_entry(rows)
  return (spec_axes(where[1]), where[2]) if where else ((), 1)


def _own_and_batch(x, axes, rows):
  """(mesh, batch entry, n, x's own PartitionSpec (one entry per dim), its entries without
  the batch axes, the batch axes per dim, the batch axes x is not split over), or None
  where the batch is not split. A shard of the sum _sum_into_shard makes lies at
  P(*rest[i] + scatter[i]): x's own spec with each dim's batch axes last."""
  where = _batch_entry(rows)
  if where is None:
    return None
  mesh, entry, n = where
  own = logical_to_spec(axes, _ACTIVE.get()[1], x.shape, mesh)
  own = P(*own, *([None] * (x.ndim - len(own))))
  batch = spec_axes(entry)
  rest = tuple(tuple(a for a in spec_axes(e) if a not in batch) or None for e in own)
  scatter = tuple(tuple(a for a in spec_axes(e) if a in batch) for e in own)
  summed = tuple(a for a in batch if not any(a in s for s in scatter))
  return mesh, entry, n, own, rest, scatter, summed


def _sum_into_shard(g, scatter, summed):
  """Inside a shard_map: a device's partial sum g of a parameter's gradient -> its shard of
  the sum over devices: a reduce-scatter over the batch axes that split the parameter
  (FSDP) and an all-reduce over the others (data). Written out because XLA's CPU pipeline
  all-reduces a gradient whole and slices it."""
  for dim, over in enumerate(scatter):
    if over:
      g = jax.lax.psum_scatter(g, over, scatter_dimension=dim, tiled=True)
  return jax.lax.psum(g, summed) if summed else g


def _manual(*specs) -> set:
  return {a for spec in specs for e in spec for a in spec_axes(e)}


def _summed_spec(rest, scatter) -> P:
  """Where _sum_into_shard leaves a device's shard (_own_and_batch)."""
  return P(*((r or ()) + s or None for r, s in zip(rest, scatter)))


def device_copies(x: jax.Array, axes: tuple[str, ...], rows: int, gather_dtype=None) -> jax.Array:
  """(n, *x.shape): parameter x (logical `axes`), gathered whole over the batch's mesh axes
  and copied once to each of the n devices that split a batch of `rows` rows, along a new
  first axis split over those axes; x itself (no new axis) where the batch is not split.

  For a weight used on each device's own rows (an embedding lookup, the output
  projection; `per_device`): autodiff then sums the uses' gradients on each device, a
  (n, ...) array of partials that never moves, and this function's gradient reduces the
  sum across devices once, into x's own sharding. Used directly, each use's partial
  gradient is reduced where it is computed (a tied embedding's twice), and a lookup's
  scatter-add into a table split over "fsdp" reshards its (B, T, D) input through a full
  replication (XLA's "involuntary full rematerialization").

  gather_dtype: the copies are gathered in this dtype (the compute dtype its uses cast
  x to anyway) and cast back to x's, so that their gradient stays in x's dtype.
  """
  where = _own_and_batch(x, axes, rows)
  if where is None:
    return x
  mesh, entry, n, own, rest, scatter, summed = where
  copies = P(entry, *rest)
  reduce = jax.shard_map(lambda partial: _sum_into_shard(partial[0], scatter, summed), mesh=mesh,
                         in_specs=copies, out_specs=_summed_spec(rest, scatter),
                         axis_names=_manual(copies), check_vma=False)

  @jax.custom_vjp
  def copy(v):
    w = v if gather_dtype is None else v.astype(gather_dtype)
    return jax.lax.with_sharding_constraint(jnp.broadcast_to(w[None], (n, *v.shape)),
                                           NamedSharding(mesh, copies)).astype(v.dtype)

  copy.defvjp(lambda v: (copy(v), None),
              lambda _, g: (jax.lax.with_sharding_constraint(reduce(g), NamedSharding(mesh, own)),))
  return copy(x)


@dataclasses.dataclass(frozen=True)
class Split:
  """A matrix parameter left in its own sharding, with its logical axes, for split_matmul
  (layers.dense takes it in place of an array)."""
  value: jax.Array
  axes: tuple[str, ...]


def split_matmul(matmul, x: jax.Array, w: Split, n_in: int) -> jax.Array:
  """matmul(x, w) for a weight split over FSDP: gathered for the product (XLA's CPU
  pipeline gathers it once for the forward and backward passes), and its gradient summed
  over each device's own rows and reduce-scattered into its shard explicitly
  (_sum_into_shard), where XLA's CPU pipeline all-reduces it whole and slices it. x:
  (rows, ..., the n_in axes w contracts)."""
  where = _own_and_batch(w.value, w.axes, x.shape[0])
  if where is None:
    return matmul(x, w.value)
  mesh, entry, _, own, rest, scatter, summed = where
  whole = NamedSharding(mesh, P(*rest))
  lead = x.ndim - n_in
  x_spec = P(entry, *([None] * (lead - 1)), *rest[:n_in])
  dy_spec = P(entry, *([None] * (lead - 1)), *rest[n_in:])

  def local(x_l, dy_l):
    g = jnp.tensordot(x_l, dy_l.astype(x_l.dtype), axes=(list(range(lead)),) * 2,
                      preferred_element_type=jnp.float32)
    return _sum_into_shard(g, scatter, summed)

  weight_grad = jax.shard_map(local, mesh=mesh, in_specs=(x_spec, dy_spec),
                              out_specs=_summed_spec(rest, scatter),
                              axis_names=_manual(x_spec, dy_spec, P(*rest)), check_vma=False)

  @jax.custom_vjp
  def product(x, v):
    return matmul(x, jax.lax.with_sharding_constraint(v, whole))

  def backward(res, dy):
    x, v = res
    v_whole = jax.lax.with_sharding_constraint(v, whole)
    dx = jax.vjp(lambda x: matmul(x, v_whole), x)[1](dy)[0]
    g = jax.lax.with_sharding_constraint(weight_grad(x, dy), NamedSharding(mesh, own))
    return dx, g.astype(v.dtype)

  product.defvjp(lambda x, v: (product(x, v), (x, v)), backward)
  return product(x, w.value)


def per_device(f, copies: jax.Array, *batched: jax.Array) -> jax.Array:
  """f(copy, *rows) on each device: its copy (device_copies, (n, ...)) and its own rows of
  the `batched` arrays (split along their first axis), concatenated back along rows."""
  n = copies.shape[0]
  mesh, entry, _ = _batch_entry(batched[0].shape[0])
  split = [jax.lax.with_sharding_constraint(
      a.reshape(n, a.shape[0] // n, *a.shape[1:]), NamedSharding(mesh, P(entry)))
      for a in batched]
  out = jax.vmap(f)(copies, *split)
  return out.reshape(-1, *out.shape[2:])


def mesh_axes_of(x: jax.Array, axes: tuple[str, ...]) -> set:
  """The mesh axes the rules split x (logical `axes`) over on the active mesh (none outside
  activation_rules())."""
  active = _ACTIVE.get()
  if active is None:
    return set()
  return _manual(logical_to_spec(axes, active[1], x.shape, active[0]))


def axis_size(name: str) -> int:
  """The size of mesh axis `name` of the active rules' mesh (1 outside activation_rules(),
  and for an axis made manual by on_each_device)."""
  active = _ACTIVE.get()
  if active is None or name in getattr(active[0], "manual_axes", ()):
    return 1
  return active[0].shape.get(name, 1)


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
  where = _batch_entry(batched[0].shape[0])
  if where is None:
    return f(*batched, *replicated)
  mesh, entry, _ = where
  rows = P(entry)
  return jax.shard_map(f, mesh=mesh, in_specs=(rows,) * len(batched) + (P(),) * len(replicated),
                       out_specs=rows, axis_names=set(spec_axes(entry)), check_vma=False)(
                           *batched, *replicated)


def bytes_per_device(tree) -> np.ndarray:
  """Bytes of a tree of jax.Arrays held by each addressable device."""
  totals: dict = {}
  for leaf in jax.tree.leaves(tree):
    for shard in leaf.addressable_shards:
      totals[shard.device] = totals.get(shard.device, 0) + shard.data.nbytes
  return np.array([totals[d] for d in sorted(totals, key=lambda d: d.id)])
