from perfsamples import read_samples
import sys, collections
path, pat = sys.argv[1], sys.argv[2]
depth = int(sys.argv[3]) if len(sys.argv) > 3 else 1
samples = read_samples(path)
N=len(samples); cnt=collections.Counter(); tot=0
for s in samples:
    idx=[i for i,f in enumerate(s) if pat in f]
    if not idx: continue
    tot+=1
    i=max(idx)  # outermost occurrence
    child = s[i-depth] if i-depth>=0 else '(self)'
    cnt[child[:150]]+=1
print(f"{pat}: {100*tot/N:.2f}% of {N}")
for k,v in cnt.most_common(25): print(f"{100*v/N:6.2f}%  {k}")
