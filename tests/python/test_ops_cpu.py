"""flash4 PyTorch binding tests that need no GPU: op schemas, fake kernels
(FakeTensorMode, make_fx, torch.export through dynamo), the autograd wiring
(traced, not run) and argument errors, raised before any launch with the
library's messages. They run wherever torch and the built extension import."""
import math
import os
import re

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed: flash4's PyTorch tests need it")
import flash4  # noqa: E402  (a build that does not import is an error, not a skip)
from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402
from torch.fx.experimental.proxy_tensor import make_fx  # noqa: E402

BF16 = torch.bfloat16
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def rand(*shape, dtype=BF16, device="cpu"):
    return torch.randn(*shape, dtype=dtype, device=device)


# ---- schemas -----------------------------------------------------------------------

def test_ops_are_registered_with_their_schemas():
    fwd = str(torch.ops.flash4.fwd.default._schema)
    assert fwd.startswith("flash4::fwd(Tensor q, Tensor k, Tensor v, float softmax_scale=0.")
    assert fwd.endswith("-> (Tensor out, Tensor lse)")
    assert "Tensor? seqused_k=None" in fwd and "!" not in fwd  # functional
    fv = str(torch.ops.flash4.fwd_varlen.default._schema)
    assert "Tensor cu_seqlens_q, Tensor cu_seqlens_k, int max_seqlen_q, int max_seqlen_k" in fv
    assert fv.endswith("-> (Tensor out, Tensor lse)") and "!" not in fv
    sup = str(torch.ops.flash4.fwd_supported.default._schema)
    assert sup.endswith("-> (str path, str reason)"), sup
    for name in ("bwd", "bwd_varlen"):
        s = getattr(torch.ops.flash4, name).default._schema
        text = str(s)
        assert "Tensor(a!) dq, Tensor(b!) dk, Tensor(c!) dv" in text, text
        assert text.endswith("-> ()"), text
        mutated = [a.name for a in s.arguments if a.alias_info is not None and a.alias_info.is_write]
        assert mutated == ["dq", "dk", "dv"]


def test_version_matches_cmake_project():
    path = os.path.join(REPO, "CMakeLists.txt")
    if not os.path.exists(path):
        pytest.skip("not run from a flash4 checkout")
    m = re.search(r"project\(flash4 VERSION ([0-9.]+)", open(path).read())
    assert m and m.group(1) == flash4.__version__


def test_library_path_points_at_the_loaded_extension():
    assert os.path.exists(flash4.library_path())


# ---- fake kernels ---------------------------------------------------------------------

@pytest.mark.parametrize("device", ["cpu", "cuda", "meta"])
def test_fake_shapes(device):
    with FakeTensorMode():
        q = torch.empty(2, 113, 6, 64, dtype=BF16, device=device)
        k = torch.empty(2, 203, 2, 64, dtype=BF16, device=device)
        out, lse = torch.ops.flash4.fwd(q, k, k, causal=True)
        assert out.shape == q.shape and out.dtype == BF16 and out.device == q.device
        assert out.is_contiguous()
        assert lse.shape == (2, 6, 113) and lse.dtype == torch.float32
        # wrapper, strided input (a packed qkv)
        qkv = torch.empty(2, 50, 3, 4, 32, dtype=torch.float16, device=device)
        o = flash4.flash_attn_func(*qkv.unbind(2), causal=True)
        assert o.shape == (2, 50, 4, 32) and o.dtype == torch.float16 and o.is_contiguous()
        o, lse = flash4.flash_attn_func(*qkv.unbind(2), return_attn_probs=True)
        assert lse.shape == (2, 4, 50)
        # varlen
        qv = torch.empty(300, 6, 128, dtype=BF16, device=device)
        kv = torch.empty(500, 3, 128, dtype=BF16, device=device)
        cu = torch.empty(4, dtype=torch.int32, device=device)
        out, lse = flash4.flash_attn_varlen_func(qv, kv, kv, cu, cu, 200, 300, return_attn_probs=True)
        assert out.shape == (300, 6, 128) and lse.shape == (6, 300) and lse.dtype == torch.float32


def test_fake_rejects_wrong_rank():
    with FakeTensorMode():
        q = torch.empty(113, 6, 64, dtype=BF16)
        with pytest.raises(ValueError, match="expected 4"):
            torch.ops.flash4.fwd(q, q, q)
        with pytest.raises(ValueError, match="expected 3"):
            torch.ops.flash4.fwd_varlen(q.unsqueeze(0), q, q, q, q, 1, 1)


