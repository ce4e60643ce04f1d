"""Individual privacy filters over a dataframe: each person is charged what their own data cost.

**Rényi form** (Feldman and Zrnic, "Individual Privacy Accounting via a Rényi Filter",
NeurIPS 2021). Fix an order ``alpha`` and a budget ``B``. Query t
releases ``sum_i phi_t(x_i) + N(0, sigma_t^2 I)`` over the active individuals, where
``phi_t`` may be chosen adaptively. Individual i's loss in query t is
``alpha * ||phi_t(x_i)||^2 / (2 sigma_t^2)``; an individual whose recorded loss plus
the new loss would pass ``B`` is dropped from this and every later query. Then
every individual enjoys ``(alpha, B)``-RDP under adding or removing their data.

**Gaussian-DP form** (Smith and Thakurta, "Fully Adaptive Composition for Gaussian
Differential Privacy", 2022, prove that a filter holding the sum of squared
per-step GDP parameters below ``mu^2`` gives ``mu``-GDP; Koskela, Tobaben and
Honkela, "Individual Privacy Accounting with Gaussian Differential Privacy", 2023,
apply it per individual). With losses ``||phi_t(x_i)||^2 / sigma_t^2`` held below
``mu^2``, every individual enjoys ``mu``-GDP; (epsilon, delta) comes from
dp-accounting's PLD of a Gaussian with noise multiplier ``1/mu`` (exact up to its
discretisation).

Contributions are the clamped per-record values of certified expressions summed
over the individual's rows (``id_column``), plus a float-error allowance (see
:func:`_float_allowance`). Under the feature-level relation (one person's record
moves by at most ``r``), ``||phi_t(x_i) - phi_t(x_i')|| <= K_i r`` with ``K_i`` a
certified gradient-norm bound on the box of radius ``r`` around their record.

Charges are committed to the :class:`PrivacyLedger` before the answer is computed;
the noise is OpenDP's Gaussian mechanism.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from opendp_hybridad.errors import DeclarationError
from opendp_hybridad.frame.domain import SchemaMismatchError, kernel_inputs
from opendp_hybridad.individual.ledger import LedgerParameters, PrivacyLedger
from opendp_hybridad.symbolic.function import RecordFunction, dual_norm, normalise_norm
from opendp_hybridad.symbolic.schema import Schema

_U = 2.0**-52


def _float_allowance(max_rows: int, size_limit: int, max_abs: float) -> float:
    """Bound on how far the float computation can move one individual's influence.

    Per-individual sums of at most ``max_rows`` values (sequential: error at most
    ``gamma_{r-1} r M``) and a correctly rounded total (``math.fsum``: at most
    ``u size_limit M``), each counted for both neighbouring datasets.
    """
    r = max(max_rows, 1)
    gamma = (r - 1) * _U / (1 - (r - 1) * _U)
    allowance = 2 * (gamma * r * max_abs + _U * size_limit * max_abs)
    return math.nextafter(allowance, math.inf) if allowance > 0 else 0.0


@dataclass(frozen=True)
class QueryReport:
    """What one query cost: for the admitted, and what worst-case accounting would have charged."""

    label: str
    noise_scale: float
    admitted: int
    left_out: int
    worst_case_charge: float
    mean_charge: float
    max_charge: float


class IndividualFilter:
    """Answers adaptive sums over a dataframe while tracking each individual's privacy loss.

    :param frame: the private data (a member of ``schema``'s frame domain).
    :param schema: the declared record; every query's functions are over it.
    :param id_column: column naming the individual of each row (rows that share an id
        are one person); None: every row is an individual.
    :param kind: ``"renyi"`` (order ``alpha``, budget ``budget``) or ``"gdp"`` (``budget`` = mu).
    :param ledger: a SQLite file path (durable) or ``":memory:"``.
    :param relation: ``"add_remove"`` or ``("feature", q, r)``: one record moves by at most r in l_q.
    :param max_rows: most rows one individual may have (a domain constraint).
    """

    def __init__(self, frame: pd.DataFrame, schema: Schema, *, budget: float, kind: str = "renyi",
                 alpha: float | None = None, id_column: str | None = None, ledger: str | Any = ":memory:",
                 relation: Any = "add_remove", max_rows: int = 1024, size_limit: int = 2**32):
        if kind not in ("renyi", "gdp"):
            raise DeclarationError("kind must be 'renyi' or 'gdp'")
        if not (isinstance(budget, (int, float)) and budget > 0 and math.isfinite(budget)):
            raise DeclarationError("the per-individual budget must be a positive finite number")
        self.schema = schema
        self.kind = kind
        self.alpha = alpha
        self.budget = float(budget)
        # the ledger stores the charged quantity: RDP at alpha, or mu^2 for GDP
        stored_budget = self.budget if kind == "renyi" else self.budget**2
        self.ledger = ledger if isinstance(ledger, PrivacyLedger) else PrivacyLedger(
            ledger, LedgerParameters(kind, stored_budget, alpha if kind == "renyi" else None))
        self._relation = self._parse_relation(relation)
        if self._relation[0] == "feature" and id_column is not None:
            raise DeclarationError("the feature-level relation is defined for one record per individual (no id_column)")
        self._columns = kernel_inputs(frame, schema)
        n = self._columns[0].shape[0] if self._columns else 0
        if n > size_limit:
            raise SchemaMismatchError(f"the frame has more records than the domain's size limit {size_limit}")
        kept = self._kept_rows(frame)
        if id_column is None:
            ids = pd.Series(np.arange(len(frame)))[kept]
        else:
            if id_column not in frame.columns:
                raise SchemaMismatchError(f"id column {id_column!r} is missing from the dataframe")
            raw = frame[id_column]
            if raw.isna().to_numpy().any():
                raise SchemaMismatchError(f"id column {id_column!r} has missing ids; every row must name its individual")
            ids = raw[kept]
        codes, uniques = pd.factorize(ids.reset_index(drop=True), sort=False)
        self._codes = codes.astype(np.intp)
        self._m = len(uniques)
        rows = np.bincount(self._codes, minlength=self._m) if self._m else np.zeros(0, dtype=np.intp)
        if rows.size and rows.max() > max_rows:
            raise SchemaMismatchError(f"an individual has more rows than the domain's limit max_rows={max_rows}")
        self._hashes = self.ledger.hash_ids(pd.Series(uniques))
        self._max_rows = 1 if id_column is None else max_rows
        self._size_limit = size_limit
        self.reports: list[QueryReport] = []

    # -- set-up helpers -----------------------------------------------------------------
    @staticmethod
    def _parse_relation(relation: Any) -> tuple:
        if relation == "add_remove":
            return ("add_remove",)
        if isinstance(relation, tuple) and len(relation) == 3 and relation[0] == "feature":
            q, r = normalise_norm(relation[1]), float(relation[2])
            if not (r >= 0 and math.isfinite(r)):
                raise DeclarationError("the feature-level radius must be a finite non-negative number")
            return ("feature", q, r)
        raise DeclarationError("relation must be 'add_remove' or ('feature', q, r)")

    def _kept_rows(self, frame: pd.DataFrame) -> np.ndarray:
        kept = np.ones(len(frame), dtype=bool)
        for name, field in self.schema.fields.items():
            if field.missing == "drop":
                kept &= ~frame[name].isna().to_numpy()
        return kept

    # -- charging ---------------------------------------------------------------------------
    def _loss(self, contribution: np.ndarray, noise_scale: float) -> np.ndarray:
        """Per-individual loss of a Gaussian release with the given l2 contributions (rounded up)."""
        c2 = np.nextafter(contribution * contribution, np.inf)
        loss = self.alpha * c2 / (2.0 * noise_scale * noise_scale) if self.kind == "renyi" else c2 / (noise_scale * noise_scale)
        return np.nextafter(loss, np.inf)

    def _contributions(self, functions: list[RecordFunction]) -> tuple[np.ndarray, np.ndarray, float]:
        """Per-individual summed values (m, k), their l2 sensitivities (m,), and the worst-case sensitivity."""
        k = len(functions)
        sums = np.zeros((self._m, k))
        worst, allowance = np.zeros(k), np.zeros(k)
        for j, f in enumerate(functions):
            if f.schema != self.schema:
                raise DeclarationError("every query's function must be over the filter's schema")
            rng = f.range()
            lo, hi = float(rng.lower), float(rng.upper)
            max_abs = max(abs(lo), abs(hi))
            with np.errstate(all="ignore"):
                if not self._m:
                    values = np.zeros(0)
                elif self._relation[0] == "feature":
                    # midpoints of certified point enclosures: their error is bounded (float_error)
                    from opendp_hybridad.analysis.float_error import clamped_point_values

                    values = clamped_point_values(f, self._clamped_records_columns(), lo, hi)
                else:
                    values = f.compile().value_clamped(self._columns, lo, hi)
            sums[:, j] = np.bincount(self._codes, weights=values, minlength=self._m)
            allowance[j] = _float_allowance(self._max_rows, self._size_limit, max_abs)
            if self._relation[0] == "add_remove":
                worst[j] = self._max_rows * max_abs + allowance[j]
            else:  # the global certificate: what worst-case accounting would charge
                width = math.nextafter(hi - lo, math.inf)
                worst[j] = min(f.lipschitz(norm=dual_norm(self._relation[1])).upper * self._relation[2], width) + allowance[j]
        if self._relation[0] == "add_remove":
            sensitivity = np.sqrt(np.nextafter((sums * sums).sum(axis=1), np.inf))
        else:
            sensitivity = self._feature_sensitivity(functions)
        sensitivity = np.nextafter(sensitivity + float(np.sqrt((allowance * allowance).sum())), np.inf)
        worst_case = float(np.sqrt((worst * worst).sum()))
        return sums, sensitivity, worst_case

    def _clamped_records_columns(self) -> list[np.ndarray]:
        return [np.clip(np.where(np.isnan(c), fld.impute if fld.impute is not None else fld.lower, c), fld.lower, fld.upper)
                for c, fld in zip(self._columns, self.schema.fields.values(), strict=True)]

    def _feature_sensitivity(self, functions: list[RecordFunction]) -> np.ndarray:
        """Per record: ``||(min(K_ij r + E_j, width_j))_j||_2``, K_ij certified on the box of radius r around it.

        ``E_j`` bounds how far the computed value of f_j is from the real one (both datasets).
        """
        from opendp_hybridad.analysis.certify import GradientObjective
        from opendp_hybridad.analysis.float_error import evaluation_error

        _, q, r = self._relation
        box_lo = np.array([f.lower for f in self.schema.fields.values()])
        box_hi = np.array([f.upper for f in self.schema.fields.values()])
        records = np.column_stack(self._clamped_records_columns())
        lo = np.maximum(records - r, box_lo)
        hi = np.minimum(records + r, box_hi)
        per_function = []
        for f in functions:
            rng = f.range()
            width = math.nextafter(rng.upper - rng.lower, math.inf)
            objective = GradientObjective(f, norm=dual_norm(q))
            # one enclosure per record box, never looser than the global certificate
            global_k = f.lipschitz(norm=dual_norm(q)).upper
            bounds = np.empty(records.shape[0])
            for start in range(0, records.shape[0], 20000):
                enc = objective.enclose(lo[start:start + 20000], hi[start:start + 20000])
                bounds[start:start + 20000] = np.minimum(np.where(enc.bad < 0, enc.upper, np.inf), global_k)
            error = evaluation_error(f)
            per_function.append(np.minimum(np.nextafter(np.nextafter(bounds * r, np.inf) + error, np.inf), width))
        stacked = np.column_stack(per_function)
        return np.sqrt(np.nextafter((stacked * stacked).sum(axis=1), np.inf))

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
        if not (noise_scale > 0 and math.isfinite(noise_scale)):
            raise DeclarationError("the noise scale must be a positive finite number")
        if not functions:
            raise DeclarationError("give at least one function")
        sums, sensitivity, worst_case = self._contributions(functions)
        return self._charge_and_total(sums, sensitivity, worst_case, noise_scale, label)

    def _charge_and_total(self, sums: np.ndarray, sensitivity: np.ndarray, worst_case: float, noise_scale: float,
                          label: str) -> np.ndarray:
        charges = self._loss(sensitivity, noise_scale)
        worst_charge = float(self._loss(np.array([worst_case]), noise_scale)[0])
        admitted = self.ledger.charge(self._hashes, charges, label=label, noise_scale=noise_scale,
                                      worst_case_charge=worst_charge)  # committed before any answer exists
        self.reports.append(QueryReport(label, noise_scale, int(admitted.sum()), int((~admitted).sum()),
                                        worst_charge, float(charges[admitted].mean()) if admitted.any() else 0.0,
                                        float(charges[admitted].max(initial=0.0))))
        # a correctly rounded sum: independent of order and of zero terms, so an
        # individual who left changes no later answer, bit for bit
        return np.array([math.fsum(sums[admitted, j]) for j in range(sums.shape[1])])

    def sum_rows(self, values: np.ndarray, row_bound: float, noise_scale: float, label: str = "") -> np.ndarray:
        """Noisy sum of per-record vectors (rows, k) whose l2 norm is at most ``row_bound`` each.

        The caller guarantees the bound (for example by clipping, or by a certificate);
        rows follow the filter's records (after its missing-value policies). Used by
        noisy gradient descent: each record's clipped gradient is its vector.
        """
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or values.shape[0] != self._codes.shape[0]:
            raise DeclarationError("values must have one row per record kept by the filter")
        norms = np.sqrt((values * values).sum(axis=1))
        if np.any(~(norms <= row_bound * (1 + 1e-12))):
            raise DeclarationError("a row's norm exceeds the declared row_bound")
        sums = np.column_stack([np.bincount(self._codes, weights=values[:, j], minlength=self._m)
                                for j in range(values.shape[1])]) if self._m else np.zeros((0, values.shape[1]))
        allowance = math.sqrt(values.shape[1]) * _float_allowance(self._max_rows, self._size_limit, row_bound)
        sensitivity = np.nextafter(np.sqrt((sums * sums).sum(axis=1)) + allowance, np.inf)
        worst_case = self._max_rows * row_bound + allowance
        exact = self._charge_and_total(sums, sensitivity, worst_case, noise_scale, label)
        return _gaussian(noise_scale, values.shape[1])(exact)

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
        spent = self.spent() / (self.budget if self.kind == "renyi" else self.budget**2)
        queries = pd.DataFrame([r.__dict__ for r in self.reports])
        summary = {
            "individuals": self._m, "active": self.active(),
            "spent_fraction_quantiles": dict(zip(("min", "q25", "median", "q75", "max"),
                                                 np.quantile(spent, [0, 0.25, 0.5, 0.75, 1]).tolist(), strict=True))
            if spent.size else {},
            "queries": queries,
        }
        if plot_path is not None:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
            axes[0].hist(spent, bins=40)
            axes[0].set_xlabel("fraction of the individual budget spent")
            axes[0].set_ylabel("individuals")
            axes[0].set_title(f"{summary['active']} of {self._m} active")
            if not queries.empty:
                axes[1].semilogy(queries.index + 1, queries.worst_case_charge, "x-", label="worst case (everyone)")
                axes[1].semilogy(queries.index + 1, queries.mean_charge, "o-", label="individual, mean over admitted")
                axes[1].semilogy(queries.index + 1, queries.max_charge, ".-", label="individual, max")
                axes[1].set_xlabel("query")
                axes[1].set_ylabel("charge")
                axes[1].legend(fontsize=8)
            fig.tight_layout()
            fig.savefig(plot_path, dpi=110)
            plt.close(fig)
        return summary

    def guarantee(self, delta: float) -> dict[str, float]:
        """Each individual's guarantee: (alpha, B)-RDP or mu-GDP, and (epsilon, delta)."""
        if self.kind == "renyi":
            from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

            eps, _ = compute_epsilon([self.alpha], [self.budget], delta)
            return {"alpha": self.alpha, "rdp": self.budget, "epsilon": float(eps), "delta": delta}
        return {"mu": self.budget, "epsilon": gdp_epsilon(self.budget, delta), "delta": delta}


def gdp_epsilon(mu: float, delta: float) -> float:
    """Epsilon of mu-GDP at delta: dp-accounting's PLD of a Gaussian with noise multiplier 1/mu."""
    from dp_accounting.pld import privacy_loss_distribution as pld

    dist = pld.from_gaussian_mechanism(standard_deviation=1.0 / mu, sensitivity=1.0, value_discretization_interval=1e-4)
    return float(dist.get_epsilon_for_delta(delta))


def _gaussian(scale: float, k: int):
    """OpenDP's Gaussian mechanism for a scalar (k = 1, returned as a 1-vector) or an l2 vector."""
    import opendp.prelude as dp

    dp.enable_features("contrib")
    if k == 1:
        meas = (dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float)) >> dp.m.then_gaussian(scale)
        return lambda x: np.array([meas(float(x[0]))])
    meas = (dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.l2_distance(T=float)) >> dp.m.then_gaussian(scale)
    return lambda x: np.array(meas([float(v) for v in x]))
