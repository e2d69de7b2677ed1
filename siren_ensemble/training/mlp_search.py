"""Stage 2: the MLP over alpha-weighted safety neurons, searched with Optuna and fitted.

Inputs are standardised while training (Adam converges far better on unit-scale inputs); the
standardisation is then folded into the first linear layer, so the saved MLP reads raw weighted
neurons exactly as llm-siren feeds them. Classes are weighted inversely to their frequency.

Linear models are candidates too: besides the Optuna trials, the same folds score logistic
regressions (on all neurons, or on one column range such as the best probe's layer), embedded
exactly in llm-siren's format (``embed_logistic``). A fit that can stop early on validation data
runs at least ``FitOptions.min_steps`` optimiser steps however few batches an epoch has, so an MLP
on a few hundred texts does not stop at 30 epochs of one or two steps each.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Literal, Sequence

import numpy as np
import optuna
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.preprocessing import StandardScaler
from torch import nn

from ..head import MLPSpec, SirenMLP
from .crossfit import fold_rows

WIDTHS = (32, 64, 128, 256)
LEARNING_RATES = (3e-4, 3e-2)
LOGISTIC_C_GRID = (0.01, 0.1, 1.0, 10.0)
#: Trial 0 of every search: one hidden layer, no dropout, a learning rate that converges within min_steps.
BASELINE_TRIAL = {"depth": 1, "width_0": 64, "dropout_0": 0.0, "learning_rate": 3e-3, "weight_decay": 1e-4}

Columns = tuple[int, int] | None


@dataclass(frozen=True)
class MLPParams:
    layer_dims: tuple[int, ...]
    dropout_rates: tuple[float, ...]
    learning_rate: float
    weight_decay: float
    epochs: int = 30
    #: "mlp": trained with AdamW; "logistic": a logistic regression with inverse regularisation ``C`` on the
    #: input columns [start, stop) (all when None), embedded exactly (``embed_logistic``). Nothing is trained by steps.
    kind: Literal["mlp", "logistic"] = "mlp"
    C: float | None = None
    columns: Columns = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "MLPParams":
        """Reads ``to_dict``'s output, and reports written before ``kind`` existed (MLPs)."""
        columns = data.get("columns")
        return cls(tuple(data["layer_dims"]), tuple(data["dropout_rates"]), data["learning_rate"], data["weight_decay"],
                   data["epochs"], data.get("kind", "mlp"), data.get("C"), tuple(columns) if columns is not None else None)

    def describe(self) -> str:
        if self.kind == "logistic":
            where = "all neurons" if self.columns is None else f"columns {self.columns[0]}-{self.columns[1] - 1}"
            return f"logistic regression (C {self.C}, {where}) embedded as layer_dims [2]"
        return (f"MLP layer_dims {list(self.layer_dims)} dropout {list(self.dropout_rates)} lr {self.learning_rate:.2e} "
                f"weight decay {self.weight_decay:.1e} epochs {self.epochs}")


def logistic_params(C: float, columns: Columns = None) -> MLPParams:
    return MLPParams((2,), (0.0,), learning_rate=0.0, weight_decay=0.0, epochs=0, kind="logistic", C=C, columns=columns)


@dataclass(frozen=True)
class Scored:
    """A stage-2 candidate and its harmful-class F1 (threshold 0.5) and AUROC, over CV folds or on validation."""

    params: MLPParams
    f1: float
    auroc: float

    def to_dict(self) -> dict:
        return {"kind": self.params.kind, "C": self.params.C,
                "columns": list(self.params.columns) if self.params.columns else None,
                "f1": round(self.f1, 6), "auroc": round(self.auroc, 6)}


@dataclass
class SearchResult:
    params: MLPParams
    cv_f1: float
    cv_auroc: float
    trials: list[dict] = field(default_factory=list)
    #: The best Optuna trial and every logistic candidate, with their CV scores.
    candidates: list[Scored] = field(default_factory=list)

    def cv_of(self, params: MLPParams) -> Scored | None:
        return next((candidate for candidate in self.candidates if candidate.params == params), None)


@dataclass(frozen=True)
class FitOptions:
    batch_size: int = 256
    patience: int = 4
    seed: int = 0
    #: With validation data, train for at least this many optimiser steps (small data has few batches per epoch)...
    min_steps: int = 1000
    #: ...and stop once validation loss has not improved for this many steps (or ``patience`` epochs, if longer).
    patience_steps: int = 60


def class_weights(labels: np.ndarray) -> torch.Tensor:
    counts = np.bincount(labels.astype(int), minlength=2).astype(np.float64)
    counts[counts == 0] = 1.0
    return torch.as_tensor(counts.sum() / (2.0 * counts), dtype=torch.float32)


def batches_per_epoch(rows: int, batch_size: int) -> int:
    return max(1, math.ceil(rows / batch_size))


