"""Task similarity of the ``continual`` method (JP7600768B2): JSD, mergeable PDF estimators, source choice.

Rule numbers (§2.7 R6, §2.10 R9, §2.11 R10, §3 items 3–4) are those of the implementation spec the method was built
from; ``docs/methods/continual.md`` describes the method.

No Ray and no MLflow here: numpy math on arrays (torch tensors are accepted and converted) and plain floats for the
selections, so a Ray Data pass can call the ``*_counts`` functions shard by shard and the driver sums them.

Divergences (R6; :func:`jsd`, :func:`kl_divergence`)
    KL(P‖Q)  = Σ_x P(x) log_b P(x)/Q(x)
    JSD(P,Q) = ½ KL(P‖M) + ½ KL(Q‖M),  M = ½(P + Q)        base b = 2, so 0 ≤ JSD ≤ 1 [RECON]
    Inputs are non-negative weights (counts or probabilities) of any shape; each is normalised to sum 1 and a
    multi-dimensional input is one joint distribution over all its cells. Terms with P(x) = 0 are 0 (0 log 0 = 0).
    The JSD is evaluated so that JSD(P, P) = 0 and disjoint supports give 1 exactly (bitwise), then clipped to [0, 1].
    Similarity g(JSD) = 1 − JSD [IMPL-CHOICE; only the ranking matters: most similar = smallest JSD].

PDF estimators over task data (R6 [AMBIG]: the patent names no estimator; both are documented choices)
    Both reduce a batch to integer COUNTS over a fixed set of cells. Counts of disjoint shards add up to the counts of
    the whole dataset exactly (integer sums), so a distributed pass sums per-shard counts (:func:`combine_counts`) and
    :func:`jsd_from_counts` normalises at the end. Cells are fixed before the pass (bin edges / a fitted codebook), so
    every task's counts are comparable and can be stored once per task (``data_pdf[t]`` of spec §5).

    (a) Histogram estimator (:func:`histogram_edges`, :func:`histogram_counts`). Values (pixels or features) are
        binned with fixed edges e_0 < … < e_B; bin i = [e_i, e_{i+1}), the last bin also holds e_B (numpy's
        convention). Values outside [e_0, e_B] are CLIPPED into the first/last bin (so every value is counted and
        the total is numel). ``per_feature=False`` (default): one pooled histogram of all values — the intensity
        distribution; it ignores where a value is, so a pixel permutation leaves it exactly unchanged.
        ``per_feature=True``: one histogram per feature position, shape (D, B); as one joint distribution over
        (position, bin) with the uniform position marginal, its JSD equals the MEAN over positions of the
        per-position JSDs.
    (b) Embedding-codebook estimator (:func:`fit_codebook`, :func:`codebook_counts`). Each sample x ∈ R^D (flattened)
        is embedded as z = (x − μ) R with a fixed Gaussian random projection R ∈ R^{D×k}, R_ij ~ N(0, 1/k) drawn from
        ``seed`` (Johnson–Lindenstrauss: distances are kept up to a small factor), and assigned to its nearest
        centroid (squared Euclidean, lowest index on ties) of a k-means codebook c_1..c_K (k-means++ seeding, Lloyd
        iterations, deterministic given ``seed``) fitted on a REFERENCE sample. The task PDF is the histogram of code
        assignments. Unlike (a) it sees the joint structure of a sample, so tasks that differ by a pixel permutation
        land in different codes. μ, R and the centroids are frozen after fitting; use ONE codebook for all tasks
        that are compared. Recommended reference: an equal-size sample of every task compared (e.g. a few hundred
        samples of each learned task plus the new one); a codebook fitted on task 1 alone still separates tasks
        far from task 1 but may map two different far tasks to the same few codes.
        Assignment is computed row by row with fixed reduction orders (no BLAS matmul), so a sample's code does
        not depend on which batch or shard it is in: shard-summed counts equal whole-dataset counts exactly.

Source task (R9; :func:`select_source`)
    s*(t) = argmin_{s ∈ C(t)} JSD(P_s, P_t); ties go to the candidate listed first (arrival order).

Candidate sets (R9 options (1)–(5); :func:`candidate_tasks`) over the learned tasks in arrival order, with a per-task
scalar "initialization rate" ρ_s (default :func:`task_rate_scalar` = Σ_l |Z_l| / Σ_l |F_l| [IMPL-CHOICE]):
    "all"            every learned task (default)
    "recent"     (1) the K most recent
    "smallest_rate" (2) the K with the smallest ρ (most dissimilar; ties: earlier task first)
    "rate_below" (3) the tasks with ρ < τ, the K most recent of them (all of them if K is None)
    "recent+smallest_rate" (4), "recent+rate_below" (5): (1) combined with (2)/(3) by ``combine`` = "union"
    (default) or "intersection"; an empty intersection falls back to (1). The result is in arrival order.

Candidate selection S100 (R10; :func:`select_candidate`): keep candidate 2 (fine-tuned) unless candidate 1 (just
zeroed) has strictly higher evaluation accuracy; ``tie="cand1"`` switches the tie-break.
"""
from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

