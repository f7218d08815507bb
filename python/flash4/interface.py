"""FlashAttention-compatible functions on top of the flash4 ops.

Layouts and semantics follow FlashAttention (flash_attn.flash_attn_func):
q (batch, seqlen_q, nheads, headdim), k/v (batch, seqlen_k, nheads_k, headdim)
with nheads % nheads_k == 0 (MQA/GQA: query heads [g*j, g*j+g) use kv head j);
causal masks are aligned to the bottom-right corner of the score matrix;
window_size=(left, right) lets query i see keys [i + Sk - Sq - left,
i + Sk - Sq + right], -1 meaning unbounded; a row that sees no key gives
out = 0 (and lse = -inf). fp16 and bf16, head dims 8..256 in steps of 8.

Differences from FlashAttention-2's functions:
  * return_attn_probs=True returns (out, lse), as FlashAttention-3 does;
    FlashAttention-2 returns a third value, S_dmask, only meaningful with
    dropout. lse is fp32, (batch, nheads, seqlen_q) here and (nheads, total_q)
    for varlen, natural log; -inf for rows that see no key (FA2 gives +inf).
  * No dropout_p, alibi_slopes or block_table arguments.
  * lse carries no gradient (the backward ignores it, as FlashAttention does).
  * The backward runs on Hopper (sm_90) GPUs, head dims 8..256. Elsewhere loss.backward() through these
    functions raises NotImplementedError with the library's message;
    flash4.backward_available() tells whether it runs.

Strides: the kernels read in place any layout whose last dimension is
contiguous and whose data pointer and other strides are multiples of 16 bytes
(e.g. q, k, v sliced from one packed qkv tensor, or a (B, H, S, D) tensor
transposed to (B, S, H, D)). Other inputs are copied to a contiguous tensor
first, inside the op (an extra read and write of that input). The outputs
are contiguous.
"""
import math
import numbers

import torch

from . import _ops  # noqa: F401  (loads the extension, registers fake/autograd)


def _scale_arg(softmax_scale):
    # The ops take 0 for "1/sqrt(headdim)" (the C ABI's default), so an explicit
    # 0 cannot be passed through.
    if softmax_scale is None:
        return 0.0
    scale = float(softmax_scale)
    if scale == 0.0:
        raise ValueError("flash4: softmax_scale=0 is not supported (use None for 1/sqrt(headdim))")
    if not math.isfinite(scale):
        raise ValueError(f"flash4: softmax_scale must be finite, got {softmax_scale}")
    return scale


def _window_args(window_size, causal):
    try:
        left, right = window_size
    except (TypeError, ValueError):
        raise ValueError(f"flash4: window_size must be a pair (left, right), got {window_size!r}")
    for name, w in (("left", left), ("right", right)):
        if isinstance(w, bool) or not isinstance(w, (numbers.Integral, torch.SymInt)):
            raise ValueError(f"flash4: window_size {name} must be an int, got {w!r}")
    # FlashAttention reads any negative bound as "unbounded"; causal is the
    # window with right = 0.
    left = -1 if left < 0 else int(left)
    right = -1 if right < 0 else int(right)
    if causal:
        right = 0
    return left, right


def _softcap_arg(softcap):
    cap = float(softcap)
    if not math.isfinite(cap) or cap < 0:
        raise ValueError(f"flash4: softcap must be finite and >= 0 (0 = off), got {softcap}")
    return cap


def _emulation_arg(exp2_emulation):
    if isinstance(exp2_emulation, bool) or exp2_emulation not in (-1, 0, 1):
        raise ValueError(f"flash4: exp2_emulation must be -1 (off), 0 (default) or 1 (on), "
                         f"got {exp2_emulation!r}")
    return int(exp2_emulation)


def _need_tensors(**tensors):
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"flash4: {name} must be a torch.Tensor, got {type(t).__name__}")


def flash_attn_func(q, k, v, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                    deterministic=False, return_attn_probs=False, *, exp2_emulation=0):
    """Exact attention softmax(softmax_scale * q k^T) v, FlashAttention-style.

    Arguments:
        q: (batch, seqlen_q, nheads, headdim), fp16 or bf16, on a CUDA device.
        k, v: (batch, seqlen_k, nheads_k, headdim), same dtype; nheads % nheads_k == 0.
        softmax_scale: default 1/sqrt(headdim).
        causal: bottom-right aligned causal mask.
        window_size: (left, right) local attention; -1 = unbounded.
        softcap: > 0 applies s = softcap * tanh(s / softcap) to the scaled scores.
        deterministic: for the backward (bitwise reproducible dq).
        return_attn_probs: also return the softmax LSE (see the module notes).
        exp2_emulation (flash4 only, keyword): FA4's software exp2 in the Hopper
            forward, -1 off, 0 default (off), 1 on for 1/4 of the exponentials.
    Returns:
        out (batch, seqlen_q, nheads, headdim), or (out, lse) with return_attn_probs,
        lse fp32 (batch, nheads, seqlen_q).
    """
    _need_tensors(q=q, k=k, v=v)
    scale = _scale_arg(softmax_scale)
    left, right = _window_args(window_size, causal)
    cap = _softcap_arg(softcap)
    out, lse = torch.ops.flash4.fwd(q, k, v, scale, bool(causal), left, right, cap, None,
                                    bool(deterministic), _emulation_arg(exp2_emulation))
    return (out, lse) if return_attn_probs else out


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                           softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                           deterministic=False, return_attn_probs=False, seqused_k=None, *,
                           exp2_emulation=0):
    """Variable-length attention over packed sequences, FlashAttention-style.

    Arguments:
        q: (total_q, nheads, headdim); k, v: (total_k, nheads_k, headdim).
        cu_seqlens_q, cu_seqlens_k: int32 (batch + 1,), prefix sums of the sequence
            lengths (sequence b is rows cu_seqlens[b]:cu_seqlens[b+1]), on q's device.
        max_seqlen_q, max_seqlen_k: ints, the longest sequence of each (no device read
            happens to find them).
        seqused_k: optional int32 (batch,): only the first seqused_k[b] keys of
            sequence b are used.
        Other arguments as flash_attn_func.
    Returns:
        out (total_q, nheads, headdim), or (out, lse) with return_attn_probs,
        lse fp32 (nheads, total_q).
    """
    _need_tensors(q=q, k=k, v=v, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k)
    if seqused_k is not None:
        _need_tensors(seqused_k=seqused_k)
    for name, n in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
        if isinstance(n, bool) or not isinstance(n, (numbers.Integral, torch.SymInt)):
            raise ValueError(f"flash4: {name} must be an int, got {n!r}")
    scale = _scale_arg(softmax_scale)
    left, right = _window_args(window_size, causal)
    cap = _softcap_arg(softcap)
    out, lse = torch.ops.flash4.fwd_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                           max_seqlen_k, scale, bool(causal), left, right, cap,
                                           seqused_k, bool(deterministic),
                                           _emulation_arg(exp2_emulation))
    return (out, lse) if return_attn_probs else out


def forward_path(q, k, v, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0):
    """(path, reason): which kernels flash_attn_func would run for these arguments on q's
    device: "sm90" (Hopper) or "portable" (sm80-class), or "none" and why (the library's
    flash4_fwd_supported). Launches nothing."""
    _need_tensors(q=q, k=k, v=v)
    left, right = _window_args(window_size, causal)
    return tuple(torch.ops.flash4.fwd_supported(q, k, v, _scale_arg(softmax_scale), bool(causal),
                                                left, right, _softcap_arg(softcap), None))
