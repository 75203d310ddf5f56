"""Training: the one loop every stage uses, and what it is made of.

- plan: derived values (seeds, precision and strategy, steps per execution, compile options)
- callbacks: history.csv, progress, per-variable learning rates, unfreezing, best epoch
- checkpoint: step checkpoints, exact resume, stopping on a signal with a checkpoint
- loop: `fit`; multi_worker: its twin for MultiWorkerMirroredStrategy clusters
"""

from pretrainer.train.callbacks import (
    GradualUnfreeze,
    HistoryCSV,
    KeepBest,
    ScaledUpdates,
    backbone_blocks,
)
from pretrainer.train.checkpoint import Preempted, repair_checkpoint_state
from pretrainer.train.loop import fit
from pretrainer.train.plan import (
    TrainingError,
    TrainingPlan,
    compile_kwargs,
    epoch_steps,
    execution_size,
    optimizer_step,
    setup,
    steps_per_execution,
)

__all__ = ["GradualUnfreeze", "HistoryCSV", "KeepBest", "Preempted", "ScaledUpdates",
           "TrainingError", "TrainingPlan", "backbone_blocks", "compile_kwargs", "epoch_steps",
           "execution_size", "fit", "optimizer_step", "repair_checkpoint_state", "setup",
           "steps_per_execution"]
