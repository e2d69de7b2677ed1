"""Stage 2: the MLP over alpha-weighted safety neurons, searched with Optuna and fitted.

Inputs are standardised while training (Adam converges far better on unit-scale inputs); the
standardisation is then folded into the first linear layer, so the saved MLP reads raw weighted
neurons exactly as llm-siren feeds them. Classes are weighted inversely to their frequency.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field

import numpy as np
import optuna
import torch
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from torch import nn

from ..head import MLPSpec, SirenMLP

WIDTHS = (32, 64, 128, 256)


@dataclass(frozen=True)
class MLPParams:
    layer_dims: tuple[int, ...]
    dropout_rates: tuple[float, ...]
    learning_rate: float
    weight_decay: float
    epochs: int = 30

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SearchResult:
    params: MLPParams
    cv_f1: float
    cv_auroc: float
    trials: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class FitOptions:
    batch_size: int = 256
    patience: int = 4
    seed: int = 0


def class_weights(labels: np.ndarray) -> torch.Tensor:
    counts = np.bincount(labels.astype(int), minlength=2).astype(np.float64)
    counts[counts == 0] = 1.0
    return torch.as_tensor(counts.sum() / (2.0 * counts), dtype=torch.float32)


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

    Returns the MLP with the standardisation folded in, and the number of epochs that counted.
    """
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
    held_out = None
    if val_x is not None:
        held_out = (torch.as_tensor((val_x - mean) / std, dtype=torch.float32), torch.as_tensor(val_y, dtype=torch.long))
    best_loss, best_state, best_epoch, since_best = float("inf"), None, params.epochs, 0
    for epoch in range(1, params.epochs + 1):
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
            if since_best >= options.patience:
                break
    if best_state is not None:
        mlp.load_state_dict(best_state)
    mlp.eval()
    _fold_standardisation(mlp, mean, std)
    return mlp, best_epoch


def predict(mlp: SirenMLP, features: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        logits = mlp(torch.as_tensor(features, dtype=torch.float32))
        return torch.softmax(logits, dim=-1)[:, 1].numpy()


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
        learning_rate=trial.suggest_float("learning_rate", 1e-4, 3e-3, log=True),
        weight_decay=trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True),
    )


def search_mlp(x: np.ndarray, y: np.ndarray, groups: np.ndarray, trials: int, folds: int = 3, seed: int = 0,
               progress: bool = False) -> SearchResult:
    """Optuna TPE (seeded) over depth, widths, dropout, learning rate and weight decay; group-aware k-fold CV.

    Each trial's score is the mean harmful-class F1 over folds at threshold 0.5; the epochs of the
    final fit are the mean of the folds' early-stopping epochs for the best trial.
    """
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    fold_indices = list(splitter.split(x, y, groups))
    epochs_of: dict[int, list[int]] = {}
    aurocs: dict[int, float] = {}

    def objective(trial: optuna.Trial) -> float:
        params = suggest_params(trial)
        f1s, fold_aurocs, epochs = [], [], []
        for fold, (train_rows, val_rows) in enumerate(fold_indices):
            mlp, best_epoch = fit_mlp(x[train_rows], y[train_rows], params, FitOptions(seed=seed + fold),
                                      x[val_rows], y[val_rows])
            scores = predict(mlp, x[val_rows])
            f1s.append(f1_score(y[val_rows], scores >= 0.5, zero_division=0.0))
            fold_aurocs.append(roc_auc_score(y[val_rows], scores) if len(set(y[val_rows])) == 2 else float("nan"))
            epochs.append(best_epoch)
            trial.report(float(np.mean(f1s)), fold)
            if trial.should_prune():
                raise optuna.TrialPruned()
        epochs_of[trial.number], aurocs[trial.number] = epochs, float(np.nanmean(fold_aurocs))
        return float(np.mean(f1s))

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=4),
    )
    study.optimize(objective, n_trials=trials, show_progress_bar=progress)
    best = study.best_trial
    chosen = suggest_params(optuna.trial.FixedTrial(best.params))
    chosen = MLPParams(chosen.layer_dims, chosen.dropout_rates, chosen.learning_rate, chosen.weight_decay,
                       epochs=max(1, int(round(np.mean(epochs_of[best.number])))))
    history = [
        {"number": t.number, "state": t.state.name, "value": t.value, "params": t.params}
        for t in study.trials
    ]
    return SearchResult(chosen, float(best.value), aurocs[best.number], history)
