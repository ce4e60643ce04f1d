"""``opendp-hybridad demo``: the paper's age-adjusted BMI analysis on real body measurements.

Everything up to the last step runs without data: the schema, the closed-form
gradient, the certificates. Only then is the compiled kernel applied to the
bundled data (507 adults, Heinz et al. 2003, via OpenIntro).
"""

from __future__ import annotations

import time

import numpy as np
import sympy

from opendp_hybridad.datasets import load_bdims
from opendp_hybridad.symbolic import Field, Schema


def bmi_schema() -> Schema:
    """The declared box of the paper's example: age in years, weight in kg, height in m."""
    # a missing value is replaced by a fixed, public typical value (data-independent)
    return Schema(
        age=Field(18, 90, missing="impute", impute=30),
        weight=Field(40, 200, missing="impute", impute=70),
        height=Field(1.4, 2.2, missing="impute", impute=1.7),
    )


def run_demo(print_fn=print) -> dict[str, float]:
    out = print_fn
    schema = bmi_schema()
    a, w, h = schema.symbols()
    bmi = schema.function(a * w / h**2, name="B")

    out("== 1. Declare the record (no data yet)")
    out(f"   {schema}")
    out(f"   B(age, weight, height) = {bmi.expr}")

    out("\n== 2. Closed forms")
    for name, d in bmi.gradient().items():
        out(f"   dB/d{name:<7s}= {d}")
    norm = bmi.gradient_norm(2)
    out(f"   ||grad B||_2  = {norm}")
    out(f"   LaTeX: {sympy.latex(norm)}")

    out("\n== 3. Certify over the declared box (still no data)")
    t0 = time.perf_counter()
    lip = bmi.lipschitz(norm=2)
    rng = bmi.range()
    parts = bmi.partial_bounds()
    elapsed = time.perf_counter() - t0
    out(f"   K = sup ||grad B||_2 <= {lip.upper:.6f}")
    out(f"     witness {lip.witness.value:.6f} at {_fmt(lip.witness.point)}: ratio {lip.ratio:.12f}, gap {lip.gap:.3g}")
    out(f"   range of B in [{rng.lower:.4f}, {rng.upper:.4f}] (attained at {_fmt(rng.argmin.point)} and {_fmt(rng.argmax.point)})")
    out("   impact of each feature alone, sup |dB/dx|:")
    for name, cert in parts.items():
        out(f"     {name:<7s}<= {cert.upper:.6f}")
    out(f"   certified in {elapsed * 1000:.1f} ms")
    out("   Sensitivity of a sum of B depends on the neighbouring relation:")
    out(f"     add/remove one person: max|B| = {rng.max_abs:.2f};  replace one person: width = {rng.width:.2f};")
    out(f"     move one person's fields by r (l2): K * r = {lip.upper:.2f} * r")

    out("\n== 4. Compile and apply to the bundled data")
    kernel = bmi.compile()
    data = load_bdims()
    values = kernel.value(data)
    norms = kernel.gradient_norm(data)
    out(f"   data: {len(data)} adults (Heinz et al. 2003, OpenIntro `bdims`); kernel backend {kernel.backend}")
    out(f"   B over the data: mean {values.mean():.2f}, min {values.min():.2f}, max {values.max():.2f}")
    out(f"   ||grad B||_2 over the data: max {norms.max():.2f} (certified bound over the box {lip.upper:.2f})")
    inside = bool(np.all((values >= rng.lower) & (values <= rng.upper)) and np.all(norms <= lip.upper))
    out(f"   every record's value and gradient norm lies within the certificates: {inside}")

    released = _private_release(bmi, data, out)
    return {"K": lip.upper, "range_lower": rng.lower, "range_upper": rng.upper, "records": float(len(data)), **released}


def _private_release(bmi, data, out) -> dict[str, float]:
    """Section 5: a private mean and count with OpenDP noise, and what the same noise guarantees per relation."""
    import opendp.prelude as dp

    from opendp_hybridad.accounting import accounting_of, compose_epsilon
    from opendp_hybridad.frame import feature_distance, make_frame_domain, make_private_mean, make_sum_of
    from opendp_hybridad.release import release

    # the demo is a user-level script: like any OpenDP user it enables the features it uses itself
    # (the library only asserts them); contrib for OpenDP's noise, honest-but-curious for the frame domain
    dp.enable_features("contrib", "honest-but-curious")
    epsilon = 1.0
    out(f"\n== 5. Private release with OpenDP (budget epsilon = {epsilon}, add/remove one person)")
    measurement = make_private_mean(bmi.schema, bmi, epsilon=epsilon)
    total, count = accounting_of(measurement).parts
    out(f"   sum of B: Laplace scale {total.scale:.2f} (sensitivity {total.sensitivity:.2f}, "
        f"epsilon {total.sensitivity / total.scale:.3f})")
    out(f"   count:    Laplace scale {count.scale:.2f} (sensitivity {count.sensitivity:.0f}, "
        f"epsilon {count.sensitivity / count.scale:.3f})")
    private_mean = release(measurement, data)
    true_mean = float(bmi.compile().value(data).mean())
    out(f"   private mean of B = {private_mean:.2f}   (true mean {true_mean:.2f}; released once, by OpenDP's samplers)")
    out(f"   total privacy loss reported by OpenDP: epsilon = {measurement.map(1):.4f}")
    report = compose_epsilon([measurement], delta=1e-6)
    out(f"   same two events in dp-accounting at delta=1e-6: RDP epsilon {report['epsilon_rdp']:.4f}, "
        f"PLD epsilon {report['epsilon_pld']:.4f}")

    out("\n   What the sum's noise (scale fixed above) guarantees under each neighbouring relation:")
    out(f"   {'relation':<44s} {'sensitivity':>12s} {'epsilon':>9s}")
    domain = make_frame_domain(bmi.schema)
    rows = [
        ("add or remove one person", dp.symmetric_distance(), 1),
        ("replace one person", dp.change_one_distance(), 1),
        ("one person's fields move by <= 1 (l2)", feature_distance(2), 1.0),
        ("one person's fields move by <= 0.01 (l2)", feature_distance(2), 0.01),
    ]
    for label, metric, d_in in rows:
        sensitivity = make_sum_of(domain, metric, bmi).map(d_in)
        out(f"   {label:<44s} {sensitivity:>12.2f} {sensitivity / total.scale:>9.4f}")
    return {"private_mean": private_mean, "true_mean": true_mean, "epsilon": float(measurement.map(1))}


def _fmt(point: dict[str, float]) -> str:
    return "(" + ", ".join(f"{k}={v:g}" for k, v in point.items()) + ")"
