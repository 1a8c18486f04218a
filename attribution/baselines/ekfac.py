"""EK-FAC influence through the ``kronfluence`` package (version 1.0.1), in MAGIC's convention.

kronfluence returns ``grad f_q^T (G + lambda I)^{-1} grad L_i`` with G the
eigenvalue-corrected Kronecker-factored Gauss-Newton approximation of the
Hessian and ``L_i`` the training loss of example i. Up-weighting example i by
epsilon changes f_q by about ``-epsilon`` times that score, so the MAGIC-convention
score (derivative with respect to the data weight) is its negative, divided by
n_train because the training objective is a mean over examples.
Damping uses kronfluence's heuristic: 0.1 times the mean eigenvalue.

For a language model the training loss passed to kronfluence is the sum of
the token cross-entropies of a chunk, as kronfluence expects, and its Hessian
approximation is a mean over chunks of that summed loss's (kronfluence 1.0.1
divides the eigenvalue-correction statistics by the number of examples). The run's
objective is the mean over chunks of the mean token loss, which is that sum
divided by the sequence length L on both sides: the Hessian and the gradient
of example i are each 1/L of kronfluence's, so the factors of L cancel and the
conversion above stays ``-influence / n_train``. The measurement is the run's
own (the mean over tokens for text).
"""

from __future__ import annotations

import logging
import tempfile
import warnings

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from ..training import TrainingRun, measurement_from_logits
from .common import module_at, preserved_root_logging


def _make_task(measurement: str):
    from kronfluence.task import Task

    class RunTask(Task):
        """Summed cross-entropy for the factors and the run's measurement per query.

        Logits are (B, C) for a classifier and (B, L, V) for a language model,
        whose loss is summed over every token of every chunk.
        """

        def compute_train_loss(self, batch, model, sample=False):
            x, y = batch
            logits = model(x)
            logits = logits.reshape(-1, logits.shape[-1])  # (B * L, V) for text
            y = y.reshape(-1)
            if sample:
                with torch.no_grad():
                    y = torch.multinomial(F.softmax(logits.detach(), dim=-1), 1).flatten()
            return F.cross_entropy(logits, y, reduction="sum")

        def compute_measurement(self, batch, model):
            x, y = batch
            logits = model(x)
            return torch.stack([measurement_from_logits(logits[j], y[j], measurement)
                                for j in range(logits.shape[0])]).sum()

    return RunTask()


def ekfac_scores(run: TrainingRun, test_indices: list[int], measurement: str = "loss",
                 batch_size: int = 256) -> torch.Tensor:
    """Return EK-FAC influence scores in MAGIC's convention, shape (len(test_indices), n_train)."""
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments

    trainer = run.trainer
    task = _make_task(measurement)
    model = prepare_model(module_at(run, run.parameters), task)
    idx = torch.tensor(test_indices, device=trainer.device)
    train_set = TensorDataset(trainer.x_train, trainer.y_train)
    query_set = TensorDataset(trainer.x_test[idx], trainer.y_test[idx])
    dtype = trainer.dtype
    factor_args = FactorArguments(strategy="ekfac", activation_covariance_dtype=dtype,
                                  gradient_covariance_dtype=dtype,
                                  per_sample_gradient_dtype=dtype, lambda_dtype=dtype)
    score_args = ScoreArguments(damping_factor=None, per_sample_gradient_dtype=dtype,
                                precondition_dtype=dtype, score_dtype=dtype)

    # kronfluence 1.0.1 builds a disabled torch.cuda GradScaler on CPU, which only warns.
    with tempfile.TemporaryDirectory(prefix="kronfluence-") as output_dir, \
            warnings.catch_warnings(), preserved_root_logging():
        warnings.filterwarnings("ignore", message=".*GradScaler.*")
        analyzer = Analyzer(analysis_name="run", model=model, task=task,
                            cpu=trainer.device.type == "cpu", disable_tqdm=True,
                            output_dir=output_dir, log_level=logging.WARNING)
        analyzer.fit_all_factors(factors_name="ekfac", dataset=train_set,
                                 per_device_batch_size=batch_size, factor_args=factor_args)
        analyzer.compute_pairwise_scores(
            scores_name="pairwise", factors_name="ekfac", query_dataset=query_set,
            train_dataset=train_set, per_device_query_batch_size=len(test_indices),
            per_device_train_batch_size=batch_size, score_args=score_args)
        influence = analyzer.load_pairwise_scores("pairwise")["all_modules"]  # (k, n_train)
    return -influence.to(device=trainer.device, dtype=dtype) / run.n_train
