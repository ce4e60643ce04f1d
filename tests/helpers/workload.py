"""A fixed workload for the ledger tests: real data (bdims), BMI-like queries, a Renyi filter."""

import opendp.prelude as dp

import opendp_hybridad as hd
from opendp_hybridad.datasets import load_bdims
from opendp_hybridad.individual import IndividualFilter

# the ledger workers run in fresh interpreters: they enable what the filter asserts (OpenDP's Gaussian), as a user would
dp.enable_features("contrib")

ALPHA, BUDGET, QUERIES_SCALE = 8.0, 2.0, 3000.0
SCHEMA = hd.Schema(age=hd.Field(18, 90, missing="impute", impute=30), weight=hd.Field(40, 200, missing="impute", impute=70),
                   height=hd.Field(1.4, 2.2, missing="impute", impute=1.7))


def query_functions():
    a, w, h = SCHEMA.symbols()
    return [SCHEMA.function(a * w / h**2), SCHEMA.function(3 * w), SCHEMA.function(100 * h)]


def make_filter(ledger):
    return IndividualFilter(load_bdims(), SCHEMA, kind="renyi", alpha=ALPHA, budget=BUDGET, ledger=ledger)
