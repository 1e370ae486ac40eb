"""Command line of scaling-law studies (`python -m jaxlm.scaling`): sweep, collect, fit, predict.

  python -m jaxlm.scaling sweep --name shakespeare_isoflop      # list its runs
  python -m jaxlm.scaling collect --sweep DIR --out runs.csv [--flops_convention 6ND|exact]
  python -m jaxlm.scaling fit --runs runs.csv --out fit.json [--plots DIR] [--n_boot 200]
  python -m jaxlm.scaling predict --fit fit.json --flops 1e21
  python -m jaxlm.scaling transfer --runs runs.csv --out transfer.json [--plot transfer.png]
"""

from __future__ import annotations

import argparse
import collections
import json
import shlex
import sys

from jaxlm import cli, registry
from jaxlm.scaling import collect, fit, plots, sweeps, transfer


def _sweep(args):
  if not args.name:
    for name, line in registry.names("sweep").items():
      print(f"{name:28s} {line}")
    return
  spec = registry.sweep(args.name)
  for run in sweeps.expand(spec):
    branch = f" [branch of {run.after} at step {run.at_step}]" if run.after else ""
    print(f"{run.name:28s} " + " ".join(shlex.quote(o) for o in run.overrides) + branch)


def _collect(args):
  rows = collect.collect(args.sweep, args.flops_convention)
  collect.write_csv(rows, args.out)
  counts = collections.Counter(row["status"] for row in rows)
  spent = sum(row.get("spent_flops") or 0.0 for row in rows if row["status"] == "ok")
  print(f"{len(rows)} runs -> {args.out}: "
        + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        + f"; {spent:.3g} FLOPs spent by the finished ones ({args.flops_convention})")


def _fit(args):
  data = collect.read_runs(args.runs)
  if args.flops_convention:
    data["flops_convention"] = args.flops_convention
  result = fit.fit(data, n_boot=args.n_boot, seed=args.seed)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  p, iso = result["parametric"], result["isoflop"]
  print(f"parametric: E={p['E']:.4g} A={p['A']:.4g} B={p['B']:.4g} alpha={p['alpha']:.3f} "
        f"beta={p['beta']:.3f} a={p['a']:.3f} b={p['b']:.3f} (converged: {p['converged']})")
  if iso["a"] is not None:
    print(f"isoflop: a={iso['a']:.3f} {iso['ci']['a']} b={iso['b']:.3f} {iso['ci']['b']}")
  if iso.get("warning"):
    print(f"isoflop: warning: {iso['warning']}")
  for b in iso["budgets"]:
    if "rejected" in b:
      print(f"isoflop: budget {b['flops']:.3g} rejected: {b['rejected']}")
  if args.plots:
    for path in plots.write_all(data, result, args.plots):
      print(f"wrote {path}")


def _predict(args):
  with open(args.fit) as f:
    try:
      fit_json = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{args.fit} is not JSON ({e}): expected a fit.json") from None
  if "parametric" not in fit_json:
    raise ValueError(f"{args.fit} has no 'parametric' key: expected a fit.json from "
                     "`python -m jaxlm.scaling fit`")
  if not args.flops > 0:
    raise ValueError(f"--flops={args.flops} is invalid: expected a positive number")
  out = fit.predict(fit_json, args.flops)

  def fmt(value, ci):
    return f"{value:.4g} [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else f"{value:.4g}"

  p = out["parametric"]
  print(f"C = {args.flops:.3g} FLOPs ({out['flops_convention']}); 95% bootstrap intervals")
  print(f"parametric: N_opt {fmt(p['n_opt'], p['ci']['n_opt'])}  "
        f"D_opt {fmt(p['d_opt'], p['ci']['d_opt'])}  loss {fmt(p['loss'], p['ci']['loss'])}")
  if "isoflop" in out:
    i = out["isoflop"]
    print(f"isoflop:    N_opt {fmt(i['n_opt'], i['ci']['n_opt'])}  "
          f"D_opt {fmt(i['d_opt'], i['ci']['d_opt'])}")


def _transfer(args):
  result = transfer.analyze(transfer.read(args.runs))
  if not result:
    raise ValueError(f"{args.runs} has no runs with a learning rate and a width")
  with open(args.out, "w") as f:
    json.dump(transfer.to_json(result), f, indent=2)
  print(transfer.markdown(result))
  if args.plot:
    plots.lr_transfer(result, args.plot)
    print(f"wrote {args.plot}")


def _downstream(args):
  data = collect.read_runs(args.runs)
  columns = plots.downstream(data, args.plot, args.metric)
  best = plots.best_per_budget(data)
  tasks = [c.rsplit("/", 1)[0] for c in columns]
  print(f"{args.metric} of each budget's lowest-loss run ({len(data['loss'])} runs in "
        f"{args.runs}):")
  print(f"{'FLOPs':>9} {'params':>8} {'loss':>7} " + " ".join(f"{t:>18}" for t in tasks))
  for i in best:
    print(f"{data['flops'][i]:9.3g} {data['params'][i]:8.3g} {data['loss'][i]:7.4f} "
          + " ".join(f"{data['downstream'][c][i]:18.4f}" for c in columns))
  print(f"wrote {args.plot}")


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m jaxlm.scaling",
                                   description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("sweep", help="list registered sweeps, or one sweep's runs")
  p.add_argument("--name", default="")
  p = sub.add_parser("collect", help="a sweep directory to runs.csv")
  p.add_argument("--sweep", required=True, help="sweep directory (launcher's --dir)")
  p.add_argument("--out", required=True)
  p.add_argument("--flops_convention", default="6ND", choices=("6ND", "exact"),
                 help="6ND (the sweeps' design: IsoFLOP groups are equal in it) or exact")
  p = sub.add_parser("fit", help="fit runs.csv; write fit.json and plots")
  p.add_argument("--runs", required=True)
  p.add_argument("--out", required=True)
  p.add_argument("--plots", default="")
  p.add_argument("--n_boot", type=int, default=200)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--flops_convention", default="", choices=("", "exact", "6ND"),
                 help="label for the flops column (default: from runs.csv)")
  p = sub.add_parser("predict", help="compute-optimal N, D and loss at a budget")
  p.add_argument("--fit", required=True)
  p.add_argument("--flops", required=True, type=float)
  p = sub.add_parser("transfer", help="best learning rate per width and parameterization")
  p.add_argument("--runs", required=True, help="runs.csv of a LrTransferSpec sweep")
  p.add_argument("--out", required=True, help="transfer.json to write")
  p.add_argument("--plot", default="", help="PNG: loss against lr, a panel per parameterization")
  p = sub.add_parser("downstream", help="harness task scores against compute and loss")
  p.add_argument("--runs", required=True, help="runs.csv with <task>/<metric> columns")
  p.add_argument("--plot", required=True, help="PNG to write")
  p.add_argument("--metric", default="acc", help="the metric of each task (default acc)")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  with cli.failing(ValueError, KeyError, FileNotFoundError):
    {"sweep": _sweep, "collect": _collect, "fit": _fit, "predict": _predict,
     "transfer": _transfer, "downstream": _downstream}[args.command](args)
