import json, glob, statistics, os
D=os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
for t in ['grpc','http']:
    for arm in ['base','B']:
        rows=[]
        for p in [1,2,3]:
            f=f'{D}/{arm}-{t}-{p}.json'
            if not os.path.exists(f): continue
            x=json.load(open(f))['transports'][t]
            rows.append((x['cpu_seconds_per_100k_records'],x['ratio_to_ceiling'],x['peak_rss_mib'],x['records_per_second'],x['db_cpu_ratio_to_ceiling'],x['ack_latency_ms']['at_50_percent']['p50'],x['ack_latency_ms']['at_50_percent']['p99']))
        if not rows: continue
        med=[statistics.median(c) for c in zip(*rows)]
        print(f"{t:4} {arm:4} n={len(rows)} cpu/100k {med[0]:.2f} [{' '.join(f'{r[0]:.2f}' for r in rows)}]  ratio {med[1]:.2f} [{' '.join(f'{r[1]:.2f}' for r in rows)}]  rss {med[2]:.1f} [{' '.join(f'{r[2]:.1f}' for r in rows)}]  rec/s {med[3]:.0f}  dbcpu {med[4]:.2f}  ack50 {med[5]:.1f}/{med[6]:.1f}")
