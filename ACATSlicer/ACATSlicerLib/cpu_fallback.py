"""Out of GPU memory -> offer to run the same explanation on the CPU, once.

The background process reports a failure as one line on stderr (`runner`); when that line says the
GPU ran out of memory (PyTorch's ``torch.OutOfMemoryError``: "CUDA out of memory. Tried to allocate
..."; the MPS and ROCm variants; cuBLAS/cuDNN allocation failures), the widget asks once whether to
retry on the CPU - slower, but a CT volume always fits in main memory - and re-runs with device "cpu"
(`request.ExplainRequest.onDevice`).
The decision lives here, so it is tested without the GUI; the widget only shows the question.
"""

from __future__ import annotations

import re

from .request import ExplainRequest
from .runner import FAILED

_OUT_OF_GPU_MEMORY = re.compile(
    r"OutOfMemoryError"  # torch.OutOfMemoryError / torch.cuda.OutOfMemoryError
    r"|\b(CUDA|MPS|HIP|XPU|GPU)\b[^\n]{0,80}?\bout of memory"  # "CUDA out of memory", "MPS backend out of memory"
    r"|CUBLAS_STATUS_ALLOC_FAILED|CUDNN_STATUS_ALLOC_FAILED|cudaErrorMemoryAllocation",
    re.IGNORECASE)


def isOutOfGpuMemory(errorMessage: str) -> bool:
    """True when a failed run's error line says the GPU ran out of memory (not main memory)."""
    return bool(errorMessage) and _OUT_OF_GPU_MEMORY.search(errorMessage) is not None


class CpuFallback:
    """Whether to offer "retry on CPU?" after a failure: only for an out-of-GPU-memory failure of a run
    that did not already use the CPU, and only once per Explain request (`reset` on each new request),
    so that a user who said no, or a CPU retry that fails too, is never asked again in a loop."""

    def __init__(self) -> None:
        self.offered = False

    def reset(self) -> None:
        """A new Explain request: the next out-of-memory failure may be offered a retry again."""
        self.offered = False

    def shouldOffer(self, outcome, request: ExplainRequest) -> bool:
        """``outcome``: a controller or runner outcome (``state``, ``errorMessage``); ``request``: the run's."""
        if self.offered or outcome is None or outcome.state != FAILED or request.options.device == "cpu":
            return False
        if not isOutOfGpuMemory(outcome.errorMessage):
            return False
        self.offered = True
        return True
