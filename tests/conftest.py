import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import importlib.util

import opendp.prelude as dp

# backend="auto" calibrates every new function, compiling it for numba too (tenths of a second each, hundreds
# of functions here): the suite pins it to the former default, numexpr where installed, so each test's timing is
# what it was. tests/test_backend_auto.py unpins it; kernels are tested on every backend by name (test_kernels.py)
os.environ.setdefault("OPENDP_HYBRIDAD_BACKEND", "numexpr" if importlib.util.find_spec("numexpr") else "numpy")

# the library asserts OpenDP's features and never enables them: the suite enables them once, as a
# user would (tests/test_opendp_pipelines.py checks, in a fresh interpreter, that nothing is enabled for them)
dp.enable_features("contrib", "honest-but-curious")