def test_make_fx_traces_forward_and_backward():
    """The autograd formula: the traced backward calls flash4::bwd on the saved tensors."""
    def f(q, k, v):
        o = flash4.flash_attn_func(q, k, v, causal=True, window_size=(32, -1), softcap=10.0,
                                   deterministic=True)
        return torch.autograd.grad(o.float().sum(), (q, k, v))

    q = rand(2, 113, 6, 64).requires_grad_()
    k = rand(2, 203, 2, 64).requires_grad_()
    v = rand(2, 203, 2, 64).requires_grad_()
    gm = make_fx(f, tracing_mode="fake")(q, k, v)
    code = gm.code
    assert "flash4.fwd.default" in code and "flash4.bwd.default" in code, code
    fwd_nodes = [n for n in gm.graph.nodes if n.target is torch.ops.flash4.fwd.default]
    bwd_nodes = [n for n in gm.graph.nodes if n.target is torch.ops.flash4.bwd.default]
    assert len(fwd_nodes) == 1 and len(bwd_nodes) == 1
    # options reach the backward: scale 0 (default), causal, window (32, 0), softcap, deterministic
    assert list(bwd_nodes[0].args[9:14]) == [0.0, True, 32, 0, 10.0]
    assert bwd_nodes[0].args[-1] is True
    grads = [n for n in gm.graph.nodes if n.op == "output"][0].args[0]
    assert len(grads) == 3


def test_make_fx_traces_varlen_backward():
    def f(q, k, v, cu_q, cu_k):
        o = flash4.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 64, 80, causal=True)
        return torch.autograd.grad(o.float().sum(), (q, k, v))

    q = rand(150, 4, 64).requires_grad_()
    k = rand(200, 2, 64).requires_grad_()
    v = rand(200, 2, 64).requires_grad_()
    cu_q = torch.tensor([0, 64, 150], dtype=torch.int32)
    cu_k = torch.tensor([0, 80, 200], dtype=torch.int32)
    code = make_fx(f, tracing_mode="fake")(q, k, v, cu_q, cu_k).code
    assert "flash4.fwd_varlen.default" in code and "flash4.bwd_varlen.default" in code, code


class Block(torch.nn.Module):
    """Attention block: qkv projection, flash4 attention on the packed qkv, out projection."""

    def __init__(self, dim=128, heads=2, dtype=BF16):
        super().__init__()
        self.heads, self.hd = heads, dim // heads
        self.qkv = torch.nn.Linear(dim, 3 * dim, dtype=dtype)
        self.proj = torch.nn.Linear(dim, dim, dtype=dtype)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, self.hd).unbind(2)
        o = flash4.flash_attn_func(q, k, v, causal=True)
        return self.proj(o.reshape(b, n, d))


def test_dynamo_traces_block_fullgraph_with_dynamic_seqlen():
    """torch.export through dynamo (strict) on CPU tensors: the fake kernel runs, no kernel."""
    x = rand(2, 100, 128)
    seq = torch.export.Dim("seq", min=2, max=8192)
    ep = torch.export.export(Block(), (x,), dynamic_shapes=({1: seq},), strict=True)
    nodes = [n for n in ep.graph.nodes if n.target is torch.ops.flash4.fwd.default]
    assert len(nodes) == 1
    out_meta = ep.graph_module.graph.find_nodes(op="output")[0].args[0][0].meta["val"]
    assert tuple(out_meta.shape)[0] == 2 and out_meta.shape[2] == 128


# ---- argument errors (before any launch, any machine) -----------------------------------

def _call(q, k, v, **kw):
    return flash4.flash_attn_func(q, k, v, **kw)


@pytest.mark.parametrize("case, exc, pattern", [
    ("headdim", ValueError, r"q: headdim 12 must be a multiple of 8 between 8 and 256"),
    ("headdim_big", ValueError, r"headdim 264 must be a multiple of 8"),
    ("gqa", ValueError, r"heads: Hq=6 must be a multiple of Hkv=4"),
    ("kv_shape", ValueError, r"v: shape\[1\]=99 \(seqlen_k\) differs from k's 100"),
    ("batch", ValueError, r"k: shape\[0\]=3 \(batch\) differs from q's 2"),
    ("dtype_mix", ValueError, r"k: dtype fp16 differs from q's bf16"),
    ("dtype_int", ValueError, r"q: dtype .*not supported"),
    ("rank", ValueError, r"q: 3 dimensions, expected 4"),
    ("headdim_kv", ValueError, r"k: shape\[3\]=32 \(headdim\) differs from q's 64"),
    ("window_type", ValueError, r"window_size must be a pair"),
    ("window_int", ValueError, r"window_size left must be an int"),
    ("softcap", ValueError, r"softcap must be finite and >= 0"),
    ("scale_zero", ValueError, r"softmax_scale=0 is not supported"),
    ("scale_inf", ValueError, r"softmax_scale must be finite"),
    ("not_tensor", TypeError, r"k must be a torch.Tensor"),
])
def test_argument_errors(case, exc, pattern):
    q, k, v = rand(2, 50, 6, 64), rand(2, 100, 2, 64), rand(2, 100, 2, 64)
    kw = {}
    if case == "headdim":
        q, k, v = q[..., :12], k[..., :12], v[..., :12]
    elif case == "headdim_big":
        q, k, v = rand(2, 5, 6, 264), rand(2, 5, 2, 264), rand(2, 5, 2, 264)
    elif case == "gqa":
        k, v = rand(2, 100, 4, 64), rand(2, 100, 4, 64)
    elif case == "kv_shape":
        v = rand(2, 99, 2, 64)
    elif case == "batch":
        k, v = rand(3, 100, 2, 64), rand(3, 100, 2, 64)
    elif case == "dtype_mix":
        k = k.half()
    elif case == "dtype_int":
        q, k, v = (t.to(torch.int16) for t in (q, k, v))
    elif case == "rank":
        q = q[0]
    elif case == "headdim_kv":
        k, v = k[..., :32], v[..., :32]
    elif case == "window_type":
        kw = {"window_size": 5}
    elif case == "window_int":
        kw = {"window_size": (1.5, 2)}
    elif case == "softcap":
        kw = {"softcap": -1.0}
    elif case == "scale_zero":
        kw = {"softmax_scale": 0.0}
    elif case == "scale_inf":
        kw = {"softmax_scale": math.inf}
    elif case == "not_tensor":
        k = [1, 2]
    with pytest.raises(exc, match=pattern):
        _call(q, k, v, **kw)


