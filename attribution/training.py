"""Deterministic weighted training and the ``TrainingRun`` it produces.

Training is a pure function of the spec and the data weights ``w``: the
initialisation and the batch order come from the spec's seed, and the step loss
of batch ``B_t`` is ``(1 / b) * sum_{i in B_t} w_i * loss_i`` with ``b`` the fixed
batch size. The loss is never divided by ``sum(w)``, so zeroing one example's
weight does not rescale the others.

Training and the replay used by the reverse pass share ``Trainer.advance``, so a
replayed state equals the stored one bit for bit on the same machine and
thread count.
"""

from __future__ import annotations

import hashlib
import json
import logging
import operator
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch.func import grad_and_value

from . import __version__
from .data import Dataset, load_dataset
from .errors import AdjointError, DataError, SpecError, TestIndexError
from .models import FlatModel, build_model
from .optim import Optimizer, State, learning_rate_schedule, make_optimizer
from .spec import TrainingSpec

logger = logging.getLogger(__name__)

MEASUREMENTS = ("loss", "margin", "logit")
ORDER_SEED_OFFSET = 7919  # keeps the batch-order stream apart from the initialisation's


class Trainer:
    """The pieces of a training run that training and replay share.

    Holds the model, the dataset tensors, the optimizer, the learning-rate schedule
    and the data weights. ``advance(state, t)`` performs step t.
    """

    def __init__(self, spec: TrainingSpec, data_weights: Optional[torch.Tensor] = None,
                 dataset: Optional[Dataset] = None, device: str | torch.device = "cpu") -> None:
        self.spec = spec
        self.dataset = dataset if dataset is not None else load_dataset(
            spec.dataset, spec.n_train, spec.n_test, spec.sequence_length
        )
        check_task(spec, self.dataset.task)
        self.dtype = spec.torch_dtype
        self.device = torch.device(device)
        self.x_train, self.y_train, self.x_test, self.y_test = (
            tensor.to(self.device) for tensor in self.dataset.tensors(self.dtype)
        )
        self.model: FlatModel = build_model(
            spec.architecture,
            self.dataset.input_shape,
            self.dataset.num_classes,
            list(spec.hidden),
            spec.activation,
            spec.output_scale,
            heads=spec.n_heads,
        )
        self.optimizer: Optimizer = make_optimizer(spec)
        self.lr = learning_rate_schedule(spec)
        self.weights = check_data_weights(data_weights, self.dataset.n_train,
                                          self.dtype).to(self.device)
        self.order = batch_order(spec)
        self._grad_and_loss = grad_and_value(self.batch_loss)

    # ---------------------------------------------------------------- losses
    def per_example_losses(self, theta: torch.Tensor, x: torch.Tensor,
                           y: torch.Tensor) -> torch.Tensor:
        """Return the loss of each example, shape (B,); the mean token loss for text."""
        logits = self.model(theta, x)
        if logits.dim() == 3:  # (B, L, V) next-token logits
            return F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(dim=1)
        return F.cross_entropy(logits, y, reduction="none")

    def batch_loss(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                   w: torch.Tensor) -> torch.Tensor:
        """Return the step loss ``sum(w * loss) / b`` with ``b`` the fixed batch size."""
        return (w * self.per_example_losses(theta, x, y)).sum() / self.spec.batch_size

    def batch(self, t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (indices, x, y, w) of the batch used at step t."""
        idx = self.order.batch_indices(t)
        return idx, self.x_train[idx], self.y_train[idx], self.weights[idx]

    def gradient(self, theta: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (g_t, L_t) at ``theta``: the step loss gradient, shape (P,), and its value."""
        _, x, y, w = self.batch(t)
        return self._grad_and_loss(theta, x, y, w)

    # ----------------------------------------------------------------- steps
    def initial_state(self) -> State:
        theta = self.model.initial_parameters(self.spec.seed, self.dtype)
        return self.optimizer.init_state(theta.to(self.device))

    def advance(self, state: State, t: int) -> State:
        g, _ = self.gradient(state[0], t)
        return self.optimizer.step(state, g, t, self.lr(t))

    def advance_with_loss(self, state: State, t: int) -> tuple[State, float]:
        g, loss = self.gradient(state[0], t)
        return self.optimizer.step(state, g, t, self.lr(t)), float(loss)

    # ----------------------------------------------------------- measurement
    def measurement_fn(self, measurement: str):
        """Return ``phi(theta, x, y)`` for one test sample (x without batch dim)."""
        check_measurement(measurement)

        def phi(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            logits = self.model(theta, x.unsqueeze(0))[0]
            return measurement_from_logits(logits, y, measurement)

        return phi


def measurement_from_logits(logits: torch.Tensor, y: torch.Tensor,
                            measurement: str) -> torch.Tensor:
    """Scalar measurement of one sample from its (scaled) logits.

    ``logits`` is (C,) with a scalar label ``y``, or (L, V) with next tokens ``y`` (L,),
    in which case the per-token measurements are averaged. Written without
    indexing by ``y`` so that it works under ``vmap``.
    """
    mask = torch.arange(logits.shape[-1], device=logits.device) == y.unsqueeze(-1)
    correct = (logits * mask).sum(dim=-1)
    if measurement == "loss":
        values = torch.logsumexp(logits, dim=-1) - correct
    elif measurement == "logit":
        values = correct
    else:
        # margin: correct logit minus log-sum-exp of the other logits
        others = logits.masked_fill(mask, float("-inf"))
        values = correct - torch.logsumexp(others, dim=-1)
    return values.mean()


def check_task(spec: TrainingSpec, task: str) -> None:
    """Reject a model that does not fit the dataset's task."""
    if (task == "language_model") != (spec.architecture == "gpt"):
        raise SpecError(f"architecture={spec.architecture!r} does not fit dataset "
                        f"{spec.dataset!r} ({task}); use 'gpt' for text and 'mlp' or 'cnn' "
                        "for images")


def check_measurement(measurement: str) -> None:
    if measurement not in MEASUREMENTS:
        raise SpecError(
            f"measurement={measurement!r} is not supported; expected one of {list(MEASUREMENTS)}"
        )


def check_data_weights(weights: Optional[torch.Tensor | Sequence[float]], n_train: int,
                       dtype: torch.dtype) -> torch.Tensor:
    """Return the data weights as a (n_train,) tensor, ones when ``weights`` is None.

    Raises DataError for a wrong shape, NaN, infinite or negative weights.
    """
    if weights is None:
        return torch.ones(n_train, dtype=dtype)
    w = torch.as_tensor(weights, dtype=dtype).detach().clone()
    if w.shape != (n_train,):
        raise DataError(f"data_weights has shape {tuple(w.shape)}, expected ({n_train},)")
    if not torch.isfinite(w).all():
        bad = torch.nonzero(~torch.isfinite(w))[0].item()
        raise DataError(f"data_weights[{bad}]={w[bad].item()} is not finite")
    if (w < 0).any():
        bad = torch.nonzero(w < 0)[0].item()
        raise DataError(f"data_weights[{bad}]={w[bad].item()} is negative; weights must be >= 0")
    return w


def check_test_indices(test_indices: Iterable[int], n_test: int) -> list[int]:
    """Return the indices as a list, raising TestIndexError if out of range or duplicated."""
    try:
        # operator.index accepts ints and integer tensors but rejects 1.5 and "3".
        indices = [operator.index(i) for i in test_indices]
    except TypeError:
        raise TestIndexError(f"test indices must be integers, got {test_indices!r}") from None
    if not indices:
        raise TestIndexError("test_indices is empty; pass at least one test index")
    bad = [i for i in indices if not 0 <= i < n_test]
    if bad:
        raise TestIndexError(
            f"test indices {bad[:10]} are out of range; the test split has {n_test} samples "
            f"(valid indices 0..{n_test - 1})"
        )
    if len(set(indices)) != len(indices):
        seen, dupes = set(), []
        for i in indices:
            if i in seen:
                dupes.append(i)
            seen.add(i)
        raise TestIndexError(f"test indices {sorted(set(dupes))[:10]} are duplicated")
    return indices


@dataclass
class BatchOrder:
    """The fixed batch order: one permutation of the training set per epoch."""

    permutations: torch.Tensor  # (epochs, n_train), int64
    batch_size: int

    @property
    def steps_per_epoch(self) -> int:
        n = self.permutations.shape[1]
        return -(-n // self.batch_size)

    def batch_indices(self, t: int) -> torch.Tensor:
        epoch, j = divmod(t, self.steps_per_epoch)
        return self.permutations[epoch, j * self.batch_size : (j + 1) * self.batch_size]


def batch_order(spec: TrainingSpec) -> BatchOrder:
    """Draw the batch order from the seed alone, never from the data weights."""
    generator = torch.Generator().manual_seed(spec.seed + ORDER_SEED_OFFSET)
    perms = torch.stack([
        torch.randperm(spec.n_train, generator=generator) for _ in range(spec.epochs)
    ])
    return BatchOrder(perms, spec.batch_size)


@dataclass
class TrainingRun:
    """The result of ``train``: final state, batch order, checkpoints and metrics.

    ``checkpoints`` maps a step t to the optimizer state before step t, always
    including t = 0 and t = num_steps (the final state).
    """

    spec: TrainingSpec
    data_weights: torch.Tensor
    checkpoints: dict[int, State]
    metrics: dict[str, float]
    dataset_hash: str
    engine_version: str = __version__
    _trainer: Optional[Trainer] = field(default=None, repr=False)

    @property
    def trainer(self) -> Trainer:
        if self._trainer is None:
            self._trainer = Trainer(self.spec, self.data_weights, device=self.device)
        return self._trainer

    @property
    def device(self) -> torch.device:
        return self.checkpoints[0][0].device

    def to(self, device: str | torch.device) -> "TrainingRun":
        """Return a copy whose checkpoints, weights and data live on ``device``."""
        return TrainingRun(
            spec=self.spec,
            data_weights=self.data_weights.to(device),
            checkpoints={t: tuple(x.to(device) for x in state)
                         for t, state in self.checkpoints.items()},
            metrics=dict(self.metrics),
            dataset_hash=self.dataset_hash,
            engine_version=self.engine_version,
        )

    @property
    def fingerprint(self) -> str:
        """Hash of the canonical spec, the dataset's content and non-default data weights."""
        return fingerprint_with_weights(self.spec.fingerprint(self.dataset_hash),
                                        self.data_weights)

    @property
    def num_steps(self) -> int:
        return self.spec.num_steps

    @property
    def n_train(self) -> int:
        return self.spec.n_train

    @property
    def n_test(self) -> int:
        return self.spec.n_test

    @property
    def final_state(self) -> State:
        return self.checkpoints[self.num_steps]

    @property
    def parameters(self) -> torch.Tensor:
        """Final flat parameter vector, shape (P,)."""
        return self.final_state[0]

    def measure(self, test_indices: Iterable[int], measurement: str = "loss") -> torch.Tensor:
        """Return the measurement of each test sample at the final parameters, shape (k,)."""
        check_measurement(measurement)
        indices = check_test_indices(test_indices, self.n_test)
        trainer = self.trainer
        idx = torch.tensor(indices)
        with torch.no_grad():
            logits = trainer.model(self.parameters, trainer.x_test[idx])
            return torch.stack([
                measurement_from_logits(logits[q], trainer.y_test[i], measurement)
                for q, i in enumerate(idx)
            ])

    # ----------------------------------------------------------- persistence
    def save(self, folder: str | Path) -> Path:
        """Write ``spec.json``, ``run.json`` and ``tensors.pt`` (tensors only) to ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"data_weights": self.data_weights.cpu()}
        for t, state in self.checkpoints.items():
            for j, tensor in enumerate(state):
                tensors[f"checkpoint/{t}/{j}"] = tensor.cpu()
        tmp = folder / "tensors.pt.tmp"
        torch.save(tensors, tmp)
        tmp.replace(folder / "tensors.pt")
        (folder / "spec.json").write_text(json.dumps(self.spec.to_dict(), indent=2, sort_keys=True))
        meta = {
            "fingerprint": self.fingerprint,
            "dataset_hash": self.dataset_hash,
            "engine_version": self.engine_version,
            "metrics": self.metrics,
            "num_steps": self.num_steps,
            "checkpoint_steps": sorted(self.checkpoints),
        }
        (folder / "run.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        return folder

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> "TrainingRun":
        """Load a run saved by ``save`` onto ``device``.

        Tensors are read with ``weights_only=True``, so nothing in the folder is unpickled
        as code. Raises FileNotFoundError for a missing file and DataError when the
        stored fingerprint does not match the loaded spec and weights.
        """
        folder = Path(folder)
        for name in ("spec.json", "run.json", "tensors.pt"):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"training run folder {folder} has no {name}")
        spec = TrainingSpec.from_dict(json.loads((folder / "spec.json").read_text()))
        meta = json.loads((folder / "run.json").read_text())
        tensors = torch.load(folder / "tensors.pt", weights_only=True, map_location=device)
        checkpoints: dict[int, list[tuple[int, torch.Tensor]]] = {}
        for key, tensor in tensors.items():
            if key.startswith("checkpoint/"):
                _, t, j = key.split("/")
                checkpoints.setdefault(int(t), []).append((int(j), tensor))
        states = {t: tuple(x for _, x in sorted(parts)) for t, parts in checkpoints.items()}
        run = cls(
            spec=spec,
            data_weights=tensors["data_weights"],
            checkpoints=states,
            metrics=meta["metrics"],
            dataset_hash=meta["dataset_hash"],
            engine_version=meta["engine_version"],
        )
        if run.fingerprint != meta["fingerprint"]:
            raise DataError(
                f"run folder {folder}: stored fingerprint {meta['fingerprint'][:12]} does not "
                f"match the loaded spec and weights ({run.fingerprint[:12]}); the folder is corrupt"
            )
        return run


def fingerprint_with_weights(base: str, data_weights: torch.Tensor) -> str:
    """Extend a spec fingerprint with the data weights unless they are all ones."""
    if torch.all(data_weights == 1):
        return base
    digest = hashlib.sha256(base.encode())
    digest.update(data_weights.detach().to("cpu", torch.float64).numpy().tobytes())
    return digest.hexdigest()


def run_fingerprint(spec: TrainingSpec, data_weights: Optional[torch.Tensor] = None) -> str:
    """Return the fingerprint that ``train(spec, data_weights)`` will give, without training.

    Loads the dataset to hash its content (the arrays are cached after the first call).
    """
    dataset = load_dataset(spec.dataset, spec.n_train, spec.n_test, spec.sequence_length)
    weights = check_data_weights(data_weights, dataset.n_train, spec.torch_dtype)
    return fingerprint_with_weights(spec.fingerprint(dataset.content_hash()), weights)


def checkpoint_steps(spec: TrainingSpec) -> set[int]:
    steps = {0, spec.num_steps}
    if spec.checkpoint_every:
        steps.update(range(0, spec.num_steps, spec.checkpoint_every))
    return steps


def train(spec: TrainingSpec, data_weights: Optional[torch.Tensor] = None,
          progress: bool = False, keep_checkpoints: bool = True,
          device: str | torch.device = "cpu") -> TrainingRun:
    """Train ``spec`` deterministically with per-example ``data_weights`` (default all ones).

    Returns a TrainingRun whose checkpoints hold the states at step 0, at every
    ``spec.checkpoint_every`` steps and at the end. Raises DataError for invalid
    weights, SpecError for invalid specs, and DataError naming the step when the
    training loss becomes NaN or infinite.
    """
    if not isinstance(spec, TrainingSpec):
        raise SpecError(f"train expects a TrainingSpec, got {type(spec).__name__}")
    started = time.perf_counter()
    trainer = Trainer(spec, data_weights, device=device)
    saved_steps = checkpoint_steps(spec) if keep_checkpoints else {0, spec.num_steps}
    state = trainer.initial_state()
    checkpoints: dict[int, State] = {0: state}
    losses = []
    steps = range(spec.num_steps)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="train", unit="step", leave=False)
    for t in steps:
        state, loss = trainer.advance_with_loss(state, t)
        if not torch.isfinite(torch.tensor(loss)):
            raise DataError(
                f"training loss became {loss} at step {t}; lower the learning rate "
                f"(lr={spec.lr}) or the output scale"
            )
        losses.append(loss)
        if t + 1 == spec.num_steps and not torch.isfinite(state[0]).all():
            raise DataError(
                f"parameters became NaN or infinite at step {t}; lower the learning rate "
                f"(lr={spec.lr}) or the output scale"
            )
        if t + 1 in saved_steps:
            checkpoints[t + 1] = tuple(x.detach() for x in state)
    metrics = evaluate_metrics(trainer, checkpoints[spec.num_steps][0])
    metrics["final_train_loss"] = float(sum(losses[-trainer.order.steps_per_epoch:]) /
                                        min(len(losses), trainer.order.steps_per_epoch))
    metrics["train_seconds"] = time.perf_counter() - started
    logger.info("trained %s in %.2f s: %s", spec.dataset, metrics["train_seconds"], metrics)
    return TrainingRun(
        spec=spec,
        data_weights=trainer.weights,
        checkpoints=checkpoints,
        metrics=metrics,
        dataset_hash=trainer.dataset.content_hash(),
        _trainer=trainer,
    )


def evaluate_metrics(trainer: Trainer, theta: torch.Tensor) -> dict[str, float]:
    """Return test accuracy and mean test loss at ``theta``."""
    with torch.no_grad():
        logits = trainer.model(theta, trainer.x_test)
        labels = trainer.y_test
        if logits.dim() == 3:  # language model: score every next-token prediction
            logits, labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
        loss = F.cross_entropy(logits, labels).item()
        accuracy = (logits.argmax(1) == labels).double().mean().item()
    return {"test_accuracy": accuracy, "test_loss": loss}
