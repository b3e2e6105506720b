import re,statistics,sys,datetime
def load(path):
    rows=[]
    for l in open(path):
        if 'batch committed' not in l: continue
        ts=datetime.datetime.fromisoformat(l.split()[0].rstrip('Z'))
        d={k:float(v) for k,v in re.findall(r'(\w+)=([\d.]+)',l)}
        d['t']=ts
        rows.append(d)
    return rows
keys=['rows','queued_ms','elapsed_ms','begin_ms','share_ms','stage_tokens_ms','activity_ms','turn_ms','tokens_ms','commit_ms']
for path in sys.argv[1:]:
    rows=load(path)
    if not rows: print(path,'no batches'); continue
    t0=rows[0]['t']
    phases={'full':(0,10),'50%':(10.3,15),'90%':(15.3,20)}
    print(path)
    for ph,(a,b) in phases.items():
        sel=[r for r in rows if a<=(r['t']-t0).total_seconds()<b]
        out=[f"{ph}: n={len(sel)}"]
        for k in keys:
            v=[r[k] for r in sel if k in r]
            if v: out.append(f"{k.replace('_ms','')}={statistics.median(v):.1f}")
        print('  '+' '.join(out))
