"""Medians (and per-pair values) of the A/B runs in this folder."""
import json, os, statistics as st
D = os.path.dirname(os.path.abspath(__file__))
for t in ['grpc', 'http']:
    for arm in ['A', 'B']:
        rows = []
        for p in range(1, 10):
            f = f'{D}/{arm}-{t}-{p}.json'
            if not os.path.exists(f):
                continue
            d = json.load(open(f)); x = d['transports'][t]
            rows.append(dict(
                pair=p,
                cpu=x['cpu_seconds_per_100k_records'],
                lg=x['load_generator_cpu_seconds_per_100k_records'],
                ratio=x['ratio_to_ceiling'],
                rss=x['peak_rss_mib'],
                rps=x['records_per_second'],
                ceil=d['ceiling_rows_per_second'],
                db=x['db_cpu_ratio_to_ceiling'],
                a50=x['ack_latency_ms']['at_50_percent']['p50'],
                a99=x['ack_latency_ms']['at_50_percent']['p99'],
                batch=x['batch_rows_mean']))
        if not rows:
            continue
        med = lambda k: st.median(r[k] for r in rows)
        per = lambda k, f='{:.2f}': ' '.join(f.format(r[k]) for r in rows)
        for r in rows:
            r['norm'] = r['cpu'] / r['lg']
        norm = med('norm')
        print(f"{t} {arm} pairs {per('pair', '{}')}: collector cpu s/100k {med('cpu'):.2f} ({per('cpu')})"
              f" | / load generator's {norm:.2f} ({per('norm')})"
              f" | ratio {med('ratio'):.2f} ({per('ratio')}) | peak rss {med('rss'):.1f} ({per('rss', '{:.1f}')})"
              f" | rec/s {med('rps'):.0f} ceiling {med('ceil'):.0f} | db cpu x {med('db'):.2f}"
              f" | ack 50% p50/p99 {med('a50'):.1f}/{med('a99'):.1f} | batch rows {med('batch'):.0f}")
