#!/usr/bin/env python3
# Share of ncu stall samples per phase of the Hopper forward kernel (producer,
# tile start, first block, K/V loop, last P.V, epilogue): maps each profiled SASS
# instruction to its outermost fwd_kernel.cuh line through a -lineinfo build of
# the same kernel (nvdisasm -gi -c), then the line to a phase by markers in the
# source. The SASS must match the profiled kernel instruction for instruction.
# Usage: ncu_fwd_phases.py PROFILE.sass.csv.gz LOCAL.sass fwd_kernel.cuh
import csv, gzip, re, sys
prof, sass, kern = sys.argv[1], sys.argv[2], sys.argv[3]
rows=list(csv.reader(gzip.open(prof,'rt')))
hdr=rows[1]; data=rows[2:]
ia=hdr.index('Address'); isamp=hdr.index('Warp Stall Sampling (All Samples)'); isrc=hdr.index('Source')
base=int(data[0][ia],16)
loc={}; cur=None
for l in open(sass):
    if '## File' in l:
        pairs=re.findall(r'"[^"]*/([^"/]+)", line (\d+)',l)
        fk=[int(n) for f,n in pairs if f=='fwd_kernel.cuh']
        cur=fk[-1] if fk else None; continue
    m=re.match(r'\s*/\*([0-9a-f]{4})\*/\s*(\S+)',l)
    if m: loc[int(m.group(1),16)]=(cur,m.group(2))
src=open(kern).read().split('\n')
def find(pat, start=0):
    for i,l in enumerate(src[start:],start+1):
        if pat in l: return i
    raise SystemExit(pat)
prod0=find('// ------------------------------------------------------------ producer')
cons0=find('// -------------------------------------------------------------- consumers')
roundc=find('for (int round = 0; round * static_cast<int>(gridDim.x) < args.num_tiles; ++round) {', cons0)
prolog=find('// Prologue: block n_blocks-1.', roundc)
loop=find('for (int it = 1; it < n_blocks; ++it) {', prolog)
final=find('const int gl = g + n_blocks - 1;', loop)
epi=find('// ----------------------------------------------------------- epilogue', final)
end=find('if (cw == 0) named_bar_sync(kBarSched0, 256);', epi)
def phase(li):
    if li is None: return 'other'
    if prod0 <= li < cons0: return 'producer'
    if li < cons0: return 'setup'
    if li < roundc: return 'consumer lambdas (softmax etc., inlined)'
    if li < prolog: return 'tile start (coords, Q wait)'
    if li < loop: return 'prologue (first block)'
    if li < final: return 'K/V loop'
    if li < epi: return 'last P.V'
    if li < end: return 'epilogue'
    return 'end'
tot=sum(int(r[isamp] or 0) for r in data)
agg={}
for r in data:
    off=int(r[ia],16)-base; s=int(r[isamp] or 0)
    li,op=loc.get(off,(None,''))
    agg[phase(li)]=agg.get(phase(li),0)+s
for k,v in sorted(agg.items(), key=lambda x:-x[1]):
    print(f"  {100*v/tot:5.1f}%  {k}")
