"""flash4 PyTorch binding on a CUDA device: accuracy against float64 (FlashAttention's
tolerance rule), opcheck, torch.compile, strided inputs, CUDA graphs, errors, and the
backward (gradients of every option against float64, varlen, opcheck of the bwd ops,
bitwise repeatable gradients with deterministic=True, the clear error where no kernel runs).
Every test here is marked `gpu` and skips with a message without a CUDA device."""
import random
import zlib

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: flash4's PyTorch tests need it")
import flash4  # noqa: E402
from attn_ref import (assert_close_fa, assert_lse_close, attention_ref,  # noqa: E402
                      varlen_ref)

pytestmark = pytest.mark.gpu
DEV = "cuda"


def rand(*shape, dtype=torch.bfloat16, scale=1.0):
    return torch.randn(*shape, dtype=dtype, device=DEV) * scale


def check_forward(q, k, v, *, causal=False, window=(-1, -1), softcap=0.0, softmax_scale=None,
                  what=""):
    out, lse = flash4.flash_attn_func(q, k, v, softmax_scale=softmax_scale, causal=causal,
                                      window_size=window, softcap=softcap, return_attn_probs=True)
    kw = dict(softmax_scale=softmax_scale, causal=causal, window=window, softcap=softcap)
    ref, ref_lse = attention_ref(q, k, v, **kw)
    ref_lowp, _ = attention_ref(q, k, v, upcast=False, **kw)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert lse.shape == (q.shape[0], q.shape[2], q.shape[1]) and lse.dtype == torch.float32
    assert_close_fa(out, ref, ref_lowp, rtol=3.0 if softcap > 0 else 2.0, what=f"out {what}")
    assert_lse_close(lse, ref_lse)
    return out, lse


def test_forward_path():
    q, k = rand(2, 128, 4, 128), rand(2, 128, 4, 128)
    path, reason = flash4.forward_path(q, k, k, causal=True)
    assert path in ("sm90", "portable"), (path, reason)
    major, _ = torch.cuda.get_device_capability()
    assert major == 9 or path == "portable"


# ---- accuracy grid --------------------------------------------------------------------

SEQLENS = [(1, 1), (113, 203), (128, 217), (239, 1), (256, 512), (512, 256), (799, 3),
           (1023, 1024)]
MODES = ["plain", "causal", "window", "softcap", "causal_window_softcap"]


