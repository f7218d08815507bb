"""Attention references in plain torch, for the flash4 tests.

attention_ref(..., upcast=True) computes in float64 (the oracle);
upcast=False computes in the input dtype the way an unfused torch program
would (matmuls in the input dtype, softmax rounded to it): the
"same-precision reference" of FlashAttention's tolerance rule,
    max|out - ref64| <= rtol * max|out_lowp - ref64| + atol.

Semantics follow flash4 / FlashAttention: bottom-right aligned causal mask and
windows (query i of a sequence with sq queries and sk keys sees keys
[i + sk - sq - left, i + sk - sq + right]), softcap on the scaled scores,
seqused_k limiting the keys, rows that see no key give out = 0 and lse = -inf.
"""
import math

import torch


def key_mask(sq, sk_rows, sk_used, causal, window, device):
    """Bool (sq, sk_rows): True where query i may attend key j."""
    left, right = window
    if causal:
        right = 0
    i = torch.arange(sq, device=device).view(-1, 1)
    j = torch.arange(sk_rows, device=device).view(1, -1)
    off = sk_used - sq
    ok = (j < sk_used) & (i >= 0)  # (sq, sk_rows)
    if left is not None and left >= 0:
        ok = ok & (j >= i + off - left)
    if right is not None and right >= 0:
        ok = ok & (j <= i + off + right)
    return ok


def attention_ref(q, k, v, *, softmax_scale=None, causal=False, window=(-1, -1), softcap=0.0,
                  seqused_k=None, upcast=True):
    """q (B, Sq, H, D), k/v (B, Sk, Hk, D) -> out (B, Sq, H, D) in q's dtype (float64 with
    upcast), lse float64 (B, H, Sq)."""
    B, Sq, H, D = q.shape
    Sk, Hk = k.shape[1], k.shape[2]
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(D)
    if upcast:
        q, k, v = q.double(), k.double(), v.double()
    k = k.repeat_interleave(H // Hk, dim=2)
    v = v.repeat_interleave(H // Hk, dim=2)
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    s32 = s.double()
    if softcap > 0:
        s32 = softcap * torch.tanh(s32 / softcap)
        s = s32.to(s.dtype)
    masks = []
    for b in range(B):
        used = Sk if seqused_k is None else int(seqused_k[b])
        masks.append(key_mask(Sq, Sk, used, causal, window, q.device))
    mask = torch.stack(masks).view(B, 1, Sq, Sk)
    lse = torch.logsumexp(s32.masked_fill(~mask, float("-inf")), dim=-1)
    p = torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1)
    p = p.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)  # rows with no key: 0, not NaN
    out = torch.einsum("bhqk,bkhd->bqhd", p.to(v.dtype), v)
    return out, lse


def varlen_ref(q, k, v, cu_q, cu_k, *, seqused_k=None, **kw):
    """Packed sequences: q (total_q, H, D), k/v (total_k, Hk, D) -> out like q, lse (H, total_q)."""
    outs, lses = [], []
    cu_q, cu_k = cu_q.tolist(), cu_k.tolist()
    for b in range(len(cu_q) - 1):
        qs = q[cu_q[b]:cu_q[b + 1]].unsqueeze(0)
        ks = k[cu_k[b]:cu_k[b + 1]].unsqueeze(0)
        vs = v[cu_k[b]:cu_k[b + 1]].unsqueeze(0)
        used = None if seqused_k is None else seqused_k[b:b + 1].tolist()
        o, l = attention_ref(qs, ks, vs, seqused_k=used, **kw)
        outs.append(o[0])
        lses.append(l[0])
    return torch.cat(outs, 0), torch.cat(lses, 1)


def assert_close_fa(out, ref, ref_lowp, *, rtol=2.0, atol=1e-5, what="out"):
    """FlashAttention's rule: flash4's error against the float64 reference is at most
    rtol times the error of the same-precision torch reference, plus a tiny atol."""
    err = (out.double() - ref).abs().max().item() if out.numel() else 0.0
    err_lowp = (ref_lowp.double() - ref).abs().max().item() if out.numel() else 0.0
    assert err <= rtol * err_lowp + atol, (
        f"{what}: max error {err:.3e} vs float64 exceeds {rtol} x same-precision torch error "
        f"{err_lowp:.3e} + {atol:.0e}")
    return err, err_lowp


def assert_lse_close(lse, ref, atol=2e-3, rtol=1e-3):
    """fp32 LSE against float64: -inf exactly where the reference has it."""
    ref = ref.to(lse.device)
    neg = torch.isneginf(ref)
    assert torch.equal(torch.isneginf(lse), neg), "lse: -inf rows differ from the reference"
    assert not torch.isnan(lse).any(), "lse has NaN"
    fin = ~neg
    if fin.any():
        diff = (lse.double()[fin] - ref[fin]).abs()
        tol = atol + rtol * ref[fin].abs()
        assert bool((diff <= tol).all()), f"lse: max error {diff.max().item():.3e}"
