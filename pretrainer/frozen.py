"""Frozen-feature arms: what a pretrained embedding is worth before any finetuning.

Three classifiers over the backbone's features, each a few seconds on a CPU, each with
its one setting chosen on the validation split (when there is one):

- `knn`: k nearest labeled examples by cosine similarity, distance-weighted;
- `logreg`: logistic regression on the standardised features;
- `spreading`: label spreading (Zhou et al. 2004) over a symmetric kNN graph of the
  unlabeled pool + labeled + val + test examples (cosine neighbours). The test
  examples are nodes of the graph without their labels: transductive, as a user with
  the unlabeled test inputs in hand could do.

`propagate` also gives the pool's propagated class distributions, which finetuning
uses as prior pseudo-labels (finetune.prior=propagation, AS3L-style: Zhao et al.
2023, arXiv 2203.04560).

scikit-learn's LabelSpreading builds its kNN graph anew on every fit (one per k tried)
from Euclidean distances; this module computes the neighbours once and iterates the
normalised graph itself (a few sparse products), so the k grid costs one search.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

ARMS = ("knn", "logreg", "spreading")
KNN_GRID = (1, 5, 10)
C_GRID = (0.01, 0.1, 1.0)
GRAPH_K_GRID = (10, 20)
# label spreading's clamping: the share of a node's label taken from its neighbours. 0.99
# as in Zhou et al. 2004; with class mass normalisation (`spread`) the frozen arm scored
# 77.0 % instead of 74.9 % with 0.9 on fashion_full's three study draws (docs/few-labels.md,
# "Label spreading with a long reach")
ALPHA = 0.99
ITERATIONS = 400  # at most: label mass moves one hop per iteration; stops on convergence
# the graphs of label spreading (frozen arm and prior) on features wider than GRAPH_DIM,
# one chosen on val with k: the cosine of the standardised features (its neighbours
# searched among each row's RERANK * k most similar rows on the first GRAPH_DIM
# principal components, ordered by the exact cosine: 99.7 % of the exact top-20 on
# fashion_full's 3,136 trunk features), and the cosine in those components whitened
# (each scaled to unit variance), where a few directions of large variance that say
# little of the class (a garment's brightness, its size) no longer decide who is a
# neighbour: on fashion_full's three study draws the frozen arm 77.9 % whitened against
# 76.9 % standardised (docs/few-labels.md, "A whitened graph"). Whitening also lifts
# pure-noise components to unit variance, which can lose where the classes differ in
# only a few directions: hence the choice on val.
GRAPH_DIM = 128
RERANK = 4
POOL_MAX = 60_000  # pool nodes in the graph (a seeded subset above this): memory and seconds


def feature_name(layer: str = "") -> str:
    """The features the arms score: the backbone's embedding, or the layer `layer` names
    (finetune.prior_layer)."""
    return f"{layer} features" if layer else "embedding"


def describe(arm: str, features: str = "") -> str:
    """What an arm is, naming its features (feature_name)."""
    what = f"frozen {feature_name(features)}"
    return {"knn": f"kNN on the {what} (cosine)",
            "logreg": f"logistic regression on the {what}",
            "spreading": f"label spreading over a kNN graph of the {what}"}[arm]


def split_features(featurize: Callable, store: Path, split: str, *, batch_size: int = 512,
                   limit: Optional[int] = None):
    """(features [n, d] float32, labels [n] int or None) of one split of a store, in the
    store's order: its first `limit` examples when the split is larger, a random subset,
    since every split is stored in a seeded random permutation (only those are read)."""
    from pretrainer.baselines import class_indices
    from pretrainer.data import pipeline

    info = pipeline.split_info(store, split)
    if info.count == 0:
        return None, None
    labeled = split != "unlabeled"
    ds = pipeline.examples(store, split, batch_size=batch_size, cache=False, labels=labeled,
                           standardize=False)
    if limit is not None:
        ds = ds.take(-(-limit // batch_size))
    xs, ys = [], []
    for item in ds.as_numpy_iterator():
        x, y = item if labeled else (item, None)
        xs.append(featurize(x))
        if y is not None:
            ys.append(np.asarray(y).reshape(len(x), *np.shape(y)[1:]))
    x = np.concatenate(xs).astype(np.float32)[:limit]
    y = class_indices(np.concatenate(ys))[:limit] if ys else None
    return x, y


def to_unit(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Standardised with the pool's statistics, then L2-normalised (cosine geometry)."""
    z = (x - mean) / std
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def pool_stats(*parts) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([p for p in parts if p is not None])
    return x.mean(0), np.maximum(x.std(0), 1e-6)