@pytest.mark.parametrize("seqlens", SEQLENS, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("mode", MODES)
def test_forward_accuracy(seqlens, d, mode):
    sq, sk = seqlens
    seed = zlib.crc32(f"{sq},{sk},{d},{mode}".encode()) % 10007
    torch.manual_seed(seed)
    rng = random.Random(seed)
    heads = [(6, 6), (6, 2), (6, 1)][seed % 3]  # MHA, GQA, MQA
    dtype = [torch.bfloat16, torch.float16][seed % 2]
    q = rand(2, sq, heads[0], d, dtype=dtype)
    k = rand(2, sk, heads[1], d, dtype=dtype)
    v = rand(2, sk, heads[1], d, dtype=dtype)
    causal = "causal" in mode
    window = (rng.randrange(0, sk + 1), rng.randrange(0, sk + 1)) if "window" in mode else (-1, -1)
    softcap = 15.0 if "softcap" in mode else 0.0
    if softcap:
        q, k = q * 3, k * 3  # scores large enough for the cap to matter
    check_forward(q, k, v, causal=causal, window=window, softcap=softcap,
                  what=f"{sq}x{sk} d{d} {mode} heads{heads} {dtype} window{window}")


@pytest.mark.parametrize("d", [8, 40, 96, 160, 192, 256])
@pytest.mark.parametrize("causal", [False, True])
def test_forward_head_dims(d, causal):
    torch.manual_seed(d)
    q, k, v = rand(2, 113, 4, d), rand(2, 203, 2, d), rand(2, 203, 2, d)
    check_forward(q, k, v, causal=causal, what=f"d{d}")


@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("causal", [False, True])
def test_forward_exp2_emulation(d, causal):
    """exp2_emulation=1: FA4's software exp2 for 1/4 of the exponentials (Hopper); as
    accurate as the hardware exp2 under the same rule. Bad values are a ValueError."""
    torch.manual_seed(20 + d + causal)
    q, k, v = rand(2, 517, 4, d, scale=3.0), rand(2, 1031, 2, d, scale=3.0), rand(2, 1031, 2, d)
    out, lse = flash4.flash_attn_func(q, k, v, causal=causal, exp2_emulation=1,
                                      return_attn_probs=True)
    ref, ref_lse = attention_ref(q, k, v, causal=causal)
    ref_lowp, _ = attention_ref(q, k, v, causal=causal, upcast=False)
    assert_close_fa(out, ref, ref_lowp, what=f"exp2 emulation d{d} causal={causal}")
    assert_lse_close(lse, ref_lse)
    with pytest.raises(ValueError, match="exp2_emulation must be -1"):
        flash4.flash_attn_func(q, k, v, exp2_emulation=2)


def test_forward_explicit_scale_and_fully_masked_rows():
    torch.manual_seed(1)
    q, k, v = rand(2, 300, 4, 64), rand(2, 100, 4, 64), rand(2, 100, 4, 64)
    # causal with Sq > Sk: the first 200 rows see no key (out 0, lse -inf)
    out, lse = check_forward(q, k, v, causal=True, softmax_scale=0.3)
    assert torch.all(out[:, :200] == 0)
    assert torch.all(torch.isneginf(lse[:, :, :200]))


def test_seqused_k_batched_op():
    torch.manual_seed(2)
    q, k, v = rand(3, 100, 4, 64), rand(3, 150, 2, 64), rand(3, 150, 2, 64)
    used = torch.tensor([150, 37, 0], dtype=torch.int32, device=DEV)
    out, lse = torch.ops.flash4.fwd(q, k, v, 0.0, True, -1, 0, 0.0, used)
    ref, ref_lse = attention_ref(q, k, v, causal=True, seqused_k=used.tolist())
    ref_lowp, _ = attention_ref(q, k, v, causal=True, seqused_k=used.tolist(), upcast=False)
    assert_close_fa(out, ref, ref_lowp)
    assert_lse_close(lse, ref_lse)
    assert torch.all(out[2] == 0)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("mode", ["plain", "window", "seqused"])
def test_varlen_accuracy(causal, mode):
    torch.manual_seed(3 + causal)
    rng = random.Random(7 + causal)
    lens_q = [rng.randrange(1, 300) for _ in range(6)] + [0]
    lens_k = [rng.randrange(1, 400) for _ in range(6)] + [5]
    lens_k[4] = 0  # a sequence without keys: out 0, lse -inf
    cu_q = torch.tensor([0] + list(_cumsum(lens_q)), dtype=torch.int32, device=DEV)
    cu_k = torch.tensor([0] + list(_cumsum(lens_k)), dtype=torch.int32, device=DEV)
    q = rand(sum(lens_q), 6, 128)
    k, v = rand(sum(lens_k), 2, 128), rand(sum(lens_k), 2, 128)
    window = (40, 17) if mode == "window" else (-1, -1)
    seqused = None
    if mode == "seqused":
        seqused = torch.tensor([max(0, n - rng.randrange(0, 50)) for n in lens_k], dtype=torch.int32,
                               device=DEV)
    out, lse = flash4.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k),
                                             causal=causal, window_size=window,
                                             return_attn_probs=True, seqused_k=seqused)
    kw = dict(causal=causal, window=window, seqused_k=seqused)
    ref, ref_lse = varlen_ref(q, k, v, cu_q, cu_k, **kw)
    ref_lowp, _ = varlen_ref(q, k, v, cu_q, cu_k, upcast=False, **kw)
    assert out.shape == q.shape and lse.shape == (6, q.shape[0])
    assert_close_fa(out, ref, ref_lowp, what=f"varlen {mode} causal={causal}")
    assert_lse_close(lse, ref_lse)


def _cumsum(xs):
    total = 0
    for x in xs:
        total += x
        yield total


# ---- opcheck, torch.compile ---------------------------------------------------------------

def test_opcheck_fwd():
    torch.manual_seed(4)
    q, k, v = rand(2, 113, 4, 64), rand(2, 203, 2, 64), rand(2, 203, 2, 64)
    torch.library.opcheck(torch.ops.flash4.fwd.default, (q, k, v),
                          {"causal": True, "window_left": 50, "window_right": 0, "softcap": 5.0})
    used = torch.tensor([203, 10], dtype=torch.int32, device=DEV)
    torch.library.opcheck(torch.ops.flash4.fwd.default, (q, k, v, 0.1, False, -1, -1, 0.0, used))


