"""Individual privacy filters over a dataframe: each person is charged what their own data cost.

**Rényi form** (Feldman and Zrnic, "Individual Privacy Accounting via a Rényi Filter",
NeurIPS 2021). Fix an order ``alpha`` and a budget ``B``. Query t releases
``sum_i phi_t(x_i) + Gaussian noise`` over the active individuals, where ``phi_t``
may be chosen adaptively. Individual i's loss in query t is ``alpha c_i^2 / (2 sigma_t^2)``
with ``c_i`` their l2 contribution (plus float allowance); an individual whose
recorded loss plus the new loss would pass ``B`` is left out of this and every
later query. Then every individual enjoys ``(alpha, B)``-RDP under adding or removing
their data.

**Gaussian-DP form** (Smith and Thakurta, "Fully Adaptive Composition for Gaussian
Differential Privacy", 2022; Koskela, Tobaben and Honkela, "Individual Privacy
Accounting with Gaussian Differential Privacy", 2023). With losses ``c_i^2 / sigma_t^2``
held below ``mu^2``, every individual enjoys ``mu``-GDP under adding or removing their
data.

**Only adding or removing one individual.** Both theorems need individual i's loss
at step t to be a function of the history and of ``x_i`` alone, with i contributing
nothing to the neighbouring dataset. Under replace-one or the feature-level relation
the person is in both datasets with different data, so their admission (a function
of their data) can differ, and the answers then differ by their whole contribution;
those relations are refused (``docs/individual.md`` gives the counterexample).

**Total on its domain.** A frame is a member of the domain of ``schema`` with at most
``size_limit`` rows (checked before anything is computed). Rows with a missing id
belong to nobody and are dropped; an individual's rows beyond their first
``max_rows`` (in frame order, after the missing-value policies) are ignored. So no
member frame makes the filter raise.

Charges (``charges.py``) are committed to the :class:`PrivacyLedger` before the answer
is computed; the noise is OpenDP's Gaussian mechanism.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from opendp_hybridad.analysis.rounding import add_up, mul_down, mul_up, norm2_up
from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.frame.domain import FrameDomain, SchemaMismatchError, as_frame_domain, kernel_inputs, prepare_frame
from opendp_hybridad.individual import charges as _charges
from opendp_hybridad.individual import report as _report
from opendp_hybridad.individual.ids import missing_ids
from opendp_hybridad.individual.ledger import LedgerParameters, PrivacyLedger
from opendp_hybridad.individual.report import QueryReport
from opendp_hybridad.relations import AddRemove, relation_of
from opendp_hybridad.symbolic.function import RecordFunction
from opendp_hybridad.symbolic.schema import Schema

#: rows counted per person at most: gamma(max_rows) and the per-person counters stay far in range
MAX_ROWS_LIMIT = 2**32

#: why the filter accepts only adding or removing one individual
REFUSAL = (
    "the individual filter accepts only adding or removing one individual (symmetric distance), not {name}: "
    "under {name} the person is in both neighbouring datasets with different data, so their admission, which "
    "depends on their own data, can differ between the two, and the answers then differ by their whole "
    "contribution rather than by the relation's bound (data-dependent admission; see docs/individual.md)"
)


def check_relation(relation: Any) -> AddRemove:
    """The filter's relation: adding or removing one individual; any other is refused with :data:`REFUSAL`."""
    if isinstance(relation, tuple):  # the old ("feature", q, r) form
        raise DeclarationError(REFUSAL.format(name="the feature-level relation"))
    rel = relation_of(relation)
    if not isinstance(rel, AddRemove):
        raise DeclarationError(REFUSAL.format(name=rel.name))
    return rel


