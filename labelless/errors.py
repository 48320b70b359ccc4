"""The exceptions the CLI turns into one line on stderr instead of a traceback: UserError (a mistake
the user can fix; exit 2), TrainingDiverged (exit 1) and TimeLimitReached (`--time-limit`; exit 75)."""
from __future__ import annotations

from pathlib import Path

EXIT_TIME_LIMIT = 75  # EX_TEMPFAIL: stopped at `--time-limit`, checkpointed; the same command continues


class UserError(Exception):
    """Bad input (unknown name, missing data, impossible option). The message is the whole story."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite. The last checkpoint written before it is left untouched."""

    def __init__(self, stage: str, epoch: int, step: int, step_in_epoch: int, value: float, checkpoint: Path):
        self.epoch, self.step, self.checkpoint = epoch, step, checkpoint
        kept = (f"the last good checkpoint {checkpoint} is kept" if checkpoint.exists()
                else "no checkpoint had been written yet")
        super().__init__(f"stage '{stage}': loss is {value} at epoch {epoch}, step {step} (step {step_in_epoch} of "
                         f"the epoch); {kept}. Lower train.lr, add warm-up or set train.grad_clip.")


class TimeLimitReached(Exception):
    """Training stopped at a `Deadline` with its finished epochs checkpointed: rerun with resume to continue."""

    def __init__(self, stage: str, epochs_done: int, epochs: int, checkpoint: Path):
        self.stage, self.epochs_done, self.epochs, self.checkpoint = stage, epochs_done, epochs, checkpoint
        super().__init__(f"time limit: stage '{stage}' " + (f"stopped after epoch {epochs_done} of {epochs}, "
                                                            f"checkpoint {checkpoint}" if epochs_done
                                                            else f"not started ({epochs} epochs to train)"))