@contextlib.contextmanager
def _one_torch_thread():
    # Mini-batches of a small MLP are too small to split across threads: measured here, 2 threads
    # were 40x slower than 1 on a loaded 2-core machine (spin-waiting workers), never faster.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def fit_mlp(train_x: np.ndarray, train_y: np.ndarray, params: MLPParams, options: FitOptions = FitOptions(),
            val_x: np.ndarray | None = None, val_y: np.ndarray | None = None) -> tuple[SirenMLP, int]:
    """Fit an MLP; with validation data, stop early on validation loss and keep the best epoch's weights.

    Without validation data it trains exactly ``params.epochs`` epochs. Returns the MLP with the
    standardisation folded in, and the number of epochs that counted (0 for a logistic candidate).
    """
    if params.kind == "logistic":
        return fit_logistic(train_x, train_y, params.C, params.columns), 0
    with _one_torch_thread():
        return _fit_mlp(train_x, train_y, params, options, val_x, val_y)


def _fit_mlp(train_x, train_y, params: MLPParams, options: FitOptions, val_x, val_y) -> tuple[SirenMLP, int]:
    torch.manual_seed(options.seed)
    generator = torch.Generator().manual_seed(options.seed)
    mean = train_x.mean(axis=0)
    std = train_x.std(axis=0) + 1e-6
    x = torch.as_tensor((train_x - mean) / std, dtype=torch.float32)
    y = torch.as_tensor(train_y, dtype=torch.long)
    spec = MLPSpec(input_dim=x.shape[1], layer_dims=list(params.layer_dims), dropout_rates=list(params.dropout_rates))
    mlp = SirenMLP(spec)
    optimiser = torch.optim.AdamW(mlp.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay)
    loss_fn = nn.CrossEntropyLoss(weight=class_weights(train_y))
    held_out, epochs, patience = None, params.epochs, options.patience
    if val_x is not None:
        held_out = (torch.as_tensor((val_x - mean) / std, dtype=torch.float32), torch.as_tensor(val_y, dtype=torch.long))
        batches = batches_per_epoch(len(x), options.batch_size)
        epochs = max(epochs, math.ceil(options.min_steps / batches))
        patience = max(patience, math.ceil(options.patience_steps / batches))
    best_loss, best_state, best_epoch, since_best = float("inf"), None, epochs, 0
    for epoch in range(1, epochs + 1):
        mlp.train()
        for rows in torch.randperm(len(x), generator=generator).split(options.batch_size):
            optimiser.zero_grad()
            loss_fn(mlp(x[rows]), y[rows]).backward()
            optimiser.step()
        if held_out is None:
            continue
        mlp.eval()
        with torch.no_grad():
            loss = float(loss_fn(mlp(held_out[0]), held_out[1]))
        if loss < best_loss - 1e-5:
            best_loss, best_state, best_epoch, since_best = loss, {k: v.clone() for k, v in mlp.state_dict().items()}, epoch, 0
        else:
            since_best += 1
            if since_best >= patience:
                break
    if best_state is not None:
        mlp.load_state_dict(best_state)
    mlp.eval()
    _fold_standardisation(mlp, mean, std)
    return mlp, best_epoch


def fit_logistic(train_x: np.ndarray, train_y: np.ndarray, C: float, columns: Columns = None) -> SirenMLP:
    """A class-balanced L2 logistic regression on standardised ``columns``, embedded exactly with the scaling folded in."""
    start, stop = columns if columns is not None else (0, train_x.shape[1])
    inputs = train_x[:, start:stop].astype(np.float64)
    scaler = StandardScaler().fit(inputs)
    model = LogisticRegression(C=C, class_weight="balanced", max_iter=5000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # near-separable data at large C: still a usable model
        model.fit(scaler.transform(inputs), train_y)
    coef = model.coef_.ravel()
    weights = np.zeros(train_x.shape[1])
    weights[start:stop] = coef / scaler.scale_
    return embed_logistic(weights, float(model.intercept_[0] - coef @ (scaler.mean_ / scaler.scale_)))


def embed_logistic(weights: np.ndarray, bias: float) -> SirenMLP:
    """The logistic model sigmoid(w.x + b) as Linear -> ReLU -> Linear with two hidden units, exactly.

    With z = w.x + b the hidden units are relu(z) and relu(-z), and the logits [0, relu(z) - relu(-z)]
    = [0, z], whose class-1 softmax is sigmoid(z).
    """
    mlp = SirenMLP(MLPSpec(input_dim=len(weights), layer_dims=[2], dropout_rates=[0.0]))
    first, last = mlp.network[0], mlp.network[-1]
    with torch.no_grad():
        first.weight.copy_(torch.as_tensor(np.stack([weights, -weights]), dtype=torch.float32))
        first.bias.copy_(torch.as_tensor([bias, -bias], dtype=torch.float32))
        last.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, -1.0]]))
        last.bias.zero_()
    return mlp.eval()


