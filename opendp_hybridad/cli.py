"""The ``opendp-hybridad`` command: ``analyse`` an expression, run the ``demo``."""

from __future__ import annotations

import argparse
import decimal
import json
import math
import sys
from collections.abc import Sequence

from opendp_hybridad import validation
from opendp_hybridad.errors import DeclarationError, HybridADError, NotLipschitzError

PROG = "opendp-hybridad"
#: the longest time budget one certificate may be given (seconds)
MAX_TIME_BUDGET = 3600.0


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``opendp-hybridad: error: ...`` on stderr, exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{PROG}: error: {' '.join(message.split())}\n")


def _checked(check, name: str, *extra):
    """An argparse ``type`` that parses a number and applies one of :mod:`opendp_hybridad.validation`'s checks."""

    def parse(text: str):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number") from None
        try:
            return check("value", value, *extra)
        except DeclarationError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = name  # argparse names the type in its messages
    return parse


def _parse_bound(text: str) -> tuple[str, float, float]:
    name, sep, rng = text.partition("=")
    lo, sep2, hi = rng.partition(":")
    if not sep or not sep2 or not name.strip():
        raise argparse.ArgumentTypeError(f"bound {text!r} must look like NAME=LO:HI")
    try:
        return name.strip(), float(lo), float(hi)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bound {text!r}: LO and HI must be numbers") from None


