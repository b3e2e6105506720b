from perfsamples import read_samples
import sys, collections
path=sys.argv[1]
samples = read_samples(path)
order=[
 ('estimate::scan','estimate::scan'),
 ('prost decode','ExportDecoder<S> as tonic::codec::Decoder>::decode'),
 ('pipeline: redact','redact'),
 ('pipeline: classify','classify'),
 ('pipeline: tokens','TokenProcessor'),
 ('pipeline: other consume','consume_'),
 ('writer: PreparedLinks::new','PreparedLinks::new'),
 ('writer: PreparedLinks::links','PreparedLinks>::links'),
 ('writer: copy encode','copy::activity_row'),
 ('writer: count_groups','count_groups'),
 ('writer: other insert_rows','activity::insert_rows'),
 ('writer: tokens','postgres::tokens'),
 ('writer: trace_identities','trace_identities'),
 ('writer: other commit_batch','commit_batch'),
 ('writer: other writer_task','writer_task'),
 ('drop of request','drop_in_place<opentelemetry_proto'),
 ('grpc/h2 other','h2::'),
 ('tokio_postgres','tokio_postgres'),
 ('tokio runtime park/epoll','park'),
]
cnt=collections.Counter()
other=collections.Counter()
for s in samples:
    for name,pat in order:
        if any(pat in f for f in s): cnt[name]+=1; break
    else:
        cnt['other']+=1; other[s[-1][:80]+' <- '+ (s[0][:60])]+=1
N=len(samples)
for name,_ in order+[('other','')]: print(f"{100*cnt[name]/N:6.2f}%  {name}")
if '-v' in sys.argv:
  for k,v in other.most_common(15): print(v,k)
