"""Lazy imports: ``import opendp_hybridad`` and the CLI load only what they use, and every public name still resolves.

Each check runs in a fresh interpreter (the test process has OpenDP and the rest loaded
already). The checks are on which modules are in ``sys.modules``, never on time.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import opendp_hybridad

PACKAGE_ROOT = Path(opendp_hybridad.__file__).resolve().parent
PACKAGES = ["opendp_hybridad", "opendp_hybridad.analysis", "opendp_hybridad.compile", "opendp_hybridad.dpsgd",
            "opendp_hybridad.frame", "opendp_hybridad.individual", "opendp_hybridad.nn", "opendp_hybridad.symbolic"]
#: loaded only by the features that use them
HEAVY = ["opendp", "dp_accounting", "numba", "numexpr", "scipy", "pandas", "polars", "matplotlib", "dask", "distributed"]
BMI = ["analyse", "a*w/h**2", "--bound", "a=18:90", "--bound", "w=40:200", "--bound", "h=1.4:2.2"]


def _run(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON object as its last line."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _loaded_after(code: str, watch: list[str]) -> list[str]:
    """The top-level packages of ``watch`` that are in ``sys.modules`` after ``code`` runs in a fresh interpreter."""
    body = textwrap.indent(textwrap.dedent(code).strip(), "    ")
    return _run("import contextlib, io, json, sys\n"
                f"with contextlib.redirect_stdout(io.StringIO()):\n{body}\n"
                f"print(json.dumps(sorted(m for m in {watch!r} if m in sys.modules)))\n")


def test_import_loads_nothing_heavy():
    # not even numpy or sympy: the front end loads them when a schema or function is first used
    assert _loaded_after("import opendp_hybridad", [*HEAVY, "sympy", "numpy"]) == []


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["analyse", "--help"], ["privacy", "dp-sgd", "--help"]])
def test_cli_version_and_help_load_nothing_heavy(argv):
    code = f"""
        from opendp_hybridad.cli import main
        try:
            main({argv!r})
        except SystemExit as exc:
            assert exc.code == 0, exc.code
    """
    assert _loaded_after(code, [*HEAVY, "sympy", "numpy"]) == []


def test_cli_analyse_loads_neither_opendp_nor_accounting_nor_kernels():
    code = f"""
        from opendp_hybridad.cli import main
        assert main({[*BMI, "--json"]!r}) == 0
        assert main({BMI!r}) == 0
    """
    # scipy too: the witness search polishes its best point by a numpy compass search (scipy.optimize
    # alone took 0.5-2.6 s to import, most of the command's time)
    assert _loaded_after(code, HEAVY) == []


def test_a_whole_analysis_loads_no_scipy():
    code = """
        import opendp_hybridad as hd
        fn = hd.RecordFunction("a*w/h**2 + tanh(a*h)", hd.Schema(a=(18, 90), w=(40, 200), h=(1.4, 2.2)))
        fn.analyse(time_budget=0.5)
    """
    assert _loaded_after(code, HEAVY) == []


def test_a_subpackage_loads_only_the_modules_of_the_names_taken():
    # the frame domain's module needs pandas, not the measurements' OpenDP and dp-accounting
    code = """
        from opendp_hybridad.frame import FrameDomain, make_frame_domain, prepare_frame
        import opendp_hybridad.dpsgd, opendp_hybridad.individual, opendp_hybridad.nn, opendp_hybridad.compile
    """
    assert _loaded_after(code, ["opendp", "dp_accounting", "numba", "scipy", "opendp_hybridad.frame.measurements"]) == []


def test_the_pandas_path_and_the_dask_engine_module_load_no_dask():
    # the Dask engine is optional: the pandas measurements never import it, and its own module imports dask
    # only when a query runs on a Dask frame
    code = """
        import pandas as pd
        import opendp.prelude as dp
        dp.enable_features("contrib", "honest-but-curious")
        import opendp_hybridad as hd
        import opendp_hybridad.frame.dask_engine
        schema = hd.Schema(a=(0, 10))
        release = hd.frame.make_private_sum(schema, hd.RecordFunction("a", schema), epsilon=1.0)
        release(pd.DataFrame({"a": [1.0, 2.0]}))
    """
    assert _loaded_after(code, ["dask", "distributed"]) == []


def test_validation_needs_no_numpy_and_still_knows_its_types():
    result = _run("""
        import json, sys
        from opendp_hybridad import validation
        checks = [validation.real("x", 1.5), validation.count("n", 3.0)]
        without = "numpy" in sys.modules
        import numpy as np
        for bad in (np.True_, np.bool_(False)):
            for check in (validation.real, validation.count):
                try:
                    check("x", bad)
                except validation.DeclarationError:
                    continue
                raise AssertionError("a numpy bool was accepted")
        checks += [validation.real("x", np.float32(0.5)), validation.count("n", np.int8(7)), validation.count("n", np.float64(4))]
        print(json.dumps({"numpy_before": without, "checks": checks}))
    """)
    assert result == {"numpy_before": False, "checks": [1.5, 3, 0.5, 7, 4]}


def _type_checking_names(package: str) -> list[tuple[str, str]]:
    """``(module, name)`` of each import under ``if TYPE_CHECKING:`` in ``package``'s ``__init__``."""
    path = PACKAGE_ROOT.joinpath(*package.split(".")[1:], "__init__.py")
    pairs = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for stmt in node.body:
                assert isinstance(stmt, ast.ImportFrom) and stmt.module, ast.unparse(stmt)
                pairs += [(stmt.module, alias.name) for alias in stmt.names]
    return pairs


