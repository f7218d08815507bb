"""flash4: exact attention (FlashAttention-4 style) for PyTorch on NVIDIA GPUs.

    import torch, flash4
    q, k, v = (torch.randn(2, 1024, 16, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    out = flash4.flash_attn_func(q, k, v, causal=True)           # (2, 1024, 16, 128)
    out, lse = flash4.flash_attn_func(q, k, v, return_attn_probs=True)

flash_attn_func and flash_attn_varlen_func take FlashAttention's arguments
(see flash4.interface for the differences). The ops behind them are
torch.ops.flash4.{fwd, bwd, fwd_varlen, bwd_varlen}: usable in torch.compile
(fake kernels) and CUDA graphs. The backward runs on Hopper (sm_90) GPUs;
elsewhere backward() raises NotImplementedError with the library's reason.
backward_available() says whether it runs, and forward_path() which kernels
the forward takes.
"""
from ._ops import backward_available, library_path
from .interface import flash_attn_func, flash_attn_varlen_func, forward_path

__version__ = "0.1.0"  # the CMake project's VERSION (a test checks that they agree)

__all__ = ["flash_attn_func", "flash_attn_varlen_func", "forward_path", "backward_available",
           "library_path", "__version__"]