def test_valid_cpu_call_says_cuda_only():
    q, k = rand(2, 50, 6, 64), rand(2, 100, 2, 64)
    with pytest.raises(ValueError, match=r"flash4::fwd: the tensors are on cpu; flash4 runs on CUDA "
                                         r"devices only"):
        flash4.flash_attn_func(q, k, k)


def test_library_errors_carry_status_and_op_name():
    q = rand(2, 50, 6, 12)
    with pytest.raises(ValueError) as info:
        torch.ops.flash4.fwd(q, q, q)
    text = str(info.value)
    assert text.startswith("flash4::fwd: q: headdim 12") and "[FLASH4_ERROR_INVALID_ARGUMENT]" in text
    # no C++ stack trace in the message
    assert "Exception raised from" not in text


@pytest.mark.parametrize("case, pattern", [
    ("cu_dtype", r"cu_seqlens_q: dtype Long is not supported .*cu_seqlens, seqused_k: int32"),
    ("cu_len", r"opt.cu_seqlens_k: shape\[0\]=4 \(batch\+1\) differs from opt.cu_seqlens_q's 3"),
    ("max_seqlen", r"max_seqlen_q must be an int"),
    ("max_neg", r"opt.max_seqlen_q=-1: must be >= 0"),
    ("seqused_dtype", r"seqused_k: dtype Long is not supported"),
    ("seqused_len", r"opt.seqused_k: shape\[0\]=3 differs from the batch size 2"),
    ("rank", r"q: 4 dimensions, expected 3"),
])
def test_varlen_argument_errors(case, pattern):
    q, k = rand(150, 4, 64), rand(200, 2, 64)
    cu_q = torch.tensor([0, 64, 150], dtype=torch.int32)
    cu_k = torch.tensor([0, 80, 200], dtype=torch.int32)
    args = dict(max_seqlen_q=86, max_seqlen_k=120)
    kw = {}
    if case == "cu_dtype":
        cu_q = cu_q.long()
    elif case == "cu_len":
        cu_k = torch.tensor([0, 80, 100, 200], dtype=torch.int32)
    elif case == "max_seqlen":
        args["max_seqlen_q"] = 86.0
    elif case == "max_neg":
        args["max_seqlen_q"] = -1
    elif case == "seqused_dtype":
        kw["seqused_k"] = torch.tensor([3, 4])
    elif case == "seqused_len":
        kw["seqused_k"] = torch.tensor([3, 4, 5], dtype=torch.int32)
    elif case == "rank":
        q = q.unsqueeze(0)
    with pytest.raises(ValueError, match=pattern):
        flash4.flash_attn_varlen_func(q, k, k, cu_q, cu_k, args["max_seqlen_q"],
                                      args["max_seqlen_k"], **kw)


def test_bwd_op_validates_on_cpu():
    q, k = rand(2, 50, 6, 64), rand(2, 100, 2, 64)
    out, lse = torch.empty_like(q), torch.empty(2, 6, 50)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty(2, 100, 2, 32, dtype=BF16)
    with pytest.raises(ValueError, match=r"flash4::bwd: dv: shape\[3\]=32 \(headdim\) differs"):
        torch.ops.flash4.bwd(q, q, k, k, out, lse, dq, dk, dv)
    with pytest.raises(ValueError, match=r"lse: shape\[1\]=50 \(heads\) differs from q.s 6"):  # lse (B, H, Sq) expected, not (B, Sq, H)
        torch.ops.flash4.bwd(q, q, k, k, out, torch.empty(2, 50, 6), dq, dk, torch.empty_like(k))


def test_backward_available_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible: the GPU tests probe the backward")
    ok, reason = flash4.backward_available()
    assert ok is False and "no CUDA device" in reason


def test_forward_path_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible: the GPU tests check forward_path there")
    q, k = rand(2, 50, 6, 64), rand(2, 100, 2, 64)
    path, reason = flash4.forward_path(q, k, k, causal=True)
    assert path == "none" and "no usable CUDA device" in reason, (path, reason)
    with pytest.raises(ValueError, match="headdim 12"):
        flash4.forward_path(q[..., :12], k[..., :12], k[..., :12])