def _json_safe(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _analyse(args: argparse.Namespace) -> int:
    from opendp_hybridad.symbolic import Field, RecordFunction, Schema

    fields = {}
    for name, lo, hi in args.bound:
        if name in fields:
            raise HybridADError(f"field {name!r} is bounded twice")
        fields[name] = Field(lo, hi)
    schema = Schema(fields)
    try:
        # the text is parsed from a whitelist (opendp_hybridad.symbolic.parse), never evaluated
        fn = RecordFunction(args.expression, schema)
    except HybridADError:
        raise
    except (RecursionError, MemoryError):
        raise DeclarationError("the expression is too large to declare") from None
    except Exception as exc:  # an accepted expression the later stages cannot handle: one line, no traceback
        detail = " ".join(str(exc).split())[:200]
        raise DeclarationError(f"the expression could not be declared ({type(exc).__name__}: {detail})") from None
    try:
        analysis = fn.analyse(norm=args.norm, tolerance=args.tolerance, time_budget=args.time_budget)
    except NotLipschitzError as exc:
        # a function that may jump has a certified range but no Lipschitz constant
        return _report_jump(fn, exc, args)
    if args.json:
        print(json.dumps(_json_safe(analysis.to_dict()), indent=2))
        return 0
    lip = analysis.lipschitz
    rng = analysis.range
    print(f"f = {fn.expr}")
    print(f"box: {schema}")
    print(f"range enclosure: [{rng.lower:.10g}, {rng.upper:.10g}]"
          f"   (attained at least [{rng.argmin.value:.10g}, {rng.argmax.value:.10g}])")
    print(f"Lipschitz bound {lip.quantity} <= {lip.upper:.10g}")
    print(f"  witness {lip.witness.value:.10g} at {lip.witness.point}")
    print(f"  ratio bound/witness {lip.ratio:.6f}   gap {lip.gap:.3g}   "
          f"{'converged' if lip.converged else 'time budget reached'} after {lip.boxes} boxes, {lip.elapsed:.3f} s")
    print("per-field partial bounds sup |df/dx|:")
    for name, cert in analysis.partials.items():
        print(f"  {name:>12s} <= {cert.upper:.10g}   (witness {cert.witness.value:.10g}, ratio {cert.ratio:.4f})")
    return 0


def _report_jump(fn, exc: NotLipschitzError, args: argparse.Namespace) -> int:
    rng = fn.range(tolerance=args.tolerance, time_budget=args.time_budget)
    if args.json:
        report = {"function": str(fn.expr), "range": [rng.lower, rng.upper], "range_witnesses": rng.to_dict(),
                  "lipschitz": {"upper": None, "error": str(exc)}, "partials": {}}
        print(json.dumps(_json_safe(report), indent=2))
    else:
        print(f"f = {fn.expr}")
        print(f"range enclosure: [{rng.lower:.10g}, {rng.upper:.10g}]")
        print(f"no Lipschitz bound: {exc}")
    return 0


def _up(value: float, digits: int = 6) -> str:
    """``value`` printed to ``digits`` significant digits, never below it: the printed text reads back as
    a float at least ``value`` (an epsilon shown is still an upper bound; a multiplier copied from the
    output and re-run gives at most the epsilon shown)."""
    text = f"{value:.{digits}g}"
    if not math.isfinite(value) or float(text) >= value:
        return text
    context = decimal.Context(prec=digits, rounding=decimal.ROUND_CEILING)
    return format(context.plus(decimal.Decimal(value)).normalize(context), "g")


def _exact(value: float) -> str:
    """``value`` as short as it reads back exactly (a target as the user gave it)."""
    text = f"{value:g}"
    return text if float(text) == value else repr(value)


def _privacy_dp_sgd(args: argparse.Namespace) -> int:
    from opendp_hybridad.dpsgd.accounting import dp_sgd_calibration, dp_sgd_epsilon

    sigma = args.noise_multiplier
    if sigma is not None and args.target_epsilon is not None:
        raise DeclarationError("give either --noise-multiplier or --target-epsilon, not both")
    if args.accountant == "pld":
        raise DeclarationError("DP-SGD's noise is a lattice Gaussian, whose proven accounting is RDP only (no PLD is "
                               "proven for it); use --accountant rdp or leave it out")
    if args.batch_size > args.n:
        raise DeclarationError("--batch-size must be at most --n")
    # the step count is checked before any accountant runs (memory and time grow with it)
    validation.steps(args.n, args.batch_size, args.epochs)
    if sigma is None:
        if args.target_epsilon is None:
            raise HybridADError("give --noise-multiplier, or --target-epsilon to calibrate one")
        # the report at the calibrated multiplier, computed once by the accountant that met the target
        report = dp_sgd_calibration(args.target_epsilon, args.delta, args.n, args.batch_size, args.epochs, args.sampling)
        sigma = report["noise_multiplier"]
    else:
        report = dp_sgd_epsilon(args.n, args.batch_size, sigma, args.epochs, args.delta, args.sampling)
    if args.json:
        print(json.dumps(_json_safe(report), indent=2))
        return 0
    print(f"DP-SGD: n={args.n}, batch size {args.batch_size} ({args.sampling} sampling, q={report['sampling_probability']:.5f}), "
          f"noise multiplier {_up(sigma)}, {args.epochs:g} epochs = {report['steps']} steps")
    print(f"  epsilon at delta={args.delta:g}:  {_up(report['epsilon'])}   (rounded up; proven RDP of the lattice "
          "Gaussian DP-SGD adds, converted)")
    if "target_epsilon" in report:
        met = f"epsilon {_up(report['epsilon'])} <= target {_exact(report['target_epsilon'])}"
        if report["at_smallest_allowed"]:
            print(f"  the target is met at the smallest allowed noise multiplier ({validation.MIN_NOISE_MULTIPLIER:g}): "
                  f"{met}; the search goes no lower")
        else:
            print(f"  calibrated: {met}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from opendp_hybridad.demo import run_demo

    run_demo()
    return 0


def build_parser() -> argparse.ArgumentParser:
    from opendp_hybridad import __version__

    parser = _Parser(prog=PROG, description="Hybrid automatic differentiation for differential privacy.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    an = sub.add_parser("analyse", aliases=["analyze"], help="certify the range and Lipschitz constant of an expression")
    an.add_argument("expression", help="an expression in sympy syntax, e.g. 'a*w/h**2'")
    an.add_argument("--bound", "-b", action="append", type=_parse_bound, default=[], metavar="NAME=LO:HI",
                    help="the box of one field (repeat for each field)")
    an.add_argument("--norm", default="2", help="norm of the gradient: 1, 2 or inf (default 2)")
    an.add_argument("--tolerance", type=_checked(validation.positive_finite, "--tolerance"), default=1e-3,
                    help="stop refining when bound/witness - 1 is below this (positive, finite)")
    an.add_argument("--time-budget", type=_checked(validation.positive_finite, "--time-budget", MAX_TIME_BUDGET), default=5.0,
                    help=f"seconds per certificate, at most {MAX_TIME_BUDGET:g} (the bound stays sound)")
    an.add_argument("--json", action="store_true", help="print one JSON object")
    an.set_defaults(run=_analyse)

    privacy = sub.add_parser("privacy", help="privacy accounting")
    privacy_sub = privacy.add_subparsers(dest="privacy_command", required=True, parser_class=_Parser)
    sgd = privacy_sub.add_parser("dp-sgd", help="proven epsilon of DP-SGD (RDP of its lattice Gaussian noise)")
    sgd.add_argument("--n", type=_checked(validation.count, "--n", validation.MAX_SIZE), required=True,
                     help="number of training examples (a whole number, 1 to 2^53)")
    sgd.add_argument("--batch-size", type=_checked(validation.count, "--batch-size", validation.MAX_SIZE), required=True,
                     help="(expected) batch size, a whole number from 1 to --n")
    sgd.add_argument("--noise-multiplier", type=_checked(validation.noise_multiplier, "--noise-multiplier"), default=None,
                     help=f"noise standard deviation / clip norm (from {validation.MIN_NOISE_MULTIPLIER:g} "
                          f"to {validation.MAX_NOISE_MULTIPLIER:g})")
    sgd.add_argument("--target-epsilon", type=_checked(validation.positive_finite, "--target-epsilon"), default=None,
                     help="calibrate the noise multiplier to this epsilon (instead of --noise-multiplier)")
    sgd.add_argument("--epochs", type=_checked(validation.positive_finite, "--epochs"), required=True,
                     help=f"passes over the data (positive; at most {validation.MAX_STEPS:.0e} steps in all)")
    sgd.add_argument("--delta", type=_checked(validation.probability, "--delta"), required=True,
                     help="delta, strictly between 0 and 1")
    sgd.add_argument("--sampling", choices=["poisson", "shuffle"], default="poisson")
    sgd.add_argument("--accountant", choices=["pld", "rdp"], default=None,
                     help="rdp (the default and the only proven one for DP-SGD's lattice noise); pld is refused")
    sgd.add_argument("--json", action="store_true", help="print one JSON object")
    sgd.set_defaults(run=_privacy_dp_sgd)

    demo = sub.add_parser("demo", help="the paper's BMI analysis on the bundled body-measurement data")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except HybridADError as exc:
        print(f"{PROG}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