class IndividualFilter:
    """Answers adaptive sums over a dataframe while tracking each individual's privacy loss.

    :param frame: the private data, a member of the domain (``schema``'s frame domain
        with at most ``size_limit`` rows).
    :param schema: the declared record (a Schema, or a frame domain whose size limit is used).
    :param id_column: column naming the individual of each row (rows that share an id
        are one person, see :func:`id_keys`; rows with a missing id are dropped);
        None: every row is an individual (identified by its position: a durable
        ledger must then be reopened with the same frame).
    :param kind: ``"renyi"`` (order ``alpha``, budget ``budget``) or ``"gdp"`` (``budget`` = mu).
    :param ledger: a SQLite file path (durable), ``":memory:"``, or a :class:`PrivacyLedger`.
    :param relation: only adding or removing one individual (``ADD_REMOVE``,
        ``"add_remove"`` or ``dp.symmetric_distance()``); others are refused.
    :param max_rows: rows counted per individual: their first ``max_rows`` in frame order.
    :param size_limit: most rows of a member frame (default: the domain's).
    """

    def __init__(self, frame: pd.DataFrame, schema: Schema | Any, *, budget: float, kind: str = "renyi",
                 alpha: float | None = None, id_column: str | None = None, ledger: str | Any = ":memory:",
                 relation: Any = "add_remove", max_rows: int = 1024, size_limit: int | None = None):
        import opendp.prelude as dp

        # every answer's noise is OpenDP's Gaussian: asked here, before any charge is recorded
        dp.assert_features("contrib")
        self.relation = check_relation(relation)
        if kind not in ("renyi", "gdp"):
            raise DeclarationError("kind must be 'renyi' or 'gdp'")
        if kind == "renyi" and not (alpha is not None and alpha > 1 and math.isfinite(alpha)):
            raise DeclarationError("the Renyi filter needs a finite order alpha > 1")
        if not (isinstance(budget, (int, float)) and budget > 0 and math.isfinite(budget)):
            raise DeclarationError("the per-individual budget must be a positive finite number")
        if not (isinstance(max_rows, (int, np.integer)) and 1 <= max_rows <= MAX_ROWS_LIMIT):
            raise DeclarationError(f"max_rows must be a whole number from 1 to {MAX_ROWS_LIMIT}")
        domain = FrameDomain(schema) if isinstance(schema, Schema) else as_frame_domain(schema)
        if size_limit is not None:
            domain = FrameDomain(domain.schema, size_limit)
        self.domain = domain
        self.schema = domain.schema
        self.kind = kind
        self.alpha = alpha
        self.budget = float(budget)
        # the ledger stores the charged quantity: RDP at alpha, or mu^2 rounded down for GDP
        self.stored_budget = self.budget if kind == "renyi" else mul_down(self.budget, self.budget)
        self.ledger = ledger if isinstance(ledger, PrivacyLedger) else PrivacyLedger(
            ledger, LedgerParameters(kind, self.stored_budget, alpha if kind == "renyi" else None))
        self._load(frame, id_column, int(max_rows))
        self.reports: list[QueryReport] = []

    # -- set-up: domain membership first, then rows, ids and the per-individual row limit ---------------
    def _load(self, frame: pd.DataFrame, id_column: str | None, max_rows: int) -> None:
        columns, kept = counted_inputs(frame, self.domain)  # checks membership (size limit included) first
        self._id_column = id_column
        if id_column is None:
            ids = pd.Series(np.arange(len(frame))[kept])
        else:
            ids, named = named_ids(frame, id_column, kept)
            if not named.all():
                columns = [c[named] for c in columns]
        first = self._index(ids, id_column, max_rows)
        if first is not None:
            columns = [c[first] for c in columns]
        self._columns = columns

    def _index(self, ids: pd.Series, id_column: str | None, max_rows: int) -> np.ndarray | None:
        """Number the individuals of ``ids`` (the named rows, in frame order); the mask of counted rows (None: all).

        Sets the codes of the counted rows, the number of individuals and their ledger hashes.
        """
        self._max_rows = 1 if id_column is None else max_rows
        # one keyed hash per row (ids encoded by ids.py, in chunks: a hundred million encoded
        # keys at once would need tens of GB); rows with one hash are one individual, so equal
        # keys, and the (unlikely) two keys that share a hash, are one person. Individuals are
        # numbered in order of first appearance (spent() and the reports follow the data's order).
        codes, hashes = pd.factorize(self.ledger.hash_ids(ids), sort=False)
        codes, hashes = codes.astype(np.intp), np.asarray(hashes, dtype=np.uint64)
        first = None
        if codes.size:  # without an id column too: two positions whose hashes collide are one person, cut to 1 row
            first = _charges.first_rows(codes, int(hashes.size), self._max_rows)
            if first.all():
                first = None
            else:
                codes = codes[first]
        self._codes = codes
        self._m = int(hashes.size)
        self._hashes = hashes
        return first

    def hashes_of(self, ids: Any) -> np.ndarray:
        """The ledger hashes of the given ids (as :func:`id_keys` names them; row positions without an id column)."""
        ids = pd.Series(list(ids) if not isinstance(ids, pd.Series) else ids)
        return self.ledger.hash_ids(ids)  # encoded by ids.py, as the ledger's parameters record

    def record_columns(self) -> list[np.ndarray]:
        """The records the filter counts (schema order): missing values imputed, clamped to the box."""
        out = []
        for c, fld in zip(self._columns, self.schema.fields.values(), strict=True):
            filled = np.where(np.isnan(c), fld.impute if fld.impute is not None else fld.lower, c)
            out.append(np.clip(filled, fld.lower, fld.upper))
        return out

    # -- charging ---------------------------------------------------------------------------
    def _loss(self, sensitivity: np.ndarray, noise_scale: float) -> np.ndarray:
        """Per-individual loss of a Gaussian release with the given l2 sensitivities (rounded up)."""
        return _charges.losses(sensitivity, _charges.loss_factor(self.kind, self.alpha, noise_scale))

    def _contributions(self, functions: list[RecordFunction]) -> tuple[np.ndarray, np.ndarray, float]:
        """Per-individual summed values (m, k), their l2 sensitivities (m,), and the worst-case sensitivity."""
        for f in functions:
            self._check_function(f)  # every function, before any value is computed
        bounds = [(float(r.lower), float(r.upper)) for r in (f.range() for f in functions)]
        max_abs = np.array([max(abs(lo), abs(hi)) for lo, hi in bounds])
        allowance = np.array([_charges.float_allowance(self.domain.size_limit, self._max_rows, m) for m in max_abs])
        sums = self._individual_sums(functions, bounds)
        sensitivity = _charges.sensitivities(sums, allowance)
        worst_case = _charges.worst_case_sensitivity(self._max_rows, max_abs, allowance)
        return sums, sensitivity, worst_case

    def _individual_sums(self, functions: list[RecordFunction], bounds: list[tuple[float, float]]) -> np.ndarray:
        """(m, k): each individual's sequential sum, in frame order, of each function's clamped values of their
        counted rows (:func:`~opendp_hybridad.individual.charges.individual_sums`)."""
        sums = np.zeros((self._m, len(functions)))
        if self._m:
            for j, (f, (lo, hi)) in enumerate(zip(functions, bounds, strict=True)):
                sums[:, j] = _charges.individual_sums(self._codes, self._m, self._record_values(f, lo, hi))
        return sums

    def _check_function(self, function: Any) -> None:
        """Refuse what is not a RecordFunction over the filter's schema (before any of its values is computed)."""
        if not isinstance(function, RecordFunction) or function.schema != self.schema:
            raise DeclarationError("every query's function must be a RecordFunction over the filter's schema")

    def _record_values(self, function: RecordFunction, lower: float, upper: float) -> np.ndarray:
        """``function`` of each counted record, clamped to ``[lower, upper]`` (the order of the codes)."""
        with np.errstate(all="ignore"):
            return function.compile().value_clamped(self._columns, lower, upper)

    # -- queries ------------------------------------------------------------------------------
    def sum(self, function: RecordFunction, noise_scale: float, label: str = "") -> float:
        """Noisy ``sum_i f(x_i)`` over the individuals who can still afford it."""
        return float(self.sum_vector([function], noise_scale, label=label)[0])

    def sum_vector(self, functions: list[RecordFunction], noise_scale: float, label: str = "") -> np.ndarray:
        """Noisy sums of several functions at once (Gaussian noise in l2, one charge)."""
        exact = self.exact_sum_vector(functions, noise_scale, label)
        return _gaussian(noise_scale, len(functions))(exact)

    def exact_sum_vector(self, functions: list[RecordFunction], noise_scale: float, label: str = "") -> np.ndarray:
        """Charge the query, then return the pre-noise sums over the admitted individuals.

        Exposed for tests and audits; releasing its output directly would not be private.
        """
        if not functions:
            raise DeclarationError("give at least one function")
        factor = _charges.loss_factor(self.kind, self.alpha, noise_scale)  # checks the scale before any data
        sums, sensitivity, worst_case = self._contributions(list(functions))
        return self._charge_and_total(sums, sensitivity, worst_case, factor, noise_scale, label)

    def _charge_and_total(self, sums: np.ndarray, sensitivity: np.ndarray, worst_case: float, factor: float,
                          noise_scale: float, label: str) -> np.ndarray:
        charges = _charges.losses(sensitivity, factor)
        worst_charge = float(_charges.losses(np.array([worst_case]), factor)[0])
        admitted = self.ledger.charge(self._hashes, charges, label=label, noise_scale=noise_scale,
                                      worst_case_charge=worst_charge)  # committed before any answer exists
        self.reports.append(_report.query_report(label, noise_scale, charges, admitted, worst_charge))
        # a correctly rounded sum: independent of order and of zero terms, so an
        # individual who left changes no later answer, bit for bit
        return np.array([math.fsum(sums[admitted, j].tolist()) for j in range(sums.shape[1])])

    def sum_rows(self, values: np.ndarray, row_bound: float, noise_scale: float, label: str = "") -> np.ndarray:
        """Noisy sum of per-record vectors (records, k), each clipped to l2 norm ``row_bound``.

        Rows follow :meth:`record_columns` (one per record the filter counts). A row
        above the bound is scaled down to it and a row with a non-finite entry counts
        as zero (per-row rules: the function stays total). Used by noisy gradient
        descent: each record's clipped gradient is its vector.
        """
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or values.shape[0] != self._codes.shape[0]:
            raise DeclarationError("values must have one row per record the filter counts")
        factor = _charges.loss_factor(self.kind, self.alpha, noise_scale)
        clipped, bound = _charges.clip_rows(values, row_bound)
        k = values.shape[1]
        sums = (np.column_stack([_charges.individual_sums(self._codes, self._m, clipped[:, j]) for j in range(k)])
                if self._m else np.zeros((0, k)))
        allowance = np.full(k, _charges.float_allowance(self.domain.size_limit, self._max_rows, bound))
        sensitivity = _charges.sensitivities(sums, allowance)
        # worst case: max_rows rows of norm <= bound, l2 over the whole vector
        worst_case = add_up(mul_up(float(self._max_rows), bound), norm2_up(allowance.tolist()))
        exact = self._charge_and_total(sums, sensitivity, worst_case, factor, noise_scale, label)
        return _gaussian(noise_scale, k)(exact)

    # -- reporting ---------------------------------------------------------------------------
    def spent(self) -> np.ndarray:
        """Each individual's recorded loss (RDP at alpha, or mu_i^2), in the order of first appearance."""
        return self.ledger.spent(self._hashes)

    def active(self) -> int:
        return int((~self.ledger.retired(self._hashes)).sum())

    def report(self, plot_path: str | None = None) -> dict[str, Any]:
        """Curator-side summary: active individuals, spent-budget distribution, per-query charges.

        With ``plot_path`` (matplotlib installed) also saves a histogram of spent budget
        and the per-query worst-case versus individual charges.
        """
        return _report.summary(_report.budget_fraction(self.spent(), self.stored_budget), self._m, self.active(),
                               self.reports, plot_path)

    def guarantee(self, delta: float) -> dict[str, float]:
        """Each individual's guarantee under adding or removing them: (alpha, B)-RDP or mu-GDP, and (epsilon, delta)."""
        return _report.guarantee(self.kind, self.budget, self.alpha, delta)


