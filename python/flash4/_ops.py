"""Loads the flash4 PyTorch extension and registers what PyTorch needs around it.

The extension (libflash4_torch.so, built from python/csrc/flash4_torch.cpp)
defines the ops with TORCH_LIBRARY(flash4):

    torch.ops.flash4.fwd(q, k, v, softmax_scale=0., causal=False, window_left=-1,
                         window_right=-1, softcap=0., seqused_k=None,
                         deterministic=False, exp2_emulation=0) -> (out, lse)
    torch.ops.flash4.bwd(dout, q, k, v, out, lse, dq!, dk!, dv!, <same options but
                         exp2_emulation>) -> ()
    torch.ops.flash4.fwd_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                max_seqlen_k, <same options>) -> (out, lse)
    torch.ops.flash4.bwd_varlen(dout, q, k, v, out, lse, dq!, dk!, dv!, cu_seqlens_q,
                                cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                <same options>) -> ()

(softmax_scale 0 = 1/sqrt(headdim); window bounds -1 = unbounded; exp2_emulation
-1 off, 0 default, 1 on: FA4's software exp2 in the Hopper forward; dq, dk, dv
are written in place; inputs the kernels cannot read in place, see
flash4.interface, are copied to contiguous memory inside the ops.) This module adds, from Python:
  * fake (meta) kernels, so torch.compile and FakeTensorMode trace the ops;
  * the autograd formula of fwd and fwd_varlen, whose backward calls bwd /
    bwd_varlen. Where the library has no backward kernel (no Hopper GPU, head
    dim > 128), that call raises NotImplementedError with the library's message.

The library is found at $FLASH4_TORCH_LIBRARY when that is set, else next
to this file (where both `pip install` and a CMake build tree put it).
"""
import os

import torch

LIBRARY_NAME = "libflash4_torch.so"


def library_path():
    env = os.environ.get("FLASH4_TORCH_LIBRARY")
    if env:
        return env
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), LIBRARY_NAME)


def _ops_registered():
    try:
        torch.ops.flash4.fwd.default
    except (AttributeError, RuntimeError):
        return False
    return True


def _load():
    if _ops_registered():  # another copy of the package already loaded it
        return
    path = library_path()
    if not os.path.exists(path):
        raise ImportError(
            f"flash4: the PyTorch extension {path} does not exist. Install the package with "
            "`pip install --no-build-isolation .` from the flash4 checkout, or build it with "
            "`cmake -S . -B build-torch -DFLASH4_TORCH=ON && cmake --build build-torch` and put "
            "build-torch/python on PYTHONPATH (or point FLASH4_TORCH_LIBRARY at the .so).")
    try:
        torch.ops.load_library(path)
    except OSError as e:
        raise ImportError(f"flash4: cannot load the PyTorch extension {path}: {e}. It must be "
                          f"built against this torch ({torch.__version__}).") from e


_load()


# ---- fake kernels ------------------------------------------------------------------
# Shapes only (no data access): the real kernels and the library check the
# rest. Outputs are contiguous, as the CUDA kernels allocate them.

def _need_dims(op, name, t, n, dims):
    if t.dim() != n:
        raise ValueError(f"flash4::{op}: {name}: {t.dim()} dimensions, expected {n} {dims}")


@torch.library.register_fake("flash4::fwd")
def _fwd_fake(q, k, v, softmax_scale=0.0, causal=False, window_left=-1, window_right=-1,
              softcap=0.0, seqused_k=None, deterministic=False, exp2_emulation=0):
    _need_dims("fwd", "q", q, 4, "(batch, seqlen_q, heads, headdim)")
    _need_dims("fwd", "k", k, 4, "(batch, seqlen_k, heads_kv, headdim)")
    b, sq, h, _ = q.shape
    out = q.new_empty(q.shape)
    lse = q.new_empty((b, h, sq), dtype=torch.float32)
    return out, lse


@torch.library.register_fake("flash4::fwd_varlen")
def _fwd_varlen_fake(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                     softmax_scale=0.0, causal=False, window_left=-1, window_right=-1,
                     softcap=0.0, seqused_k=None, deterministic=False, exp2_emulation=0):
    _need_dims("fwd_varlen", "q", q, 3, "(total_q, heads, headdim)")
    total_q, h, _ = q.shape
    out = q.new_empty(q.shape)
    lse = q.new_empty((h, total_q), dtype=torch.float32)
    return out, lse