def test_opcheck_fwd_varlen():
    torch.manual_seed(5)
    cu_q = torch.tensor([0, 50, 120], dtype=torch.int32, device=DEV)
    cu_k = torch.tensor([0, 70, 200], dtype=torch.int32, device=DEV)
    q, k, v = rand(120, 4, 128), rand(200, 4, 128), rand(200, 4, 128)
    torch.library.opcheck(torch.ops.flash4.fwd_varlen.default, (q, k, v, cu_q, cu_k, 70, 130),
                          {"causal": True})


class Block(torch.nn.Module):
    def __init__(self, dim=256, heads=4, dtype=torch.bfloat16):
        super().__init__()
        self.heads, self.hd = heads, dim // heads
        self.qkv = torch.nn.Linear(dim, 3 * dim, dtype=dtype, device=DEV)
        self.proj = torch.nn.Linear(dim, dim, dtype=dtype, device=DEV)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, self.hd).unbind(2)
        o = flash4.flash_attn_func(q, k, v, causal=True)
        return self.proj(o.reshape(b, n, d))


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph_block(dynamic):
    torch.manual_seed(6)
    torch._dynamo.reset()
    block = Block()
    compiled = torch.compile(block, fullgraph=True, dynamic=dynamic)
    for n in (128, 200) if dynamic else (128,):
        x = rand(2, n, 256)
        with torch.no_grad():
            ref = block(x)
            got = compiled(x)
        torch.testing.assert_close(got, ref, atol=2e-2, rtol=2e-2)


# ---- strided inputs ----------------------------------------------------------------------

def test_strided_inputs_read_in_place_and_copied():
    torch.manual_seed(7)
    b, s, h, d = 2, 177, 4, 64
    # 1. packed qkv: strides are multiples of 16 bytes, read in place
    qkv = rand(b, s, 3, h, d)
    q, k, v = qkv.unbind(2)
    assert not q.is_contiguous()
    out = flash4.flash_attn_func(q, k, v, causal=True)
    ref = flash4.flash_attn_func(q.contiguous(), k.contiguous(), v.contiguous(), causal=True)
    assert torch.equal(out, ref)
    # 2. (B, H, S, D) transposed to (B, S, H, D): in place as well
    qt = rand(b, h, s, d).transpose(1, 2)
    out = flash4.flash_attn_func(qt, k, v)
    assert torch.equal(out, flash4.flash_attn_func(qt.contiguous(), k, v))
    # 3. last dim not contiguous: copied
    qx = rand(b, s, h, d).transpose(-1, -2).contiguous().transpose(-1, -2)
    assert qx.stride(-1) != 1
    assert torch.equal(flash4.flash_attn_func(qx, k, v), flash4.flash_attn_func(qx.contiguous(), k, v))
    # 4. row stride not a multiple of 16 bytes (h*d + 4 elements): copied
    base = rand(b, s, h * d + 4)
    qs = base.as_strided((b, s, h, d), (s * (h * d + 4), h * d + 4, d, 1))
    assert (qs.stride(1) * 2) % 16 != 0
    assert torch.equal(flash4.flash_attn_func(qs, k, v), flash4.flash_attn_func(qs.contiguous(), k, v))
    # 5. data pointer 2 bytes off 16-byte alignment: copied
    flat = rand(b * s * h * d + 1)
    qo = flat[1:].view(b, s, h, d)
    assert qo.data_ptr() % 16 != 0
    assert torch.equal(flash4.flash_attn_func(qo, k, v), flash4.flash_attn_func(qo.contiguous(), k, v))
    # 6. expanded (stride 0) key heads: read in place, same as materialized
    k1, v1 = rand(b, s, 1, d), rand(b, s, 1, d)
    ke, ve = k1.expand(b, s, h, d), v1.expand(b, s, h, d)
    assert torch.allclose(flash4.flash_attn_func(q, ke, ve).float(),
                          flash4.flash_attn_func(q, k1, v1).float(), atol=1e-2)


# ---- CUDA graphs ------------------------------------------------------------------------

