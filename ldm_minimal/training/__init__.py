"""Training every model of the course (``python -m ldm_minimal train ae|ldm``), in the order a run happens:

- ``config``          TrainConfig, the cpu/gpu presets (``train_config``), what a resumed run may change
                      (``resume_config``); AETrainConfig and the first stage's loss settings
- ``run``             the run folder: its files, atomic checkpoints, the training state a resume reads back
- ``data``            the batch of every step as a pure function of (seed, step, rank); held-out preview batches
- ``distributed``     DDP under torchrun: process group, gradient averaging, finiteness across ranks
- ``tasks``           AutoencoderTask (the first stage, a two-player game) and LDMTask (L_LDM on a frozen first
                      stage): model, optimizers, one step, preview grid, export
- ``loop``            the one generic Trainer: AdamW, warm-up, clipping, EMA, logging, checkpoints, exact resume
- ``autoencoder_loop`` the issue-2 experiments' in-memory first-stage loop (same step) and held-out evaluation
"""

from ldm_minimal.training.autoencoder_loop import evaluate_autoencoder, make_batches, train_autoencoder
from ldm_minimal.training.config import (
    RESUMABLE_CHANGES,
    TASKS,
    TRAIN_PRESETS,
    AETrainConfig,
    TrainConfig,
    check_resumable,
    first_stage_loss_config,
    resume_config,
    train_config,
)
from ldm_minimal.training.data import StepBatches, fixed_batch, make_dataset, resolve_world
from ldm_minimal.training.loop import Trainer, TrainingDiverged, train
from ldm_minimal.training.run import RUN_FILES, RunFolderError, find_checkpoints
from ldm_minimal.training.tasks import TASK_TYPES, AutoencoderTask, LDMTask, reconstruct

__all__ = [
    "AETrainConfig", "AutoencoderTask", "LDMTask", "RESUMABLE_CHANGES", "RUN_FILES", "RunFolderError", "StepBatches",
    "TASKS", "TASK_TYPES", "TRAIN_PRESETS", "TrainConfig", "Trainer", "TrainingDiverged", "check_resumable",
    "evaluate_autoencoder", "find_checkpoints", "first_stage_loss_config", "fixed_batch", "make_batches",
    "make_dataset", "reconstruct", "resolve_world", "resume_config", "train", "train_autoencoder", "train_config",
]
