"""DP-SGD on a small CNN (CPU): opendp-hybridad against Opacus (hooks and ghost clipping) and a non-private torch step.

    python bench/bench_opacus_cnn.py [--batches 64 256] [--rounds 11] [--json bench/results/opacus_cnn.json]
    python bench/bench_opacus_cnn.py --markdown bench/results/opacus_cnn.json   # the docs section, from the JSON

The network (torch spelling; ``from_torch`` gives ours, the same weights on both sides):
``Conv2d(1->8, 3x3) -> Tanh -> AvgPool2d(2) -> Conv2d(8->16, 3x3) -> Tanh -> AvgPool2d(2) -> Flatten
-> Linear(400->10)``, softmax cross-entropy, on 1x28x28 inputs in [-1, 1] (shapes 8x26x26, 8x13x13,
16x11x11, 16x5x5, 400, 10; 5,258 parameters). Clip norm ``C`` = the median per-example gradient
norm at the start (half the examples are clipped). Weight sets: the box ``|w| <= 1`` per module.

(a) **clipped sum**: the per-example clipped gradient sum ``sum_i min(1, C / ||g_i||) g_i``, forward
    pass included. Ours: ``Sequential.gradient_sum(params, x, y, clip=C)`` (float64 numpy).
    Opacus hooks: ``make_private(grad_sample_mode="hooks")``, forward, backward, then the
    optimizer's ``clip_and_accumulate`` (per-sample gradients, clipped, summed). Opacus ghost:
    ``make_private(grad_sample_mode="ghost")`` with ``DPLossFastGradientClipping``: forward and
    its two backward passes (the clipped sum lands in ``p.grad``); Opacus 1.6 has ghost norms
    for ``Linear`` (and ``Embedding``) only, so its conv layers take per-sample gradients
    (fast gradient clipping) there. Torch non-private: forward and ``loss(sum).backward()``.
(b) **full step**: sum, noise, update. Ours: ``DPSGD(model, mode="clip", noise_multiplier=1).step``
    (clipped sum, discrete Gaussian noise from our table sampler covering the float64 sum,
    optimizer update, projection onto the weight set). Opacus: forward, backward and
    ``optimizer.step()`` (clip, Gaussian noise ``torch.normal`` with noise multiplier 1, SGD),
    hooks and ghost. Torch non-private: forward, backward, ``torch.optim.SGD.step``.

Ours runs in float64 only. The peers run in float64 (the same arithmetic as ours) and in
float32 (what users run), reported as separate, labelled rows. Before timing, at float64:
our per-example norms and clipped sum against the ones rebuilt from Opacus's per-sample
gradients (relative 1e-10), Opacus ghost against Opacus hooks (1e-10), our unclipped sum
against torch's (1e-10), and ours against Opacus's own clipped sum (Opacus divides by
``norm + 1e-6``, so only to about 1e-6; the measured difference is recorded).

Timing: every variant once per round, rounds interleaved (ours, peer, peer, ..., ours, ...),
after warm-up rounds; min and median of the rounds, and the ratio of medians (ours / peer:
below 1 means ours is faster). Twice: one BLAS/torch thread (threadpoolctl and
``torch.set_num_threads(1)``) and the default threads. The machine (CPU, cores, numpy's BLAS
and its kernel, torch, thread counts) and the load average go into the JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable

import machine as bench_machine
import numpy as np

CNN = ("Conv2d(1->8, 3x3) -> Tanh -> AvgPool2d(2) -> Conv2d(8->16, 3x3) -> Tanh -> AvgPool2d(2) -> Flatten -> "
       "Linear(400->10), softmax cross-entropy, inputs 1x28x28")
PEERS = ("opacus_hooks", "opacus_ghost", "torch_nonprivate")
PEER_NAMES = {"opacus_hooks": "Opacus hooks", "opacus_ghost": "Opacus ghost", "torch_nonprivate": "torch non-private"}
TOLERANCE = 1e-10


_load = bench_machine.load


def _git_commit() -> dict:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", os.path.basename(__file__)], cwd=here, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "?", "script_modified": None}
    return {"commit": commit, "script_modified": bool(dirty)}


def machine(torch, opacus) -> dict:
    """CPU model, cores, numpy's BLAS and its kernel, torch and its threads (bench/machine.py's record)."""
    return bench_machine.machine(torch=True)


def build_torch(torch):
    torch.manual_seed(0)
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.Tanh(), nn.AvgPool2d(2), nn.Conv2d(8, 16, 3), nn.Tanh(), nn.AvgPool2d(2),
                         nn.Flatten(), nn.Linear(16 * 5 * 5, 10)).double()


def _flat(tensors) -> np.ndarray:
    return np.concatenate([np.asarray(t.detach().double().reshape(-1).numpy()) for t in tensors])


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


class Setup:
    """One batch size: our model and trainer, the peers' modules and optimizers (float64 and float32), the closures."""

    def __init__(self, B: int, torch, seed: int = 0):
        from opacus import PrivacyEngine

        from opendp_hybridad.dpsgd import DPSGD
        from opendp_hybridad.nn.torch_bridge import WeightSet, from_torch

        self.B = B
        net = build_torch(torch)
        self.model, self.params = from_torch(net, input_bound=1.0, input_shape=(1, 28, 28), weight_sets=WeightSet(1.0, 1.0))
        rng = np.random.default_rng(seed)
        self.x = rng.uniform(-1.0, 1.0, (B, 1, 28, 28))
        self.y = rng.integers(0, 10, B)
        self.C = float(np.median(self.model.per_example_norms(self.params, self.x, self.y)))
        self.flat = np.empty(self.model.num_parameters)
        self.trainer = DPSGD(self.model, noise_multiplier=1.0, batch_size=B, epochs=1, learning_rate=0.1, mode="clip", clip=self.C)
        self.noise = self.trainer.noise_function(self.model.num_parameters)
        self.net = net
        self.variants: dict[str, dict[str, Callable[[], object]]] = {"sum": {}, "step": {}}
        model, params, x, y, C = self.model, self.params, self.x, self.y, self.C
        self.variants["sum"]["ours"] = lambda: model.gradient_sum(params, x, y, clip=C, out=self.flat)
        self.variants["step"]["ours"] = lambda: self.trainer.step(params, x, y, self.noise)
        self.peers: dict[tuple[str, str, str], object] = {}
        for dtype_name, dtype in (("float64", torch.float64), ("float32", torch.float32)):
            xt, yt = torch.tensor(x, dtype=dtype), torch.tensor(y)
            data = torch.utils.data.TensorDataset(xt, yt)
            for path in ("sum", "step"):
                reduction = "sum" if path == "sum" else "mean"
                lr = 0.0 if path == "sum" else 0.1
                noise = 0.0 if path == "sum" else 1.0
                for mode in ("hooks", "ghost"):
                    m = copy.deepcopy(net).to(dtype)
                    engine = PrivacyEngine()
                    out = engine.make_private(module=m, optimizer=torch.optim.SGD(m.parameters(), lr=lr),
                                              criterion=torch.nn.CrossEntropyLoss(reduction=reduction),
                                              data_loader=torch.utils.data.DataLoader(data, batch_size=B), noise_multiplier=noise,
                                              max_grad_norm=C, grad_sample_mode=mode, poisson_sampling=False,
                                              loss_reduction=reduction)
                    if mode == "ghost":
                        gm, opt, crit, _ = out
                    else:
                        gm, opt, _ = out
                        crit = torch.nn.CrossEntropyLoss(reduction=reduction)
                    self.peers[(path, mode, dtype_name)] = (gm, opt, crit)
                    self.variants[path][f"opacus_{mode}:{dtype_name}"] = self._opacus(path, mode, gm, opt, crit, xt, yt)
                plain = copy.deepcopy(net).to(dtype)
                sgd = torch.optim.SGD(plain.parameters(), lr=0.1)
                self.peers[(path, "torch", dtype_name)] = (plain, sgd)
                self.variants[path][f"torch_nonprivate:{dtype_name}"] = self._plain(path, plain, sgd, torch.nn.CrossEntropyLoss(
                    reduction=reduction), xt, yt)

    @staticmethod
    def _opacus(path, mode, gm, opt, crit, xt, yt):
        if path == "sum" and mode == "hooks":
            def run():
                opt.zero_grad()
                crit(gm(xt), yt).backward()
                opt.clip_and_accumulate()  # per-sample norms, clip factors, the clipped sum in p.summed_grad
        elif path == "sum":
            def run():
                opt.zero_grad()
                crit(gm(xt), yt).backward()  # two backward passes; the clipped sum is p.grad
        else:
            def run():
                opt.zero_grad()
                crit(gm(xt), yt).backward()
                opt.step()  # clip (hooks), noise, SGD
        return run

    @staticmethod
    def _plain(path, net, sgd, loss, xt, yt):
        def run():
            sgd.zero_grad()
            loss(net(xt), yt).backward()
            if path == "step":
                sgd.step()
        return run

    def check(self, torch) -> dict:
        """The same answers, at float64, before any timing (module docstring)."""
        model, params, x, y, C = self.model, self.params, self.x, self.y, self.C
        ours_norms = model.per_example_norms(params, x, y)
        ours_sum = np.empty(model.num_parameters)
        model.gradient_sum(params, x, y, clip=C, out=ours_sum)
        _, opt, _ = self.peers[("sum", "hooks", "float64")]
        self.variants["sum"]["opacus_hooks:float64"]()
        ps = list(opt.params)
        samples = [p.grad_sample.reshape(self.B, -1).double() for p in ps]
        per_sample = torch.cat(samples, dim=1).numpy()  # (B, parameters), torch parameter order = our flat order
        opacus_norms = np.linalg.norm(per_sample, axis=1)
        exact = np.minimum(1.0, C / opacus_norms)
        rebuilt = exact @ per_sample
        hooks_sum = _flat([p.summed_grad for p in ps])
        _, gopt, _ = self.peers[("sum", "ghost", "float64")]
        self.variants["sum"]["opacus_ghost:float64"]()
        ghost_sum = _flat([p.grad for p in gopt.params])
        plain, _ = self.peers[("sum", "torch", "float64")]
        self.variants["sum"]["torch_nonprivate:float64"]()
        torch_sum = _flat([p.grad for p in plain.parameters()])
        ours_plain = np.empty(model.num_parameters)
        model.gradient_sum(params, x, y, clip=None, out=ours_plain)
        result = {
            "norms_vs_opacus_per_sample": _rel(ours_norms, opacus_norms),
            "clipped_sum_vs_rebuilt_from_opacus_per_sample": _rel(ours_sum, rebuilt),
            "clipped_sum_max_entry_error_vs_rebuilt": float(np.max(np.abs(ours_sum - rebuilt)) / np.max(np.abs(rebuilt))),
            "opacus_ghost_vs_opacus_hooks": _rel(ghost_sum, hooks_sum),
            "unclipped_sum_vs_torch": _rel(ours_plain, torch_sum),
            "clipped_sum_vs_opacus_hooks_own (Opacus divides by norm + 1e-6)": _rel(ours_sum, hooks_sum),
            "clipped_examples": int(np.sum(opacus_norms > C)),
        }
        for key in ("norms_vs_opacus_per_sample", "clipped_sum_vs_rebuilt_from_opacus_per_sample",
                    "clipped_sum_max_entry_error_vs_rebuilt", "opacus_ghost_vs_opacus_hooks", "unclipped_sum_vs_torch"):
            if not result[key] <= TOLERANCE:
                raise AssertionError(f"batch {self.B}: {key} = {result[key]:.3g} > {TOLERANCE:g}")
        if not result["clipped_sum_vs_opacus_hooks_own (Opacus divides by norm + 1e-6)"] <= 1e-5:
            raise AssertionError(f"batch {self.B}: ours and Opacus's clipped sums differ by more than its 1e-6 explains")
        return result