def test_cuda_graph_capture_and_replay():
    torch.manual_seed(8)
    q, k, v = rand(2, 300, 6, 128), rand(2, 400, 2, 128), rand(2, 400, 2, 128)
    cu_q = torch.tensor([0, 100, 300], dtype=torch.int32, device=DEV)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture
        flash4.flash_attn_func(q, k, v, causal=True)
        flash4.flash_attn_varlen_func(q[0], k[0], v[0], cu_q, cu_q + 0, 200, 200)
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = flash4.flash_attn_func(q, k, v, causal=True, window_size=(64, -1))
        out_v = flash4.flash_attn_varlen_func(q[0], k[0], v[0], cu_q, cu_q + 0, 200, 200, causal=True)
    for step in range(3):
        q.copy_(rand(*q.shape))
        k.copy_(rand(*k.shape))
        g.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, flash4.flash_attn_func(q, k, v, causal=True, window_size=(64, -1)))
        assert torch.equal(out_v, flash4.flash_attn_varlen_func(q[0], k[0], v[0], cu_q, cu_q + 0,
                                                                200, 200, causal=True))


def test_runs_on_the_current_stream():
    torch.manual_seed(9)
    q, k, v = rand(4, 1024, 8, 128), rand(4, 1024, 8, 128), rand(4, 1024, 8, 128)
    ref = flash4.flash_attn_func(q, k, v)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        out = flash4.flash_attn_func(q, k, v)
        out.record_stream(s)
    s.synchronize()
    assert torch.equal(out, ref)


# ---- errors on the GPU ----------------------------------------------------------------------

@pytest.mark.parametrize("case, exc, pattern", [
    ("fp32", ValueError, r"q: dtype fp32 is not supported on the GPU \(fp16 or bf16\)"),
    ("device_mix", ValueError, r"k is on cpu but q is on cuda"),
    ("headdim", ValueError, r"headdim 20 must be a multiple of 8"),
    ("gqa", ValueError, r"Hq=6 must be a multiple of Hkv=4"),
    ("cu_int64", ValueError, r"cu_seqlens_q: dtype Long is not supported"),
])
def test_gpu_argument_errors_then_recovery(case, exc, pattern):
    q, k, v = rand(2, 64, 6, 64), rand(2, 64, 2, 64), rand(2, 64, 2, 64)
    with pytest.raises(exc, match=pattern):
        if case == "fp32":
            flash4.flash_attn_func(q.float(), k.float(), v.float())
        elif case == "device_mix":
            flash4.flash_attn_func(q, k.cpu(), v)
        elif case == "headdim":
            flash4.flash_attn_func(q[..., :20], k[..., :20], v[..., :20])
        elif case == "gqa":
            flash4.flash_attn_func(q, rand(2, 64, 4, 64), rand(2, 64, 4, 64))
        elif case == "cu_int64":
            cu = torch.tensor([0, 64], device=DEV)
            flash4.flash_attn_varlen_func(q[0], k[0], v[0], cu, cu, 64, 64)
    # no sticky CUDA error: the next call works
    out = flash4.flash_attn_func(q, k, v)
    torch.cuda.synchronize()
    assert torch.isfinite(out.float()).all()


# ---- backward ----------------------------------------------------------------------------
# The Hopper backward covers head dims up to 128 with every option (causal, windows, softcap,
# GQA, varlen, seqused_k, deterministic), 136..256 too. Elsewhere (no Hopper GPU)
# flash4_bwd says NOT_SUPPORTED and
# the binding raises NotImplementedError with that reason.

def _backward_runs():
    ok, reason = flash4.backward_available()
    if not ok:
        major, _ = torch.cuda.get_device_capability()
        assert major != 9, f"no backward on a Hopper GPU: {reason}"
        pytest.skip(f"library backward not available on this GPU: {reason}")


def _check_grads(grads, inputs, dout, ref_fn, what):
    """Gradients against float64 with FlashAttention's rule: error at most 3x that of the
    same-precision torch reference (P rounded before P.V and dS), plus a tiny atol."""
    ref_in = [t.detach().double().requires_grad_() for t in inputs]
    ref_fn(ref_in, upcast=True).backward(dout.double())
    low_in = [t.detach().clone().requires_grad_() for t in inputs]
    ref_fn(low_in, upcast=False).backward(dout)
    for g, r, lo, n in zip(grads, ref_in, low_in, "qkv"):
        assert g is not None and g.dtype == inputs[0].dtype
        assert_close_fa(g, r.grad, lo.grad, rtol=3.0, atol=1e-4, what=f"d{n} ({what})")