@torch.library.register_fake("flash4::bwd")
def _bwd_fake(dout, q, k, v, out, lse, dq, dk, dv, softmax_scale=0.0, causal=False,
              window_left=-1, window_right=-1, softcap=0.0, seqused_k=None,
              deterministic=False):
    return None


@torch.library.register_fake("flash4::bwd_varlen")
def _bwd_varlen_fake(dout, q, k, v, out, lse, dq, dk, dv, cu_seqlens_q, cu_seqlens_k,
                     max_seqlen_q, max_seqlen_k, softmax_scale=0.0, causal=False,
                     window_left=-1, window_right=-1, softcap=0.0, seqused_k=None,
                     deterministic=False):
    return None


# ---- autograd ------------------------------------------------------------------------

def _grad_buffers(q, k, v):
    return (torch.empty(q.shape, dtype=q.dtype, device=q.device),
            torch.empty(k.shape, dtype=k.dtype, device=k.device),
            torch.empty(v.shape, dtype=v.dtype, device=v.device))


def _fwd_setup_context(ctx, inputs, output):
    q, k, v, softmax_scale, causal, wl, wr, softcap, seqused_k, deterministic, _emu = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, seqused_k)
    ctx.options = (softmax_scale, causal, wl, wr, softcap)
    ctx.deterministic = deterministic


def _fwd_backward(ctx, dout, dlse):
    # dlse is ignored: the LSE output carries no gradient (as in FlashAttention).
    q, k, v, out, lse, seqused_k = ctx.saved_tensors
    dq, dk, dv = _grad_buffers(q, k, v)
    torch.ops.flash4.bwd(dout, q, k, v, out, lse, dq, dk, dv,
                         *ctx.options, seqused_k, ctx.deterministic)
    return dq, dk, dv, None, None, None, None, None, None, None, None


def _fwd_varlen_setup_context(ctx, inputs, output):
    (q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale, causal, wl, wr, softcap, seqused_k,
     deterministic, _emu) = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k, seqused_k)
    ctx.max_seqlens = (max_q, max_k)
    ctx.options = (softmax_scale, causal, wl, wr, softcap)
    ctx.deterministic = deterministic


def _fwd_varlen_backward(ctx, dout, dlse):
    q, k, v, out, lse, cu_q, cu_k, seqused_k = ctx.saved_tensors
    dq, dk, dv = _grad_buffers(q, k, v)
    torch.ops.flash4.bwd_varlen(dout, q, k, v, out, lse, dq, dk, dv, cu_q,
                                cu_k, *ctx.max_seqlens, *ctx.options, seqused_k,
                                ctx.deterministic)
    return (dq, dk, dv) + (None,) * 12


torch.library.register_autograd("flash4::fwd", _fwd_backward, setup_context=_fwd_setup_context)
torch.library.register_autograd("flash4::fwd_varlen", _fwd_varlen_backward,
                                setup_context=_fwd_varlen_setup_context)


# ---- backward probe --------------------------------------------------------------------

_BACKWARD_PROBE = {}


def backward_available(device=None):
    """(available, reason): whether the library's GPU backward runs on `device`
    (default: the current CUDA device). Found by running the bwd op once on a tiny
    problem; the answer is cached per device."""
    if not torch.cuda.is_available():
        return False, "no CUDA device visible to torch"
    if device is None:
        index = torch.cuda.current_device()
    else:
        dev = torch.device(device)
        if dev.type != "cuda":
            return False, f"{dev} is not a CUDA device"
        index = dev.index if dev.index is not None else torch.cuda.current_device()
    dev = torch.device("cuda", index)
    if dev.index in _BACKWARD_PROBE:
        return _BACKWARD_PROBE[dev.index]
    z = lambda *shape: torch.zeros(*shape, dtype=torch.bfloat16, device=dev)  # noqa: E731
    q, k, v, out, dout = (z(1, 16, 1, 64) for _ in range(5))
    lse = torch.zeros(1, 1, 16, dtype=torch.float32, device=dev)
    dq, dk, dv = _grad_buffers(q, k, v)
    try:
        torch.ops.flash4.bwd(dout, q, k, v, out, lse, dq, dk, dv)
        torch.cuda.synchronize(dev)
        answer = (True, "")
    except NotImplementedError as e:
        answer = (False, str(e).splitlines()[0])
    _BACKWARD_PROBE[dev.index] = answer
    return answer
