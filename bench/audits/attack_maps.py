"""Stability-map attacks on the frame constructors (audit). Run: python bench/audits/attack_maps.py"""
import warnings

import numpy as np
import opendp.prelude as dp
import pandas as pd

import opendp_hybridad as hd
from opendp_hybridad.frame import feature_distance, make_frame_domain
from opendp_hybridad.frame.aggregate import make_sum_of

dp.enable_features("contrib", "honest-but-curious")
warnings.simplefilter("ignore")


def feature_level_int64_conversion():
    """Feature-level relation: an int64 column is converted to float64 before clamping; above 2^53
    that rounding is not non-expansive, so records 1 apart become 2 apart."""
    B = 2**53
    schema = hd.Schema(x=hd.Field(B, B + 8, dtype="int64"))
    (x,) = schema.symbols()
    f = schema.function(x - B, name="shift")
    dom = make_frame_domain(schema, size_limit=1)
    t = make_sum_of(dom, feature_distance(1), f)
    a = pd.DataFrame({"x": np.array([B + 1], dtype=np.int64)})
    b = pd.DataFrame({"x": np.array([B + 2], dtype=np.int64)})
    assert dom.member(a) and dom.member(b)
    d_in = 1.0  # |(B+1) - (B+2)| = 1 exactly, in l_1 (and every l_q)
    out = abs(t(a) - t(b))
    print(f"feature-level int64: map(1) = {t.map(d_in)!r}, observed {out!r}, real |f(a)-f(b)| = 1")
    return t.map(d_in), out


if __name__ == "__main__":
    feature_level_int64_conversion()


def feature_level_longdouble_and_decimal():
    """The same with records closer than one float64 ulp (float128 / Decimal columns): r is tiny,
    the two converted records are one ulp (1.0) apart."""
    from decimal import Decimal
    B = 2**52
    schema = hd.Schema(x=hd.Field(B, B + 8))
    (x,) = schema.symbols()
    f = schema.function(x - B, name="shift52")
    dom = make_frame_domain(schema, size_limit=1)
    t = make_sum_of(dom, feature_distance(1), f)
    res = {}
    lo = np.longdouble(B) + np.longdouble(0.5) - np.longdouble(2.0**-8)
    hi = np.longdouble(B) + np.longdouble(0.5) + np.longdouble(2.0**-8)
    if np.finfo(np.longdouble).nmant > 52:
        a = pd.DataFrame({"x": np.array([lo], dtype=np.longdouble)})
        b = pd.DataFrame({"x": np.array([hi], dtype=np.longdouble)})
        if dom.member(a) and dom.member(b):
            r = float(hi - lo)  # 2^-7, exact
            res["longdouble"] = (t.map(r), abs(t(a) - t(b)), r)
    da, db = Decimal(B) + Decimal("0.4999999"), Decimal(B) + Decimal("0.5000001")
    a = pd.DataFrame({"x": pd.Series([da], dtype=object)})
    b = pd.DataFrame({"x": pd.Series([db], dtype=object)})
    if dom.member(a) and dom.member(b):
        r = float(db - da)  # 2e-7
        res["decimal"] = (t.map(r), abs(t(a) - t(b)), r)
    for k, (m, o, r) in res.items():
        print(f"feature-level {k}: r = {r!r}, map(r) = {m!r}, observed {o!r}")
    return res


if __name__ == "__main__":
    feature_level_longdouble_and_decimal()