BWD_SEQLENS = [(1, 1), (113, 203), (239, 1), (300, 190), (1023, 1024)]
BWD_MODES = ["plain", "causal", "window", "softcap", "causal_window_softcap"]


@pytest.mark.parametrize("seqlens", BWD_SEQLENS, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("d", [64, 96, 128])
@pytest.mark.parametrize("mode", BWD_MODES)
def test_backward_accuracy(seqlens, d, mode):
    _backward_accuracy(seqlens, d, mode)


@pytest.mark.parametrize("seqlens", BWD_SEQLENS, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("d", [160, 192, 256])
@pytest.mark.parametrize("mode", ["plain", "causal", "window", "causal_window_softcap"])
def test_backward_accuracy_large_head_dims(seqlens, d, mode):
    """Head dims above 128 (the head-dim-256 kernel): every option but deterministic mode."""
    _backward_accuracy(seqlens, d, mode)


def _backward_accuracy(seqlens, d, mode):
    _backward_runs()
    sq, sk = seqlens
    seed = zlib.crc32(f"bwd{sq},{sk},{d},{mode}".encode()) % 10007
    torch.manual_seed(seed)
    rng = random.Random(seed)
    heads = [(6, 6), (6, 2), (6, 1)][seed % 3]
    dtype = [torch.bfloat16, torch.float16][seed % 2]
    scale = 3.0 if "softcap" in mode else 1.0
    q = (rand(2, sq, heads[0], d, dtype=dtype) * scale).requires_grad_()
    k = (rand(2, sk, heads[1], d, dtype=dtype) * scale).requires_grad_()
    v = rand(2, sk, heads[1], d, dtype=dtype).requires_grad_()
    causal = "causal" in mode
    window = (rng.randrange(0, sk + 1), rng.randrange(0, sk + 1)) if "window" in mode else (-1, -1)
    if causal:
        window = (window[0], 0 if "window" in mode else -1)
    softcap = 15.0 if "softcap" in mode else 0.0
    out = flash4.flash_attn_func(q, k, v, causal=causal, window_size=window, softcap=softcap)
    dout = torch.randn_like(out)
    out.backward(dout)
    kw = dict(causal=causal, window=window, softcap=softcap)
    _check_grads((q.grad, k.grad, v.grad), (q, k, v), dout,
                 lambda t, upcast: attention_ref(*t, upcast=upcast, **kw)[0],
                 f"{sq}x{sk} d{d} {mode} heads{heads} {dtype} window{window}")


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("mode", ["plain", "window", "seqused", "softcap"])
def test_varlen_backward_accuracy(causal, mode):
    _backward_runs()
    torch.manual_seed(13 + causal)
    rng = random.Random(17 + causal)
    lens_q = [rng.randrange(1, 300) for _ in range(6)] + [0]
    lens_k = [rng.randrange(1, 400) for _ in range(6)] + [5]
    lens_k[4] = 0  # a sequence without keys: its queries get dq = 0
    cu_q = torch.tensor([0] + list(_cumsum(lens_q)), dtype=torch.int32, device=DEV)
    cu_k = torch.tensor([0] + list(_cumsum(lens_k)), dtype=torch.int32, device=DEV)
    scale = 3.0 if mode == "softcap" else 1.0
    q = (rand(sum(lens_q), 6, 128) * scale).requires_grad_()
    k = (rand(sum(lens_k), 2, 128) * scale).requires_grad_()
    v = rand(sum(lens_k), 2, 128).requires_grad_()
    window = (40, 17) if mode == "window" else (-1, -1)
    if causal and mode == "window":
        window = (40, 0)
    softcap = 10.0 if mode == "softcap" else 0.0
    seqused = None
    if mode == "seqused":
        seqused = torch.tensor([max(0, n - rng.randrange(0, 50)) for n in lens_k], dtype=torch.int32,
                               device=DEV)
    out = flash4.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k),
                                        causal=causal, window_size=window, softcap=softcap,
                                        seqused_k=seqused)
    dout = torch.randn_like(out)
    out.backward(dout)
    kw = dict(causal=causal, window=window, softcap=softcap, seqused_k=seqused)
    _check_grads((q.grad, k.grad, v.grad), (q, k, v), dout,
                 lambda t, upcast: varlen_ref(*t, cu_q, cu_k, upcast=upcast, **kw)[0],
                 f"varlen {mode} causal={causal}")
    if mode == "seqused":  # keys past seqused_k get zero gradients
        for b in range(len(lens_k)):
            rows = slice(cu_k[b].item() + seqused[b].item(), cu_k[b + 1].item())
            assert torch.all(k.grad[rows] == 0) and torch.all(v.grad[rows] == 0)


