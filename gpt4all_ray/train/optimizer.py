"""The optimizer the loop hands DeepSpeed: torch's AdamW, with a step the loop can refuse.

DeepSpeed's ZeRO (stages 1-3), bf16 and fp16 optimizers check the gradients for inf/NaN before
they call this optimizer's step, and skip a step that is not finite. At ZeRO-0 in fp32 DeepSpeed
keeps this optimizer unwrapped and applies whatever gradients it holds. The loop therefore decides
every step itself (loop.TrialRun.check_finite_step) and sets `skip_next` on a step it refuses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class SkippableAdamW(torch.optim.AdamW):
    """AdamW whose next step() does nothing when skip_next is set. It then sets `overflow`, the
    attribute DeepSpeed reads off an unwrapped optimizer after its step (engine._take_model_step):
    the step is counted in engine.skipped_steps, the LR schedule does not advance, and the
    gradients are zeroed, as for a step DeepSpeed's own optimizers skip."""

    def __init__(self, params: Any, lr: float) -> None:
        super().__init__(params, lr=lr)
        self.skip_next = False
        self.overflow = False

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        self.overflow, self.skip_next = self.skip_next, False
        if self.overflow:
            return None
        return super().step(closure)