def neighbours(z: np.ndarray, k: int) -> np.ndarray:
    """Indices [n, k] of each row's k most cosine-similar other rows (z L2-normalised);
    blocked matrix products, so memory is ~block x n."""
    n = len(z)
    k = min(k, n - 1)
    out = np.empty((n, k), np.int64)
    block = max(1, min(n, 2 ** 24 // max(n, 1)))
    for i in range(0, n, block):
        s = z[i:i + block] @ z.T
        s[np.arange(len(s)), np.arange(i, i + len(s))] = -np.inf  # not its own neighbour
        part = np.argpartition(-s, k, axis=1)[:, :k]
        order = np.take_along_axis(-s, part, 1).argsort(1)
        out[i:i + block] = np.take_along_axis(part, order, 1)
    return out


def spread(nbrs: np.ndarray, k: int, labeled: np.ndarray, y: np.ndarray, num_classes: int,
           alpha: float = ALPHA, iterations: int = ITERATIONS,
           share: Optional[np.ndarray] = None) -> np.ndarray:
    """Class distributions [n, K] by label spreading over the symmetric kNN graph of the
    first k neighbours: F <- alpha S F + (1 - alpha) Y, S = D^-1/2 W D^-1/2.

    Then class mass normalisation (Zhu et al. 2003): each class's total over the
    unlabeled rows is scaled to `share` (the class proportions expected there; default
    `class_share` of the labeled rows), so a class whose few labels sit in a dense region does not
    flood the graph. With a few labels per class that flooding is what limits spreading
    with a long reach (alpha 0.99): on fashion_full it took 3-17 % of the pool per
    class where each class is 10 %."""
    from scipy import sparse

    n = len(nbrs)
    rows = np.repeat(np.arange(n), k)
    w = sparse.csr_matrix((np.ones(n * k, np.float64), (rows, nbrs[:, :k].reshape(-1))),
                          shape=(n, n))
    w = w.maximum(w.T)  # symmetric: an edge when either end lists the other
    d = np.asarray(w.sum(1)).reshape(-1)
    inv = sparse.diags(1.0 / np.sqrt(np.maximum(d, 1e-12)))
    s = (inv @ w @ inv).tocsr()
    y0 = np.zeros((n, num_classes), np.float64)  # far nodes get tiny mass: no underflow
    y0[labeled, y] = 1.0
    f = y0.copy()
    for _ in range(iterations):
        new = alpha * (s @ f) + (1 - alpha) * y0
        reached = (new.sum(1) > 0).all()
        # rows are compared as distributions: a far node's mass is tiny but its argmax counts
        norm = np.maximum(new.sum(1, keepdims=True), 1e-30)
        settled = reached and np.abs(new / norm - f / np.maximum(
            f.sum(1, keepdims=True), 1e-30)).max() < 1e-4
        f = new
        if settled:
            break
    total = f.sum(1, keepdims=True)
    # a node no label reached (a component without labels): all zeros, fixed by the caller
    f = np.where(total > 0, f / np.maximum(total, 1e-30), 0.0)
    unlabeled = np.ones(n, bool)
    unlabeled[labeled] = False
    if unlabeled.any():
        share = class_share(None, y, num_classes) if share is None else share
        mass = f[unlabeled].sum(0)
        f = f * (np.asarray(share, np.float64) / np.maximum(mass, 1e-12))
        total = f.sum(1, keepdims=True)
        f = np.where(total > 0, f / np.maximum(total, 1e-30), 0.0)
    return f.astype(np.float32)


def class_share(y_val: Optional[np.ndarray], y_train: np.ndarray, num_classes: int
                ) -> np.ndarray:
    """The class proportions `spread` scales its unlabeled rows to: the val split's when
    it has labels (a stratified sample of the data; the labeled split may be drawn per
    class, `data.labels_per_class`, and say nothing of the proportions), else the
    labeled split's. One count is added to each class (a class absent from val keeps
    some mass)."""
    y = y_val if y_val is not None and len(y_val) else y_train
    counts = np.bincount(np.asarray(y, np.int64), minlength=num_classes) + 1.0
    return counts / counts.sum()


def propagate(z: np.ndarray, y_tr: np.ndarray, sizes: tuple[int, ...], nbrs: np.ndarray, *,
              num_classes: int, k: int, share: Optional[np.ndarray] = None
              ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Label spreading over z's rows, [train, pool, *others] (a graph's space, rows
    L2-normalised: `graphs`; `sizes`: the pool's and each other part's row count),
    on the first k columns of `nbrs`: (distributions of the pool rows, of each other
    part)."""
    n_tr = len(y_tr)
    f = spread(nbrs, k, np.arange(n_tr), y_tr, num_classes, share=share)
    lost = np.flatnonzero(f.sum(1) == 0)
    if len(lost):  # no label reached them: the most similar labeled example's class
        f[lost, y_tr[(z[lost] @ z[:n_tr].T).argmax(1)]] = 1.0
    bounds = np.cumsum([n_tr, *sizes])
    parts = [f[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
    return parts[0], parts[1:]


def principal_components(z: np.ndarray, fit: np.ndarray, dim: Optional[int] = None, *,
                         whiten: bool = False) -> Optional[np.ndarray]:
    """z's rows on the first `dim` (GRAPH_DIM) principal components of the rows `fit`,
    whitened or not, L2-normalised; None where z is no wider than `dim` or `fit` too
    small for the components to mean much (there the exact search is cheap anyway)."""
    dim = dim or GRAPH_DIM
    if z.shape[1] <= dim or len(fit) < 4 * dim:
        return None
    from sklearn.decomposition import PCA

    pca = PCA(dim, whiten=whiten, svd_solver="randomized", random_state=0).fit(fit)
    r = pca.transform(z).astype(np.float32)
    return r / np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-12)


def graph_neighbours(z: np.ndarray, k: int, fit: np.ndarray) -> np.ndarray:
    """neighbours(z, k) (z: standardised, L2-normalised rows), faster where z is wider
    than GRAPH_DIM: the RERANK * k most similar rows on its principal components (fitted
    on the rows `fit`) are each row's candidates, and the exact cosine in z orders them,
    so the graph is (all but) the exact one at a fraction of the search."""
    r = principal_components(z, fit)
    if r is None:
        return neighbours(z, k)
    k = min(k, len(z) - 1)
    candidates = neighbours(r, min(RERANK * k, len(z) - 1))
    out = np.empty((len(z), k), np.int64)
    block = max(1, 2 ** 24 // (candidates.shape[1] * z.shape[1]))  # ~64 MiB of gathered rows
    for i in range(0, len(z), block):
        c = candidates[i:i + block]
        s = np.einsum("nd,nkd->nk", z[i:i + block], z[c])
        out[i:i + block] = np.take_along_axis(c, np.argsort(-s, 1, kind="stable")[:, :k], 1)
    return out


def graphs(x: np.ndarray, n_train: int, n_pool: int, stats: Optional[tuple] = None):
    """Label spreading's graphs over the rows of x (raw features; its first rows the
    labeled ones, then the pool's), as (space name, rows in that space L2-normalised,
    each row's max(GRAPH_K_GRID) neighbours): the standardised features (`to_unit`
    with the pool's and labeled rows' statistics) and, for features wider than
    GRAPH_DIM, their whitened principal components on the pool (see GRAPH_DIM).
    `stats`: those statistics when the caller has them. Yielded one at a time: each
    holds a copy of x."""
    k, pool = max(GRAPH_K_GRID), slice(n_train, n_train + n_pool)
    z = to_unit(x, *(stats or pool_stats(x[pool], x[:n_train])))
    yield "standardised", z, graph_neighbours(z, k, z[pool])
    del z
    white = principal_components(x, x[pool], whiten=True)
    if white is not None:
        yield "whitened", white, neighbours(white, k)


def spread_grid(train, pool, others: tuple, num_classes: int,
                share: Optional[np.ndarray] = None, stats: Optional[tuple] = None) -> dict:
    """{(space, k): (pool distributions, distributions of each of `others`)} for every
    graph of `graphs` and k of GRAPH_K_GRID (each k the first k neighbours of one
    search). train = (features, labels); pool and others: features as the backbone
    gives them (standardised with the statistics of the labeled rows and the pool:
    `pool_stats(pool, train features)`, passed as `stats` when the caller has them)."""
    x_tr, y_tr = train
    x = np.concatenate([x_tr, pool, *others])  # once: 70k x 3,136 floats are 0.9 GB
    sizes = (len(pool), *(len(o) for o in others))
    return {(space, k): propagate(z, y_tr, sizes, nbrs, num_classes=num_classes, k=k,
                                  share=share)
            for space, z, nbrs in graphs(x, len(x_tr), len(pool), stats)
            for k in GRAPH_K_GRID}


def choose_graph(val_predictions: dict, y_val: Optional[np.ndarray]) -> tuple:
    """The (space, k) of `spread_grid` whose labels score best on val (`val_predictions`:
    (space, k) -> predicted val labels; the first on a tie). Without val labels: the
    whitened graph where there is one (it measured better on fashion_full), k 20."""
    if y_val is None or not len(y_val):
        spaces = {space for space, _ in val_predictions}
        return ("whitened" if "whitened" in spaces else "standardised", max(GRAPH_K_GRID))
    scored = {key: float((pred == y_val).mean()) for key, pred in val_predictions.items()}
    return max(scored, key=scored.get)


def describe_graph(choice: tuple) -> str:
    """(space, k) as the frozen arm's setting and the prior's line show it."""
    space, k = choice
    return f"k={k}" + (", whitened components" if space == "whitened" else "")


def score(feats: dict, num_classes: int, arms: tuple[str, ...] = ARMS, *,
          features: str = "") -> list[dict]:
    """Each frozen arm's test predictions: feats maps split -> (x, y) (x None when the
    split is empty); settings chosen on val when it has examples. Results are laid out
    as baselines' ({"name", "arm", "y_true", "y_pred", "accuracy", "chosen", "seconds"});
    `features` names the layer the features come from (empty: the embedding)."""
    from sklearn.linear_model import LogisticRegression

    x_tr, y_tr = feats["train"]
    x_va, y_va = feats.get("val", (None, None))
    x_te, y_te = feats["test"]
    x_po = feats.get("unlabeled", (None, None))[0]
    mean, std = pool_stats(x_po, x_tr)
    z_tr, z_te = to_unit(x_tr, mean, std), to_unit(x_te, mean, std)
    z_va = to_unit(x_va, mean, std) if x_va is not None else None
    has_val = z_va is not None and len(z_va) > 0
    out = []

    def pick(candidates, predict_val):
        if not has_val or len(candidates) == 1:
            return candidates[len(candidates) // 2]
        accs = [float((predict_val(c) == y_va).mean()) for c in candidates]
        return candidates[int(np.argmax(accs))]

    if "knn" in arms:
        t0 = time.perf_counter()
        grid = [k for k in KNN_GRID if k <= len(z_tr)] or [1]

        def knn(k, z):
            s = z @ z_tr.T
            idx = np.argpartition(-s, k - 1, axis=1)[:, :k]
            votes = np.zeros((len(z), num_classes))
            np.add.at(votes, (np.arange(len(z))[:, None], y_tr[idx]),
                      np.maximum(np.take_along_axis(s, idx, 1), 0) + 1e-6)
            return votes.argmax(1)
        k = pick(grid, lambda k: knn(k, z_va))
        out.append(_result("knn", y_te, knn(k, z_te), f"k={k}" + (" on val" if has_val
                                                                    else ""), t0, features))
    if "logreg" in arms:
        t0 = time.perf_counter()
        s_tr, s_te = (x_tr - mean) / std, (x_te - mean) / std
        s_va = (x_va - mean) / std if has_val else None
        fitted = {}

        def fit(c):
            if c not in fitted:
                fitted[c] = LogisticRegression(C=c, max_iter=1000).fit(s_tr, y_tr)
            return fitted[c]
        if len(np.unique(y_tr)) < 2:
            pred, chosen = np.full(len(y_te), y_tr[0]), "one class"
        else:
            c = pick(list(C_GRID), lambda c: fit(c).predict(s_va))
            pred, chosen = fit(c).predict(s_te), f"C={c:g}" + (" on val" if has_val else "")
        out.append(_result("logreg", y_te, pred, chosen, t0, features))
    if "spreading" in arms and x_po is not None:
        t0 = time.perf_counter()
        others = (x_te, x_va) if has_val else (x_te,)
        results = {key: [p.argmax(1) for p in parts] for key, (_, parts) in
                   spread_grid((x_tr, y_tr), x_po, others, num_classes,
                               class_share(y_va, y_tr, num_classes), (mean, std)).items()}
        key = choose_graph({key: r[-1] for key, r in results.items()},
                           y_va if has_val else None)
        out.append(_result("spreading", y_te, results[key][0], describe_graph(key)
                           + (" on val" if has_val else ""), t0, features))
    return out


def _result(arm: str, y_true, y_pred, chosen: str, t0: float, features: str = "") -> dict:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return {"name": describe(arm, features), "arm": arm, "y_true": y_true, "y_pred": y_pred,
            "accuracy": float((y_pred == y_true).mean()), "chosen": chosen,
            "seconds": round(time.perf_counter() - t0, 2), "samples": int(len(y_true))}


def image_featurizer(backbone, batch: int = 512) -> Callable:
    """callable(images [n, h, w, c] in [0, 1]) -> float32 features [n, d], inference mode."""
    def call(x):
        out = [np.asarray(backbone(x[i:i + batch], training=False), np.float32)
               for i in range(0, len(x), batch)]
        return np.concatenate(out).reshape(len(x), -1)
    return call


def store_features(featurize: Callable, store: Path, *, pool_max: int = POOL_MAX) -> dict:
    """split -> (features, labels) for train, val, test and (up to pool_max of) the pool."""
    return {split: split_features(featurize, store, split,
                                  limit=pool_max if split == "unlabeled" else None)
            for split in ("train", "val", "test", "unlabeled")}