def test_backward_large_head_dim_deterministic_bitwise():
    """deterministic=True at head dims above 128 (the 256 kernel): the same gradient bits on
    every call, accurate."""
    _backward_runs()
    torch.manual_seed(31)
    for d, causal in ((256, False), (192, True)):
        q, k, v = rand(2, 301, 4, d), rand(2, 457, 2, d), rand(2, 457, 2, d)
        dout = rand(2, 301, 4, d)
        grads = []
        for _ in range(3):
            qq, kk, vv = (t.detach().clone().requires_grad_() for t in (q, k, v))
            flash4.flash_attn_func(qq, kk, vv, causal=causal, deterministic=True).backward(dout)
            grads.append((qq.grad, kk.grad, vv.grad))
        for g in grads[1:]:
            for a, b in zip(g, grads[0]):
                assert torch.equal(a, b), f"d{d} deterministic gradients differ between calls"
        _check_grads(grads[0], (q, k, v), dout,
                     lambda t, upcast: attention_ref(*t, upcast=upcast, causal=causal)[0],
                     f"deterministic d{d} causal={causal}")


def test_backward_deterministic_bitwise():
    """deterministic=True: the same inputs give the same gradient bits on every call
    (causal, Sq != Sk, GQA 3:1, odd lengths; a window; varlen), and they are accurate."""
    _backward_runs()
    torch.manual_seed(12)
    q, k, v = rand(2, 301, 6, 128), rand(2, 457, 2, 128), rand(2, 457, 2, 128)
    dout = rand(2, 301, 6, 128)
    for window in ((-1, -1), (100, 0)):
        first = None
        for run in range(20):
            qq, kk, vv = (t.detach().clone().requires_grad_() for t in (q, k, v))
            out = flash4.flash_attn_func(qq, kk, vv, causal=True, window_size=window,
                                         deterministic=True)
            out.backward(dout)
            grads = (qq.grad, kk.grad, vv.grad)
            if first is None:
                first = grads
                continue
            for g, g0, n in zip(grads, first, "qkv"):
                assert torch.equal(g, g0), f"d{n} of run {run} differs from run 0 (window {window})"
        kw = dict(causal=True, window=window)
        _check_grads(first, (q, k, v), dout,
                     lambda t, upcast: attention_ref(*t, upcast=upcast, **kw)[0],
                     f"deterministic window {window}")
    cu = torch.tensor([0, 130, 301], dtype=torch.int32, device=DEV)
    qv, kv_, vv_ = q[0], k[0, :301], v[0, :301]
    first = None
    for run in range(10):
        t = [x.detach().clone().requires_grad_() for x in (qv, kv_, vv_)]
        out = flash4.flash_attn_varlen_func(*t, cu, cu, 171, 171, causal=True, deterministic=True)
        out.backward(dout[0])
        grads = tuple(x.grad for x in t)
        if first is None:
            first = grads
            continue
        for g, g0, n in zip(grads, first, "qkv"):
            assert torch.equal(g, g0), f"varlen d{n} of run {run} differs from run 0"


def test_opcheck_bwd():
    """torch.ops.flash4.bwd (dq, dk, dv written in place): default and deterministic, with
    causal GQA, and with a window + softcap."""
    _backward_runs()
    torch.manual_seed(11)
    q, k, v = rand(2, 113, 4, 64), rand(2, 203, 2, 64), rand(2, 203, 2, 64)
    for kw in ({"causal": True}, {"window_left": 40, "window_right": 9, "softcap": 8.0}):
        out, lse = torch.ops.flash4.fwd(q, k, v, **kw)
        dout = torch.randn_like(out)
        for deterministic in (False, True):
            dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
            torch.library.opcheck(torch.ops.flash4.bwd.default,
                                  (dout, q, k, v, out, lse, dq, dk, dv),
                                  dict(kw, deterministic=deterministic))


