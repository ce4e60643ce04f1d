"""Audit: a record's group in make_grouped_{count,sum}_of depends on the OTHER records (the key column's dtype).

GroupKeys.codes matched keys with pandas' Index.get_indexer on the column as it is. Whether a
value equals a key then depends on the column's dtype: in a bool column True is not the key 1,
in an object column (one neighbouring record is an int, or an unhashable value sends codes to
its value-by-value fallback) True == 1 matches. One added record moves every other record into
the group: a count's l1 change of n + 1 under a stability map of 1.

Ground truth: brute force (the exact outputs on two neighbouring frames, D and D + one row).
Run: python bench/audits/attack_groupby.py   (exit status 1 while the map is beaten)
"""

from __future__ import annotations

import sys

import opendp.prelude as dp
import pandas as pd

import opendp_hybridad as hd
from opendp_hybridad.frame import make_frame_domain
from opendp_hybridad.frame.groupby import make_grouped_count_of, make_grouped_sum_of


def neighbours(key_values: list, extra_key: object, n: int = 10) -> tuple[pd.DataFrame, pd.DataFrame]:
    """D: n records; D2: D plus one record (D's rows unchanged, value for value)."""
    d = pd.DataFrame({"x": [0.5] * n, "g": key_values})
    extra = pd.DataFrame({"x": [0.5], "g": pd.Series([extra_key], dtype=object)})
    return d, pd.concat([d, extra], ignore_index=True)


def main() -> int:
    dp.enable_features("contrib", "honest-but-curious")
    s = hd.Schema(x=hd.Field(0, 1))
    (x,) = s.symbols()
    domain = make_frame_domain(s, size_limit=100, labels=["g"])
    broken = False
    cases = [("bool column, neighbour adds key 1", (1,), [True] * 10, 1),
             ("bool column, neighbour adds an unhashable key", (1,), [True] * 10, [1]),
             ("bool column, neighbour adds key 0.0", (0.0,), [False] * 10, 0.0)]
    for name, keys, column, extra in cases:
        d, d2 = neighbours(column, extra)
        for kind, t in [("count", make_grouped_count_of(domain, dp.symmetric_distance(), "g", list(keys))),
                        ("sum", make_grouped_sum_of(domain, dp.symmetric_distance(), s.function(x), "g", list(keys)))]:
            a, b = t(d), t(d2)
            change = sum(abs(u - v) for u, v in zip(a, b, strict=True))
            bound = t.map(1)
            flag = "BROKEN" if change > bound else "ok"
            broken |= change > bound
            print(f"{flag:6} {kind:5} {name}: D -> {a}, D+1 -> {b}; l1 change {change} vs map(1) = {bound}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