def timed_rounds(variants: dict[str, Callable[[], object]], rounds: int, warmup: int) -> dict[str, list[float]]:
    """Every variant once per round, in order, rounds interleaved; the warm-up rounds are not kept."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(warmup + rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - start
            if r >= warmup:
                times[name].append(elapsed)
    return times


@contextlib.contextmanager
def threads(torch, count: int | None):
    """One BLAS/OpenMP/torch thread (``count=1``), or the defaults (``None``)."""
    import threadpoolctl

    if count is None:
        yield torch.get_num_threads()
        return
    before = torch.get_num_threads()
    with threadpoolctl.threadpool_limits(limits=count):
        torch.set_num_threads(count)
        try:
            yield torch.get_num_threads()
        finally:
            torch.set_num_threads(before)


def run(args) -> dict:
    import opacus
    import torch

    warnings.filterwarnings("ignore")  # Opacus's secure-RNG and hook notices; from_torch's default sets are declared
    import opendp.prelude as dp

    dp.enable_features("contrib")
    info = machine(torch, opacus)
    results = {"benchmark": "DP-SGD on a small CNN against Opacus", "network": CNN, "command": " ".join(["python", *sys.argv]),
               **_git_commit(), "date": time.strftime("%Y-%m-%d"), "machine": info, "rounds": args.rounds, "warmup": args.warmup,
               "ours_dtype": "float64", "ratio": "ours median / peer median (below 1: ours faster)", "checks": {}, "runs": []}
    setups = {}
    for B in args.batches:
        setups[B] = s = Setup(B, torch)
        results["parameters"] = s.model.num_parameters
        results["checks"][str(B)] = {"clip": s.C, **s.check(torch)}
        print(f"batch {B}: clip {s.C:.4g}, checks " + ", ".join(f"{k} {v:.2g}" for k, v in results["checks"][str(B)].items()
                                                                   if k != "clip"))
    for label, count in (("1", 1), ("default", None)):
        with threads(torch, count) as torch_threads:
            import threadpoolctl

            blas_threads = {p["internal_api"]: p["num_threads"] for p in threadpoolctl.threadpool_info()}
            for B in args.batches:
                for path in ("sum", "step"):
                    load_before = _load()
                    times = timed_rounds(setups[B].variants[path], args.rounds, args.warmup)
                    entry = {"threads": label, "torch_threads": torch_threads, "pool_threads": blas_threads, "batch": B, "path": path,
                             "load_before": load_before, "load_after": _load(), "variants": {}}
                    ours = statistics.median(times["ours"])
                    for name, ts in times.items():
                        med = statistics.median(ts)
                        entry["variants"][name] = {"min_s": min(ts), "median_s": med, "ours_over_peer": ours / med, "times_s": ts}
                    results["runs"].append(entry)
                    print(f"threads {label:>7s} batch {B:4d} {path:4s} load {entry['load_after']}: " + ", ".join(
                        f"{n} {v['median_s'] * 1e3:.1f} ms ({v['ours_over_peer']:.2f})" for n, v in entry["variants"].items()))
    results["load_end"] = _load()
    if args.profile:
        results["profile"] = profile(setups)
    return results


def _kernel_times(s: Setup, repeats: int) -> tuple[float, dict[str, float]]:
    """The clipped sum's time (s) and each part kernel's share (ms per call), the kernels wrapped at their classes meanwhile."""
    model = s.model
    spent: dict[str, float] = {}
    patched: list[tuple[type, str, Callable]] = []
    index = {id(p): i for i, p in enumerate(model.parts)}

    def label(obj) -> str:
        return f"{index[id(obj)]}:{obj.describe()}" if id(obj) in index else "loss"

    def wrap(cls: type, name: str) -> None:
        original = cls.__dict__[name]

        def timed(self, *args, **kwargs):
            t = time.perf_counter()
            try:
                return original(self, *args, **kwargs)
            finally:
                key = f"{label(self)}.{name}"
                spent[key] = spent.get(key, 0.0) + time.perf_counter() - t
        setattr(cls, name, timed)
        patched.append((cls, name, original))

    for cls in {type(p) for p in model.parts}:
        for name in ("forward", "backward", "per_example_squared_norms", "accumulate", "clipped_rows", "accumulate_rows"):
            owner = next((c for c in cls.__mro__ if name in c.__dict__), None)
            if owner is not None and all((owner, name) != (c, n) for c, n, _ in patched):
                wrap(owner, name)
    wrap(type(model.loss), "delta")
    rounds: list[dict[str, float]] = []
    totals: list[float] = []
    try:
        s.variants["sum"]["ours"]()
        for _ in range(repeats):
            spent.clear()
            t = time.perf_counter()
            s.variants["sum"]["ours"]()
            totals.append(time.perf_counter() - t)
            rounds.append(dict(spent))
    finally:
        for cls, name, original in reversed(patched):
            setattr(cls, name, original)
    # the medians over the calls (the machine is shared), in ms per clipped sum
    kernels = {k: statistics.median(r[k] for r in rounds) * 1e3 for k in rounds[0]}
    kernels = dict(sorted(kernels.items(), key=lambda kv: -kv[1]))
    total = statistics.median(totals)
    kernels["rest of gradient_sum (blocks, clip factors, scaled deltas)"] = statistics.median(
        (t - sum(r.values())) * 1e3 for t, r in zip(totals, rounds, strict=True))
    return total, kernels


def profile(setups: dict, repeats: int = 9) -> dict:
    """Where our path's time goes, one thread: each part's kernels timed in place (wrapped at the class), then the step's phases.

    Kernels: ``forward`` (conv: im2col and the product), ``backward`` (conv: the product and
    col2im), ``per_example_squared_norms`` and ``accumulate`` (dense), ``clipped_rows`` and
    ``accumulate_rows`` (conv: each example's row computed once, its norm, then the batch sum
    of the scaled rows); the loss's ``delta``; the rest of
    ``gradient_sum`` (blocks, clip factors, scaling the deltas). The step: the clipped sum,
    the noise (``TrainingHistory``'s own split) and the update with the projection. Medians of ``repeats`` calls.
    """
    import threadpoolctl

    from opendp_hybridad.dpsgd.sgd import TrainingHistory

    out: dict = {}
    with threadpoolctl.threadpool_limits(limits=1):
        for B, s in setups.items():
            total, kernels = _kernel_times(s, repeats)
            split = []
            for _ in range(repeats):
                history = TrainingHistory()
                t = time.perf_counter()
                s.trainer.step(s.params, s.x, s.y, s.noise, history=history)
                whole = time.perf_counter() - t
                split.append((whole, history.gradient_seconds, history.noise_seconds))
            step, grad, noise = (statistics.median(v) * 1e3 for v in zip(*split, strict=True))
            step /= 1e3
            phases = {"clipped sum": grad, "noise": noise, "update and projection (rest)": step * 1e3 - grad - noise}
            rows = _block_rows(s.model)
            out[str(B)] = {"sum_ms": total * 1e3, "sum_kernels_ms": kernels, "step_ms": step * 1e3, "step_phases_ms": phases,
                           "block_rows": rows, "load": _load()}
            print(f"profile, batch {B}, one thread: clipped sum {total * 1e3:.1f} ms in blocks of {rows} rows")
            for k, v in kernels.items():
                print(f"   {v:8.2f} ms  {k}")
            print(f"   step {step * 1e3:.1f} ms: " + ", ".join(f"{k} {v:.2f} ms" for k, v in phases.items()))
    return out


def _block_rows(model) -> int:
    return model._block_rows()


def markdown(results: dict) -> str:
    m = results["machine"]
    blas = m["numpy_blas"]
    kernel = next((p.get("architecture") for p in m["threadpools"] if p.get("user_api") == "blas"), "?")
    lines = ["## DP-SGD on a small CNN against Opacus (`python bench/bench_opacus_cnn.py --json bench/results/opacus_cnn.json`)", "",
             f"Commit {results['commit']}{' (script modified)' if results.get('script_modified') else ''}, {results['date']}, "
             f"{m['usable_cores']} cores ({m['cpu']}), Python {m['python']}, numpy {m['numpy']} "
             f"({blas.get('name', '?')} {blas.get('version', '')}, kernel {kernel}), torch {m['torch']}, opacus {m['opacus']}. "
             f"Load average {results['runs'][0]['load_before'][0]:.1f}-{max(r['load_after'][0] for r in results['runs']):.1f} "
             "(other work on the machine). "
             f"Network: {results['network']}; {results['parameters']:,} parameters; clip = the median per-example norm. "
             "(a) *sum*: the per-example clipped gradient sum, forward pass included (ours: `Sequential.gradient_sum`; "
             "Opacus hooks: backward + `clip_and_accumulate`; Opacus ghost: `DPLossFastGradientClipping`'s two backward "
             "passes, ghost norms for the `Linear` only, as Opacus 1.6 has no conv norm sampler; torch: plain backward). "
             "(b) *step*: sum, noise, update (ours: `DPSGD(mode='clip').step`, discrete Gaussian noise and projection; "
             "Opacus: `optimizer.step()` with noise multiplier 1; torch: `SGD.step`). "
             "Ours is float64 numpy in every row; the peers are float64 (same arithmetic) or float32 (what users run). "
             f"{results['rounds']} rounds after {results['warmup']} warm-up, interleaved; medians in ms, "
             "ratio = ours median / peer median (below 1: ours faster). Before timing (float64): our norms and clipped sum "
             "equal those rebuilt from Opacus's per-sample gradients to 1e-10 relative, Opacus ghost equals hooks to 1e-10.", "",
             "| threads | batch | path | peers' dtype | ours | Opacus hooks | Opacus ghost | torch non-private | "
             "ours/hooks | ours/ghost | ours/torch |",
             "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results["runs"]:
        v = r["variants"]
        for dtype in ("float64", "float32"):
            peers = [v[f"{p}:{dtype}"] for p in PEERS]
            ghost = peers[1]["ours_over_peer"]
            lines.append(f"| {r['threads']} | {r['batch']} | {r['path']} | {dtype} | {v['ours']['median_s'] * 1e3:.1f} | "
                         + " | ".join(f"{p['median_s'] * 1e3:.1f}" for p in peers) + " | "
                         + f"{peers[0]['ours_over_peer']:.2f} | " + (f"**{ghost:.2f}**" if ghost < 1 else f"{ghost:.2f}")
                         + f" | {peers[2]['ours_over_peer']:.2f} |")
    lines += ["", _verdict(results)]
    if results.get("profile"):
        lines += ["", _profile_line(results["profile"])]
    return "\n".join(lines) + "\n"


def _verdict(results: dict) -> str:
    """Where ours beats Opacus ghost (ratio of medians below 1), per peers' dtype and threads."""
    parts = []
    for dtype in ("float64", "float32"):
        for threads_label in dict.fromkeys(r["threads"] for r in results["runs"]):
            rows = [r for r in results["runs"] if r["threads"] == threads_label]
            lost = [f"batch {r['batch']} {r['path']} ({r['variants'][f'opacus_ghost:{dtype}']['ours_over_peer']:.2f})" for r in rows
                    if r["variants"][f"opacus_ghost:{dtype}"]["ours_over_peer"] >= 1]
            where = "at every batch size, sum and step" if not lost else "not at " + ", ".join(lost)
            threads_text = "one thread" if threads_label == "1" else "default threads"
            parts.append(f"{dtype} peers, {threads_text}: {where}")
    r0 = next(r for r in results["runs"] if r["threads"] == "default")
    slowdown = [r["variants"]["ours"]["median_s"] / next(q for q in results["runs"] if q["threads"] == "1" and q["batch"] == r["batch"]
                                                      and q["path"] == r["path"])["variants"]["ours"]["median_s"]
                for r in results["runs"] if r["threads"] == "default"]
    return ("Faster than Opacus ghost? " + "; ".join(parts) + ". Default threads here means "
            f"torch {r0['torch_threads']} and BLAS/OpenMP " + ", ".join(f"{k} {v}" for k, v in r0["pool_threads"].items())
            + " threads on a 2-core machine (its load in the header): those rows measure contention as much as the code "
              f"(ours takes {min(slowdown):.1f}-{max(slowdown):.1f}x its one-thread time there; `gradient_sum` keeps BLAS on "
              "one thread for blocks of fewer than 2^22 rows times parameters and on the caller's threads above), "
              "so the one-thread rows are the comparison to read.")


def _profile_line(prof: dict) -> str:
    """Our clipped sum's time by kind of work (from ``--profile``, one thread)."""
    out = []
    for B, p in prof.items():
        k = p["sum_kernels_ms"]
        total = sum(k.values())  # the medians of the parts (and of the rest), so the shares add up to 100%

        def share(pred, k=k, total=total):
            return 100 * sum(v for name, v in k.items() if pred(name)) / total
        groups = {
            "conv forward (im2col and product)": share(lambda n: "conv" in n and n.endswith(".forward")),
            "conv backward (product and col2im)": share(lambda n: "conv" in n and n.endswith(".backward")),
            "average pooling forward and backward": share(lambda n: "avgpool" in n),
            "per-example norms and rows (the DP-specific work)": share(lambda n: n.endswith((
                ".per_example_squared_norms", ".accumulate", ".clipped_rows", ".accumulate_rows"))),
            "tanh, loss, dense, flatten": share(lambda n: any(t in n for t in ("tanh", "loss", "dense", "flatten"))),
            "the rest (blocks, clip factors, Python)": share(lambda n: n.startswith("rest")),
        }
        phases = p["step_phases_ms"]
        out.append(f"batch {B} ({p['sum_ms']:.0f} ms, blocks of {p['block_rows']} rows): "
                   + ", ".join(f"{name} {v:.0f}%" for name, v in groups.items())
                   + f"; the step adds noise {phases['noise']:.2f} ms and the update {phases['update and projection (rest)']:.2f} ms")
    return ("Where our time goes (`--profile`: each part's kernels timed in place, one thread, medians; the profile's own "
            "overhead and the load inflate the totals): " + "; ".join(out) + ".")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--profile", action="store_true", help="also time our path's kernels one by one (one thread)")
    p.add_argument("--json", default=None, help="write the results to this file")
    p.add_argument("--markdown", default=None, metavar="JSON", help="print the docs section from a results file and exit")
    args = p.parse_args()
    if args.markdown:
        with open(args.markdown) as fh:
            print(markdown(json.load(fh)), end="")
        return
    results = run(args)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    print(markdown(results), end="")
    if not all(math.isfinite(v["median_s"]) for r in results["runs"] for v in r["variants"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