def test_opcheck_bwd_varlen():
    _backward_runs()
    torch.manual_seed(14)
    cu_q = torch.tensor([0, 50, 120], dtype=torch.int32, device=DEV)
    cu_k = torch.tensor([0, 70, 200], dtype=torch.int32, device=DEV)
    used = torch.tensor([70, 33], dtype=torch.int32, device=DEV)
    q, k, v = rand(120, 4, 128), rand(200, 2, 128), rand(200, 2, 128)
    out, lse = torch.ops.flash4.fwd_varlen(q, k, v, cu_q, cu_k, 70, 130, causal=True,
                                           seqused_k=used)
    dout = torch.randn_like(out)
    for deterministic in (False, True):
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        torch.library.opcheck(torch.ops.flash4.bwd_varlen.default,
                              (dout, q, k, v, out, lse, dq, dk, dv, cu_q, cu_k, 70, 130),
                              {"causal": True, "seqused_k": used, "deterministic": deterministic})


def test_opcheck_with_grad():
    _backward_runs()
    q, k, v = (t.requires_grad_() for t in (rand(2, 113, 4, 64), rand(2, 203, 2, 64),
                                            rand(2, 203, 2, 64)))
    torch.library.opcheck(torch.ops.flash4.fwd.default, (q, k, v), {"causal": True})
    cu = torch.tensor([0, 30, 100], dtype=torch.int32, device=DEV)
    qv, kv_, vv_ = (rand(100, 4, 64).requires_grad_() for _ in range(3))
    torch.library.opcheck(torch.ops.flash4.fwd_varlen.default, (qv, kv_, vv_, cu, cu, 70, 70),
                          {"causal": True, "window_left": 20})


def test_torch_compile_fullgraph_training_step():
    """A small attention block compiled with fullgraph=True, forward and backward."""
    _backward_runs()
    torch.manual_seed(15)
    torch._dynamo.reset()
    block = Block()
    compiled = torch.compile(block, fullgraph=True)
    x = rand(2, 160, 256).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    y = compiled(x)
    y.float().square().mean().backward()
    y2 = block(x2)
    torch.testing.assert_close(y, y2, atol=2e-2, rtol=2e-2)
    block.zero_grad()
    y2.float().square().mean().backward()
    torch.testing.assert_close(x.grad, x2.grad, atol=2e-2, rtol=5e-2)


def test_backward_available_reports_the_library_reason():
    ok, reason = flash4.backward_available()
    assert isinstance(ok, bool)
    assert ok or (reason.startswith("flash4::bwd: ") and "[FLASH4_ERROR_NOT_SUPPORTED]" in reason)


@pytest.mark.parametrize("d", [136, 192])
def test_varlen_head_dims_with_empty_panels(d):
    """Head dims 136..192 run on the 256 kernels with a last 64-column panel past the head
    dim. TMA on varlen (ragged) maps faulted for such a panel depending on where the tensors
    sat (sm90/panels.cuh): the kernels now never touch it. Fresh tensors at shifting addresses,
    forward and backward, long sequences; before the fix this failed within a few calls."""
    torch.manual_seed(d)
    lens = [6482, 1669, 7168, 1065]
    cu = torch.tensor([0] + list(_cumsum(lens)), dtype=torch.int32, device=DEV)
    heads = 2048 // d
    backward = flash4.backward_available()[0]
    keep = []
    for r in range(6):
        keep.append(torch.empty((r + 1) * 3 << 20, dtype=torch.uint8, device=DEV))  # shift the layout
        q, k, v = (rand(sum(lens), heads, d).requires_grad_() for _ in range(3))
        out = flash4.flash_attn_varlen_func(q, k, v, cu, cu, max(lens), max(lens), causal=r % 2 == 1)
        if r < 2 and backward:
            out.backward(torch.randn_like(out))
            assert torch.isfinite(q.grad.float()).all() and torch.isfinite(k.grad.float()).all()
        torch.cuda.synchronize()
        assert torch.isfinite(out.float()).all()