# the check, run twice in a fresh interpreter: names first (each resolved lazily from a bare package), and
# every submodule first (a submodule imported later must not replace a public name of the same spelling,
# e.g. opendp_hybridad.release the function vs the module, opendp_hybridad.symbolic.parse)
_RESOLVE = """
    import importlib, json, pkgutil, sys, types
    import opendp_hybridad
    packages, static, submodules_first = {packages!r}, {static!r}, {submodules_first!r}
    if submodules_first:
        for info in pkgutil.walk_packages(opendp_hybridad.__path__, "opendp_hybridad."):
            importlib.import_module(info.name)
    problems = {{}}
    for package in packages:
        module = importlib.import_module(package)
        found = []
        for name in module.__all__:
            try:
                value = getattr(module, name)
            except AttributeError as exc:
                found.append(f"{{name}}: {{exc}}")
                continue
            if isinstance(value, types.ModuleType):
                found.append(f"{{name}} is the module {{value.__name__}}")
            if name not in dir(module):
                found.append(f"{{name}} is missing from dir()")
        for source, name in static[package]:
            if getattr(importlib.import_module(source), name) is not getattr(module, name, None):
                found.append(f"{{name}} is not {{source}}.{{name}}")
        namespace = {{}}
        try:
            exec(f"from {{package}} import *", namespace)
        except (AttributeError, ImportError) as exc:
            found.append(f"from-import * fails: {{exc}}")
        if set(namespace) - {{"__builtins__"}} != set(module.__all__):
            found.append("from-import * differs from __all__")
        problems[package] = found
    print(json.dumps(problems))
"""


@pytest.fixture(scope="module", params=[False, True], ids=["names-first", "submodules-first"])
def resolution(request) -> dict[str, list[str]]:
    static = {package: _type_checking_names(package) for package in PACKAGES}
    return _run(_RESOLVE.format(packages=PACKAGES, static=static, submodules_first=request.param))


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_resolves(resolution, package):
    assert resolution[package] == []


def _eager_names(package: str) -> list[str]:
    """Names ``package``'s ``__init__`` imports at its top level (outside ``if TYPE_CHECKING:``)."""
    path = PACKAGE_ROOT.joinpath(*package.split(".")[1:], "__init__.py")
    return [alias.asname or alias.name for node in ast.parse(path.read_text()).body if isinstance(node, ast.ImportFrom)
            for alias in node.names]


@pytest.mark.parametrize("package", PACKAGES)
def test_public_names_are_listed_once_for_type_checkers(package):
    # every public name is either imported eagerly or listed under TYPE_CHECKING (what type checkers and
    # IDEs see), and never both; the run-time objects are checked against these in test_every_public_name_resolves
    static = [name for _, name in _type_checking_names(package)]
    eager = [name for name in _eager_names(package) if name not in ("TYPE_CHECKING", "lazy_exports")]
    assert len(set(static)) == len(static)
    assert not set(static) & set(eager)
    assert set(static) | set(eager) == set(__import__(package, fromlist=["__all__"]).__all__)