CANDIDATE_POLICIES = ("all", "recent", "smallest_rate", "rate_below", "recent+smallest_rate", "recent+rate_below")
CANDIDATE_OPTION_NUMBERS = {1: "recent", 2: "smallest_rate", 3: "rate_below", 4: "recent+smallest_rate",
                            5: "recent+rate_below"}
COMBINE_MODES = ("union", "intersection")
SIMILARITY_MEASURES = ("jsd", "kl")
S100_TIES = ("cand2", "cand1")

_CHUNK_ELEMS = 1 << 22  # elements of the (rows, D, k) temporary in the codebook projection


# --------------------------------------------------------------------------- divergences

def _as_weights(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    a = np.asarray(x, dtype=np.float64).ravel()
    if a.size == 0:
        raise ValueError(f"{name}: the distribution is empty")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError(f"{name}: entries must be finite and >= 0 (counts or probabilities)")
    if not a.sum() > 0:
        raise ValueError(f"{name}: entries sum to 0; a distribution needs positive mass")
    return a


def _pair(p, q) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_weights(p, "p"), _as_weights(q, "q")
    if a.shape != b.shape:
        raise ValueError(f"p and q must have the same number of cells, got {a.size} and {b.size}")
    return a / a.sum(), b / b.sum()


def _kl_to(pn: np.ndarray, m: np.ndarray, base: float) -> float:
    """Σ pn log_b(pn/m) over pn > 0 (m > 0 wherever pn > 0). Full-length terms so that Σ terms == Σ pn bitwise
    when every ratio is exactly 2 (disjoint supports) — which makes such a JSD exactly 1."""
    pos = pn > 0
    ratio = np.ones_like(pn)
    ratio[pos] = pn[pos] / m[pos]
    terms = pn * (np.log2(ratio) if base == 2 else np.log(ratio) / math.log(base))
    return float(terms.sum() / pn.sum())


def jsd(p, q, base: float = 2.0) -> float:
    """Jensen–Shannon divergence JSD(P, Q) = ½ KL(P‖M) + ½ KL(Q‖M), M = ½(P + Q) (spec R6).

    ``p``, ``q``: non-negative weights (counts or probabilities; numpy, torch or lists) with the same number of
    cells; each is normalised to sum 1, a multi-dimensional input is one joint distribution. Base 2 (default)
    gives a value in [0, 1]; equals ``scipy.spatial.distance.jensenshannon(p, q, base)**2``."""
    if not (base > 0 and base != 1 and math.isfinite(base)):
        raise ValueError(f"base: the logarithm base must be > 0 and != 1, got {base}")
    pn, qn = _pair(p, q)
    m = 0.5 * (pn + qn)
    value = 0.5 * _kl_to(pn, m, base) + 0.5 * _kl_to(qn, m, base)
    upper = 1.0 if base == 2 else math.log(2.0) / math.log(base)
    return float(min(max(value, 0.0), upper))


def kl_divergence(p, q, base: float = 2.0) -> float:
    """KL(P‖Q) = Σ P log_b(P/Q) (spec §3 item 3, the allowed alternative measure). +inf where Q = 0 < P.

    Unbounded and asymmetric: the Fig. 8 thresholds (0.1/0.5/0.9) are calibrated for the base-2 JSD, so a KL
    value needs its own rate table (the patent gives none)."""
    if not (base > 0 and base != 1 and math.isfinite(base)):
        raise ValueError(f"base: the logarithm base must be > 0 and != 1, got {base}")
    pn, qn = _pair(p, q)
    pos = pn > 0
    if np.any(qn[pos] == 0):
        return math.inf
    return max(0.0, float(np.sum(pn[pos] * np.log(pn[pos] / qn[pos])) / math.log(base)))


def divergence(p, q, measure: str = "jsd") -> float:
    """The configured task-distance measure (spec §8.1 "similarity measure"): "jsd" (base 2, default) or "kl"."""
    if measure not in SIMILARITY_MEASURES:
        raise ValueError(f"measure: unknown similarity measure {measure!r}; allowed values: "
                         f"{', '.join(SIMILARITY_MEASURES)}")
    return jsd(p, q) if measure == "jsd" else kl_divergence(p, q)


def jsd_from_counts(counts_p, counts_q, smoothing: float = 0.0) -> float:
    """JSD (base 2) between two count vectors/arrays of the same estimator (same cells).

    ``smoothing`` ≥ 0 is an additive pseudo-count per cell (Laplace smoothing; default 0 — the JSD is finite
    without it)."""
    if not (smoothing >= 0 and math.isfinite(smoothing)):
        raise ValueError(f"smoothing: must be a finite pseudo-count >= 0, got {smoothing}")
    a, b = _as_weights(counts_p, "counts_p"), _as_weights(counts_q, "counts_q")
    if a.shape != b.shape:
        raise ValueError(f"counts_p and counts_q must come from the same estimator (same cells), got "
                         f"{a.size} and {b.size} cells")
    return jsd(a + smoothing, b + smoothing)


def similarity(jsd_value: float) -> float:
    """sim = g(JSD) = 1 − JSD [IMPL-CHOICE; spec R6 only requires g strictly decreasing]."""
    if not (0.0 <= jsd_value <= 1.0):
        raise ValueError(f"jsd_value: must be in [0, 1], got {jsd_value}")
    return 1.0 - float(jsd_value)


# --------------------------------------------------------------------------- estimator (a): histograms

def _as_samples(batch, name: str = "batch") -> np.ndarray:
    if isinstance(batch, torch.Tensor):
        batch = batch.detach().cpu()
        batch = batch.double().numpy() if batch.is_floating_point() else batch.numpy()
    a = np.asarray(batch)
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{name}: expected a numeric array, got dtype {a.dtype}")
    a = a.astype(np.float64, copy=False)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: contains NaN or inf")
    return a


def histogram_edges(low: float = 0.0, high: float = 1.0, bins: int = 32) -> np.ndarray:
    """``bins`` + 1 equal-width edges over [low, high] (pixels in [0, 1] by default)."""
    if not (isinstance(bins, (int, np.integer)) and bins >= 1):
        raise ValueError(f"bins: must be an integer >= 1, got {bins!r}")
    if not (math.isfinite(low) and math.isfinite(high) and high > low):
        raise ValueError(f"low, high: need finite low < high, got low={low}, high={high}")
    return np.linspace(float(low), float(high), int(bins) + 1)


def _check_edges(edges) -> np.ndarray:
    e = np.asarray(edges, dtype=np.float64).ravel()
    if e.size < 2 or not np.all(np.isfinite(e)) or not np.all(np.diff(e) > 0):
        raise ValueError("edges: need at least 2 finite, strictly increasing bin edges")
    return e


def histogram_counts(batch, edges, per_feature: bool = False) -> np.ndarray:
    """Counts of the values of ``batch`` in the bins of ``edges`` (estimator (a)); int64, sum over shards.

    ``per_feature=False``: shape (B,) over all values of the batch. ``per_feature=True``: ``batch`` is
    (N, ...) samples, flattened to (N, D); shape (D, B), one histogram per feature position. Values below
    edges[0] / above edges[-1] are clipped into the first / last bin."""
    e = _check_edges(edges)
    x = _as_samples(batch)
    nb = e.size - 1
    if per_feature:
        if x.ndim < 1:
            raise ValueError("batch: per_feature=True needs samples of shape (N, ...)")
        x = x.reshape(x.shape[0], -1) if x.ndim > 1 else x.reshape(-1, 1)
    idx = np.clip(np.searchsorted(e, x, side="right") - 1, 0, nb - 1)
    if not per_feature:
        return np.bincount(idx.ravel(), minlength=nb).astype(np.int64)
    d = x.shape[1]
    flat = (np.arange(d)[None, :] * nb + idx).ravel()
    return np.bincount(flat, minlength=d * nb).astype(np.int64).reshape(d, nb)


def combine_counts(counts: Iterable) -> np.ndarray:
    """Σ of per-shard count arrays of one estimator (same shape); int64."""
    total = None
    for c in counts:
        a = np.asarray(c)
        if a.dtype.kind not in "iu":
            raise ValueError(f"counts: expected integer count arrays, got dtype {a.dtype}")
        if total is None:
            total = a.astype(np.int64).copy()
        elif a.shape != total.shape:
            raise ValueError(f"counts: all shards must have the same shape, got {total.shape} and {a.shape}")
        else:
            total += a
    if total is None:
        raise ValueError("counts: nothing to combine (no shards)")
    return total


# --------------------------------------------------------------------------- estimator (b): embedding codebook

@dataclass(frozen=True)
class Codebook:
    """A frozen embedding codebook (estimator (b)): z = (x − mean) @ projection, code = nearest centroid."""
    mean: np.ndarray         # (D,)
    projection: np.ndarray   # (D, k)
    centroids: np.ndarray    # (K, k)

    @property
    def n_codes(self) -> int:
        return int(self.centroids.shape[0])

    def as_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "projection": self.projection.tolist(),
                "centroids": self.centroids.tolist()}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Codebook":
        return cls(np.asarray(d["mean"], dtype=np.float64), np.asarray(d["projection"], dtype=np.float64),
                   np.asarray(d["centroids"], dtype=np.float64))


