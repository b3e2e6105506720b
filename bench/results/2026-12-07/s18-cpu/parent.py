import sys, collections
sys.path.insert(0,'/work/wt-cpu/bench/results/2026-12-07/rx/scripts')
from perfsamples import read_samples
s=read_samples(sys.argv[1]); pat=sys.argv[2]; d=int(sys.argv[3]) if len(sys.argv)>3 else 1
N=len(s); c=collections.Counter()
for x in s:
    if x and pat in x[0]:
        c[' <- '.join(f[:70] for f in x[1:1+d])]+=1
for k,v in c.most_common(15): print(f"{100*v/N:6.2f}% {k}")
