import sys, collections
sys.path.insert(0,'/work/wt-cpu/bench/results/2026-12-07/rx/scripts')
from perfsamples import read_samples
s=read_samples(sys.argv[1]); N=len(s); c=collections.Counter()
for x in s: c[x[0][:100] if x else '?']+=1
for k,v in c.most_common(int(sys.argv[2]) if len(sys.argv)>2 else 40): print(f"{100*v/N:6.2f}% {k}")