def counted_inputs(frame: Any, domain: FrameDomain) -> tuple[list[np.ndarray], np.ndarray]:
    """The kernel inputs of the records the missing-value policies keep (schema order), and the kept mask.

    Checks membership first (:class:`SchemaMismatchError` for a non-member). Each record's
    inputs depend on its own row alone, so a part of a frame gives the rows of the whole's.
    """
    if any(f.missing == "drop" for f in domain.schema.fields.values()):
        prepared = prepare_frame(frame, domain)
        return list(prepared.columns.values()), prepared.kept
    return kernel_inputs(frame, domain), np.ones(len(frame), dtype=bool)


def named_ids(frame: Any, id_column: str, kept: np.ndarray) -> tuple[pd.Series, np.ndarray]:
    """The ids of the kept rows that have one (frame order, fresh index), and which kept rows have one.

    A row with a missing id (:func:`~opendp_hybridad.individual.ids.missing_ids`) belongs to nobody.
    """
    if id_column not in frame.columns:
        raise SchemaMismatchError(f"id column {id_column!r} is missing from the dataframe")
    raw = frame[id_column]
    if isinstance(raw, pd.DataFrame):
        raise SchemaMismatchError(f"id column {id_column!r} appears more than once")
    named = ~missing_ids(raw)[kept]
    return raw[kept].reset_index(drop=True)[named].reset_index(drop=True), named


def _gaussian(scale: float, k: int):
    """OpenDP's Gaussian mechanism for a scalar (k = 1, returned as a 1-vector) or an l2 vector."""
    import opendp.prelude as dp

    dp.assert_features("contrib")  # OpenDP's Gaussian mechanism (IndividualFilter asks at construction too)
    if k == 1:
        meas = (dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float)) >> dp.m.then_gaussian(scale)
        return lambda x: np.array([meas(float(x[0]))])
    meas = (dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.l2_distance(T=float)) >> dp.m.then_gaussian(scale)
    return lambda x: np.array(meas([float(v) for v in x]))