def predict(mlp: SirenMLP, features: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        logits = mlp(torch.as_tensor(features, dtype=torch.float32))
        return torch.softmax(logits, dim=-1)[:, 1].numpy()


def score(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """Harmful-class F1 at threshold 0.5 and AUROC (NaN with one class)."""
    f1 = float(f1_score(labels, scores >= 0.5, zero_division=0.0))
    return f1, float(roc_auc_score(labels, scores)) if len(set(labels.tolist())) == 2 else float("nan")


def _fold_standardisation(mlp: SirenMLP, mean: np.ndarray, std: np.ndarray) -> None:
    # W((x - m) / s) + b  ==  (W / s) x + (b - W (m / s))
    first = mlp.network[0]
    scale = torch.as_tensor(1.0 / std, dtype=torch.float32)
    shift = torch.as_tensor(mean / std, dtype=torch.float32)
    with torch.no_grad():
        first.bias -= first.weight @ shift
        first.weight *= scale


def suggest_params(trial: optuna.Trial) -> MLPParams:
    depth = trial.suggest_int("depth", 1, 3)
    dims, dropouts = [], []
    for index in range(depth):
        dims.append(trial.suggest_categorical(f"width_{index}", WIDTHS))
        dropouts.append(round(trial.suggest_float(f"dropout_{index}", 0.0, 0.5), 3))
    return MLPParams(
        layer_dims=tuple(dims), dropout_rates=tuple(dropouts),
        learning_rate=trial.suggest_float("learning_rate", *LEARNING_RATES, log=True),
        weight_decay=trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True),
    )


def logistic_candidates(columns: Sequence[Columns] = (None,), c_grid: Sequence[float] = LOGISTIC_C_GRID) -> list[MLPParams]:
    return [logistic_params(C, where) for where in dict.fromkeys(columns) for C in c_grid]


def search_mlp(x: np.ndarray, y: np.ndarray, groups: np.ndarray, trials: int, folds: int = 3, seed: int = 0,
               progress: bool = False, logistic_columns: Sequence[Columns] = (None,), final_rows: int | None = None,
               options: FitOptions = FitOptions()) -> SearchResult:
    """Optuna TPE (seeded) over depth, widths, dropout, learning rate and weight decay, and the logistic
    candidates on ``logistic_columns``; group-aware k-fold CV, the same folds for all.

    A candidate's score is its mean harmful-class F1 over folds at threshold 0.5 (AUROC breaks ties;
    on a full tie the logistic model wins, being the simpler). The best trial's final fit trains for
    the mean of its folds' early-stopping steps, as epochs over ``final_rows`` rows (default: a fold's).
    """
    fold_indices = fold_rows(y, groups, folds, seed)
    steps_of: dict[int, list[int]] = {}
    aurocs: dict[int, float] = {}

    def objective(trial: optuna.Trial) -> float:
        params = suggest_params(trial)
        f1s, fold_aurocs, steps = [], [], []
        for fold, (train_rows, val_rows) in enumerate(fold_indices):
            mlp, best_epoch = fit_mlp(x[train_rows], y[train_rows], params, replace(options, seed=seed + fold),
                                      x[val_rows], y[val_rows])
            f1, auroc = score(y[val_rows], predict(mlp, x[val_rows]))
            f1s.append(f1)
            fold_aurocs.append(auroc)
            steps.append(best_epoch * batches_per_epoch(len(train_rows), options.batch_size))
            trial.report(float(np.mean(f1s)), fold)
            if trial.should_prune():
                raise optuna.TrialPruned()
        steps_of[trial.number], aurocs[trial.number] = steps, float(np.nanmean(fold_aurocs))
        return float(np.mean(f1s))

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=4),
    )
    study.enqueue_trial(BASELINE_TRIAL)
    study.optimize(objective, n_trials=trials, show_progress_bar=progress)
    best = study.best_trial
    if final_rows is None:
        final_rows = int(np.mean([len(train_rows) for train_rows, _ in fold_indices]))
    epochs = math.ceil(np.mean(steps_of[best.number]) / batches_per_epoch(final_rows, options.batch_size))
    searched = replace(suggest_params(optuna.trial.FixedTrial(best.params)), epochs=max(1, epochs))
    candidates = [Scored(searched, float(best.value), aurocs[best.number])]
    candidates += [_cross_validate(x, y, fold_indices, params) for params in logistic_candidates(logistic_columns)]
    winner = max(candidates, key=lambda c: (c.f1, np.nan_to_num(c.auroc), c.params.kind == "logistic"))
    history = [
        {"number": t.number, "state": t.state.name, "value": t.value, "params": t.params}
        for t in study.trials
    ]
    return SearchResult(winner.params, winner.f1, winner.auroc, history, candidates)


def _cross_validate(x: np.ndarray, y: np.ndarray, fold_indices, params: MLPParams) -> Scored:
    scores = [score(y[val_rows], predict(fit_mlp(x[train_rows], y[train_rows], params)[0], x[val_rows]))
              for train_rows, val_rows in fold_indices]
    return Scored(params, float(np.mean([f1 for f1, _ in scores])), float(np.nanmean([auroc for _, auroc in scores])))


def fit_and_score(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                  candidates: Sequence[MLPParams], seed: int = 0) -> list[tuple[SirenMLP, Scored]]:
    """Each candidate fitted on train (as the final head is) and scored on validation, in the given order."""
    fitted = []
    for params in candidates:
        mlp, _ = fit_mlp(train_x, train_y, params, FitOptions(seed=seed))
        fitted.append((mlp, Scored(params, *score(val_y, predict(mlp, val_x)))))
    return fitted
