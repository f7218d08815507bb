# One FA3 backward launch for ncu (after a warm-up): python3 fa3_one.py D CAUSAL SEQLEN
import sys, torch, flash_attn_interface as fa3
d, causal, s = int(sys.argv[1]), bool(int(sys.argv[2])), int(sys.argv[3])
b, h = max(1, 16384 // s), 2048 // d
torch.manual_seed(0)
q, k, v = (torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
out = fa3.flash_attn_func(q, k, v, causal=causal)
out = out[0] if isinstance(out, tuple) else out
g = torch.randn_like(out)
for _ in range(2):
    torch.autograd.grad(out, (q, k, v), g, retain_graph=True)
torch.cuda.synchronize()
