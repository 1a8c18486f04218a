"""TRAK through the ``traker`` package (MadryLab, version 0.3.2), converted to MAGIC's convention.

traker scores the margin ``f = log(p / (1 - p))`` of the correct class: its score
estimates how much including training example i raises the test margin. The
derivative of the cross-entropy loss with respect to that margin is
``-(1 - p_correct)``, so for the loss measurement the MAGIC-convention score is
``-(1 - p_correct(test)) * trak``; for the margin measurement it is ``trak`` itself.
The factor only fixes sign and scale per test sample, which Spearman-based LDS
ignores apart from the sign.

For a language model the model output of a chunk is its mean token margin
(the engine's 'margin' measurement for text), and traker's out-to-loss term
is the mean over tokens of ``1 - p`` of the next token. For the loss
measurement the factor is ``-mean_j(1 - p_j)`` of the test chunk, an
approximation of ``d(mean token loss) / d(mean token margin)`` that is exact
for one token and has the right sign.

Features are averaged over several checkpoints of the one run (an ensemble
along the trajectory), and the random projection has ``proj_dim`` dimensions,
which must stay well below n_train: the kernel ``Phi^T Phi`` is inverted without
damping and is singular once ``proj_dim`` approaches the number of examples.
"""

from __future__ import annotations

import logging
import tempfile

import numpy as np
import torch

from ..errors import SpecError
from ..training import TrainingRun, measurement_from_logits
from .common import (correct_class_probability, evenly_spaced_steps, module_at,
                     preserved_root_logging, states_at)

logger = logging.getLogger(__name__)

MEASUREMENTS = ("loss", "margin")


def _language_model_output():
    from trak.modelout_functions import AbstractModelOutput

    class LanguageModelOutput(AbstractModelOutput):
        """Mean token margin of one chunk, and the mean of ``1 - p`` over its tokens as Q."""

        def __init__(self) -> None:  # traker 0.3.2 declares __init__ abstract
            super().__init__()

        @staticmethod
        def get_output(model, weights, buffers, tokens, targets):
            logits = torch.func.functional_call(model, (weights, buffers), tokens.unsqueeze(0))
            return measurement_from_logits(logits[0], targets, "margin")

        def get_out_to_loss_grad(self, model, weights, buffers, batch):
            tokens, targets = batch
            logits = torch.func.functional_call(model, (weights, buffers), tokens)
            p = torch.softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            return (1 - p).mean(dim=1, keepdim=True).detach()  # (B, 1)

    return LanguageModelOutput()


def default_proj_dim(n_train: int) -> int:
    """Return n_train / 16, clipped to 8..512.

    In benchmarks/evaluation_report.py (20 test samples, 50 subsets, 1% drop) the
    best of 32 to 512 was 32 on digits-mlp (1,000 examples) and 256 on mnist-mlp
    (4,000 examples). The dimensions nearest n_train / 16 (64 and 256) were 0.09 below
    the best and the best.
    """
    return max(8, min(512, n_train // 16))


def trak_scores(run: TrainingRun, test_indices: list[int], measurement: str = "loss",
                proj_dim: int | None = None, num_checkpoints: int = 5,
                batch_size: int = 200) -> torch.Tensor:
    """Return TRAK scores in MAGIC's convention, shape (len(test_indices), n_train).

    Raises SpecError for a measurement other than 'loss' or 'margin' or a
    projection dimension that is not below n_train / 2.
    """
    from trak import TRAKer

    if measurement not in MEASUREMENTS:
        raise SpecError(f"TRAK scores the margin, so measurement={measurement!r} is not "
                        f"supported; use one of {list(MEASUREMENTS)}")
    proj_dim = default_proj_dim(run.n_train) if proj_dim is None else int(proj_dim)
    if not 1 <= proj_dim <= run.n_train // 2:
        raise SpecError(f"proj_dim={proj_dim} must lie between 1 and n_train / 2 = "
                        f"{run.n_train // 2}; TRAK's kernel is singular beyond that")

    trainer = run.trainer
    device = str(trainer.device)
    steps = evenly_spaced_steps(run.num_steps, num_checkpoints, include_final=True)
    states = [(t, module_at(run, state[0], torch.float32).state_dict())
              for t, state in states_at(run, steps)]
    model = module_at(run, run.parameters, torch.float32)
    idx = torch.tensor(test_indices, device=trainer.device)
    x_train, y_train = trainer.x_train, trainer.y_train
    x_test, y_test = trainer.x_test[idx], trainer.y_test[idx]
    if x_train.is_floating_point():  # images; token ids stay integers
        x_train, x_test = x_train.float(), x_test.float()
    language_model = trainer.dataset.task == "language_model"
    task = _language_model_output() if language_model else "image_classification"

    with tempfile.TemporaryDirectory(prefix="trak-") as save_dir, preserved_root_logging():
        traker = TRAKer(model=model, task=task, train_set_size=run.n_train,
                        save_dir=save_dir, device=device,
                        proj_dim=proj_dim, use_half_precision=False,
                        logging_level=logging.WARNING)
        for model_id, (_, state_dict) in enumerate(states):
            traker.load_checkpoint(state_dict, model_id=model_id)
            for start in range(0, run.n_train, batch_size):
                batch = (x_train[start : start + batch_size], y_train[start : start + batch_size])
                traker.featurize(batch=batch, num_samples=batch[0].shape[0])
        traker.finalize_features()
        for model_id, (_, state_dict) in enumerate(states):
            traker.start_scoring_checkpoint("test", state_dict, model_id=model_id,
                                            num_targets=len(test_indices))
            traker.score(batch=(x_test, y_test), num_samples=len(test_indices))
        raw = np.array(traker.finalize_scores("test"), dtype=np.float64)  # (n_train, k)

    margin_scores = torch.as_tensor(raw.T, dtype=trainer.dtype, device=trainer.device)
    if measurement == "margin":
        return margin_scores
    p_correct = correct_class_probability(run, run.parameters, test_indices)
    loss_per_margin = (1 - p_correct).reshape(len(test_indices), -1).mean(dim=1)
    return -loss_per_margin[:, None] * margin_scores
