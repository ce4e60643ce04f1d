#!/usr/bin/env bash
# Tumult Analytics in its own venv for bench/bench_tumult.py (never needed by the tests or CI).
#
#     bash bench/setup_tumult.sh        # creates .venv-tumult at the repository root; a second run changes nothing
#
# Tumult Analytics needs numpy < 2 and pandas < 2 (the project's venv has numpy 2 and pandas 3),
# so it lives in a separate Python 3.11 venv; its Spark needs Java 17 (or 11) on PATH.
# PYTHON=... picks another interpreter (default python3.11).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv-tumult"
python="${PYTHON:-python3.11}"
command -v java >/dev/null || echo "warning: no java on PATH: Spark (and so Tumult) will not start" >&2
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import tmlt.analytics, pyspark" 2>/dev/null; then
    "$venv/bin/pip" install --quiet --upgrade pip
    "$venv/bin/pip" install --quiet tmlt.analytics
fi
"$venv/bin/python" -c "import tmlt.analytics, pyspark; print('tmlt.analytics', tmlt.analytics.__version__, 'pyspark', pyspark.__version__)"
