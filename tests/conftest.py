import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import opendp.prelude as dp

# the library asserts OpenDP's features and never enables them: the suite enables them once, as a
# user would (tests/test_opendp_pipelines.py checks, in a fresh interpreter, that nothing is enabled for them)
dp.enable_features("contrib", "honest-but-curious")