def _flat_samples(batch, name: str) -> np.ndarray:
    x = _as_samples(batch, name)
    if x.ndim < 2:
        raise ValueError(f"{name}: expected samples of shape (N, ...) with at least one feature, got {x.shape}")
    return x.reshape(x.shape[0], -1)


def _embed(x: np.ndarray, mean: np.ndarray, proj: np.ndarray) -> np.ndarray:
    """(x − mean) @ proj, row by row with a fixed summation order (sequential over D), independent of N."""
    xc = x - mean
    d, k = proj.shape
    rows = max(1, _CHUNK_ELEMS // max(1, d * k))
    out = np.empty((x.shape[0], k), dtype=np.float64)
    for s in range(0, x.shape[0], rows):
        out[s:s + rows] = (xc[s:s + rows, :, None] * proj[None, :, :]).sum(axis=1)
    return out


def _nearest(z: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest centroid (lowest on ties) and the squared distance, row-independent."""
    codes = np.empty(z.shape[0], dtype=np.int64)
    dist = np.empty(z.shape[0], dtype=np.float64)
    rows = max(1, _CHUNK_ELEMS // max(1, centroids.size))
    for s in range(0, z.shape[0], rows):
        d2 = ((z[s:s + rows, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
        codes[s:s + rows] = d2.argmin(axis=1)
        dist[s:s + rows] = d2[np.arange(d2.shape[0]), codes[s:s + rows]]
    return codes, dist


def fit_codebook(reference, n_codes: int = 32, proj_dim: int = 16, seed: int = 0, n_iter: int = 50) -> Codebook:
    """Fit estimator (b) on a reference sample (N, ...): mean, Gaussian projection N(0, 1/k), k-means codebook.

    k-means: k-means++ seeding, then Lloyd iterations until the assignment stops changing (at most ``n_iter``);
    an empty cluster is re-seeded at the point farthest from its centroid. Deterministic for a given ``seed``."""
    for name, v, lo in (("n_codes", n_codes, 1), ("proj_dim", proj_dim, 1), ("n_iter", n_iter, 1)):
        if not (isinstance(v, (int, np.integer)) and v >= lo):
            raise ValueError(f"{name}: must be an integer >= {lo}, got {v!r}")
    x = _flat_samples(reference, "reference")
    if x.shape[0] < n_codes:
        raise ValueError(f"n_codes: the reference sample has {x.shape[0]} rows, fewer than n_codes={n_codes}")
    rng = np.random.default_rng(seed)
    mean = x.mean(axis=0)
    proj = rng.standard_normal((x.shape[1], proj_dim)) / math.sqrt(proj_dim)
    z = _embed(x, mean, proj)
    # k-means++ seeding
    centroids = np.empty((n_codes, proj_dim))
    centroids[0] = z[rng.integers(z.shape[0])]
    d2 = ((z - centroids[0]) ** 2).sum(axis=1)
    for j in range(1, n_codes):
        total = d2.sum()
        i = int(rng.choice(z.shape[0], p=d2 / total)) if total > 0 else int(rng.integers(z.shape[0]))
        centroids[j] = z[i]
        d2 = np.minimum(d2, ((z - centroids[j]) ** 2).sum(axis=1))
    codes = None
    for _ in range(n_iter):
        new_codes, dist = _nearest(z, centroids)
        if codes is not None and np.array_equal(new_codes, codes):
            break
        codes = new_codes
        for j in range(n_codes):
            members = codes == j
            if members.any():
                centroids[j] = z[members].mean(axis=0)
            else:
                far = int(dist.argmax())
                centroids[j] = z[far]
                dist[far] = 0.0
    return Codebook(mean=mean, projection=proj, centroids=centroids)


def codebook_codes(batch, codebook: Codebook) -> np.ndarray:
    """Code (nearest-centroid index) of every sample of ``batch`` (N, ...)."""
    x = _flat_samples(batch, "batch")
    if x.shape[1] != codebook.mean.shape[0]:
        raise ValueError(f"batch: samples have {x.shape[1]} features, the codebook was fitted on "
                         f"{codebook.mean.shape[0]}")
    return _nearest(_embed(x, codebook.mean, codebook.projection), codebook.centroids)[0]


def codebook_counts(batch, codebook: Codebook) -> np.ndarray:
    """Counts of code assignments of ``batch`` (estimator (b)); int64 of shape (K,), sum over shards."""
    return np.bincount(codebook_codes(batch, codebook), minlength=codebook.n_codes).astype(np.int64)


# --------------------------------------------------------------------------- source task and candidate sets

def select_source(jsd_by_task: Mapping[Hashable, float], candidates: Sequence[Hashable] | None = None
                  ) -> tuple[Hashable, float]:
    """s* = argmin JSD over the candidates (R9); ties go to the first candidate (arrival order).

    ``jsd_by_task``: learned task → JSD to the new task. ``candidates``: the subset to compare (default: all keys,
    in their order). Returns (s*, JSD(s*, t)); this JSD selects the Fig. 8 row."""
    order = list(jsd_by_task) if candidates is None else list(candidates)
    if not order:
        raise ValueError("candidates: no learned task to compare with (task 1 has no source task)")
    best, best_v = None, math.inf
    for s in order:
        if s not in jsd_by_task:
            raise ValueError(f"candidates: task {s!r} has no JSD; known tasks: {list(jsd_by_task)}")
        v = float(jsd_by_task[s])
        if math.isnan(v):
            raise ValueError(f"jsd_by_task: the JSD of task {s!r} is NaN")
        if best is None or v < best_v:
            best, best_v = s, v
    return best, best_v


def task_rate_scalar(zeroed: int | Mapping[str, int], free: int | Mapping[str, int]) -> float:
    """A task's scalar "initialization rate" for options (2)/(3) [IMPL-CHOICE]: Σ_l |Z_l| / Σ_l |F_l|.

    Accepts totals or per-layer count mappings (e.g. ``Allocation.counts()``'s "zeroed"/"free")."""
    z = sum(zeroed.values()) if isinstance(zeroed, Mapping) else zeroed
    f = sum(free.values()) if isinstance(free, Mapping) else free
    if f <= 0:
        return 0.0
    if not 0 <= z <= f:
        raise ValueError(f"zeroed: must be between 0 and the free count {f}, got {z}")
    return z / f


def _policy_name(policy) -> str:
    if isinstance(policy, (int, np.integer)) and not isinstance(policy, bool):
        if int(policy) in CANDIDATE_OPTION_NUMBERS:
            return CANDIDATE_OPTION_NUMBERS[int(policy)]
    elif policy in CANDIDATE_POLICIES:
        return policy
    raise ValueError(f"candidate_policy: unknown policy {policy!r}; allowed values: {', '.join(CANDIDATE_POLICIES)} "
                     "(or the option numbers 1-5)")


def candidate_tasks(learned: Sequence[Hashable], policy="all", k: int | None = None,
                    rates: Mapping[Hashable, float] | None = None, tau: float | None = None,
                    combine: str = "union") -> list[Hashable]:
    """The learned tasks the new task is compared with (R9 options (1)–(5), see the module docstring).

    ``learned``: learned tasks in arrival order. ``k``: the "predetermined number" K (≥ 1; needed by
    "recent"/"smallest_rate" and the combinations; optional cap for "rate_below"). ``rates``: task → scalar rate
    ρ (needed by options 2, 3, 4, 5). ``tau``: the "predetermined value" τ (options 3, 5). Arrival order is kept."""
    name = _policy_name(policy)
    if combine not in COMBINE_MODES:
        raise ValueError(f"combine: unknown mode {combine!r}; allowed values: {', '.join(COMBINE_MODES)}")
    learned = list(learned)
    if len(set(learned)) != len(learned):
        raise ValueError(f"learned: task ids must be unique, got {learned}")
    if name == "all":
        return learned
    needs_k = name != "rate_below"
    if k is not None and not (isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 1):
        raise ValueError(f"k: the number of candidate tasks K must be an integer >= 1, got {k!r}")
    if needs_k and k is None:
        raise ValueError(f"k: candidate_policy={name!r} needs K (an integer >= 1)")
    if name != "recent":
        if rates is None or any(s not in rates for s in learned):
            missing = [s for s in learned if rates is None or s not in rates]
            raise ValueError(f"rates: candidate_policy={name!r} needs a scalar rate for every learned task; "
                             f"missing: {missing}")
    if name.endswith("rate_below"):
        if tau is None or not math.isfinite(tau):
            raise ValueError(f"tau: candidate_policy={name!r} needs a finite threshold τ, got {tau!r}")

    def recent() -> list:
        return learned[-k:]

    def smallest() -> list:
        ranked = sorted(range(len(learned)), key=lambda i: (float(rates[learned[i]]), i))
        return [learned[i] for i in ranked[:k]]

    def below() -> list:
        sel = [s for s in learned if float(rates[s]) < tau]
        return sel if k is None else sel[-k:]

    if name == "recent":
        chosen = set(recent())
    elif name == "smallest_rate":
        chosen = set(smallest())
    elif name == "rate_below":
        chosen = set(below())
    else:
        other = set(smallest() if name == "recent+smallest_rate" else below())
        chosen = set(recent()) | other if combine == "union" else set(recent()) & other
        if not chosen:
            chosen = set(recent())
    return [s for s in learned if s in chosen]


def select_candidate(acc_cand1: float, acc_cand2: float, tie: str = "cand2") -> int:
    """S100 (R10): 1 if candidate 1 (after S80) is kept, 2 if candidate 2 (after S90) is; ties per ``tie``."""
    if tie not in S100_TIES:
        raise ValueError(f"tie: unknown tie-break {tie!r}; allowed values: {', '.join(S100_TIES)}")
    a1, a2 = float(acc_cand1), float(acc_cand2)
    if math.isnan(a1) or math.isnan(a2):
        raise ValueError(f"acc_cand1, acc_cand2: accuracies must not be NaN, got {a1}, {a2}")
    if a1 > a2:
        return 1
    if a2 > a1:
        return 2
    return 2 if tie == "cand2" else 1


def choose_candidate(cand1, cand2, acc_cand1: float, acc_cand2: float, tie: str = "cand2"):
    """(kept candidate, 1|2) per :func:`select_candidate`; the candidates are returned as given (not copied)."""
    which = select_candidate(acc_cand1, acc_cand2, tie)
    return (cand1 if which == 1 else cand2), which
