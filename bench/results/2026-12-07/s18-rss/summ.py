import json,sys,glob,statistics,os,re
d=sys.argv[1]
rows={}
for f in sorted(glob.glob(os.path.join(d,'*.json'))):
    m=re.match(r'(\w+)-(grpc|http)-(\d+)\.json',os.path.basename(f))
    if not m: continue
    arm,t,p=m.groups()
    j=json.load(open(f)); x=j['transports'][t]
    rows.setdefault((t,arm),[]).append((int(p),x['ratio_to_ceiling'],x['cpu_seconds_per_100k_records'],x['db_cpu_ratio_to_ceiling'],x['peak_rss_mib'],x['ack_latency_ms']['at_50_percent']['p50'],x['ack_latency_ms']['at_50_percent']['p99'],x['machine_busy_cores']))
names=['ratio','coll s/100k','db/ceil','rss','ack50 p50','ack50 p99','busy']
for (t,arm),v in sorted(rows.items()):
    v.sort()
    print(f"{t} {arm} n={len(v)} " + "  ".join(f"{n}={statistics.median([r[i+1] for r in v]):.2f} [{' '.join(f'{r[i+1]:.2f}' for r in v)}]" for i,n in enumerate(names)))
