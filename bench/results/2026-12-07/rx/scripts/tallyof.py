from perfsamples import read_samples
import sys, collections
path, pat = sys.argv[1], sys.argv[2]
samples = read_samples(path)
N=len(samples); cnt=collections.Counter(); tot=0
for s in samples:
    if not any(pat in f for f in s): continue
    tot+=1
    u=next((f for f in s if ('tally' in f or 'prost' in f or 'tokio_postgres' in f or 'h2::' in f or 'hyper' in f)), '?')
    cnt[u[:140]]+=1
print(f"{pat}: {100*tot/N:.2f}%")
for k,v in cnt.most_common(int(sys.argv[3]) if len(sys.argv)>3 else 15): print(f"{100*v/N:6.2f}%  {k}")
