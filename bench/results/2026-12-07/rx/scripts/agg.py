from perfsamples import read_samples
import sys, re, collections
path = sys.argv[1]
targets = sys.argv[2:]
samples = read_samples(path)
N = len(samples)
print("samples", N)
# inclusive shares for key frames
keys = {
 'decode (ExportDecoder::decode)': 'ExportDecoder<S> as tonic::codec::Decoder>::decode',
 'estimate::scan': 'estimate::scan',
 'prost merge (in decode)': 'prost::encoding::message::merge_repeated',
 'consume_traces': 'consume_traces',
 'consume_logs': 'consume_logs',
 'redact': 'redact',
 'classify': 'classify',
 'tokens': 'TokenProcessor',
 'writer_task': 'writer_task',
 'commit_batch': 'commit_batch',
 'PreparedLinks::new': 'PreparedLinks::new',
 'PreparedLinks::links': 'PreparedLinks>::links',
 'jsonb_text_split': 'jsonb_text_split',
 'append_event_v3': 'append_event_v3',
 'row_hash': 'row_hash',
 'personal_digest_of': 'personal_digest_of',
 'sha256 compress': 'sha256',
 'copy::activity': 'copy::activity',
 'copy::token_row': 'copy::token_row',
 'copy_rows': 'copy_rows',
 'json_object (copy)': 'copy::json_object',
 'PersonalKeys::of': 'PersonalKeys',
 'chain job': 'ChainJob',
 'tokio_postgres': 'tokio_postgres',
 'hyper': 'hyper::',
 'h2': 'h2::',
 'malloc': '_mi_page_malloc',
 'mi_free': 'mi_free',
 'drop_in_place': 'drop_in_place',
 'kernel': '[unknown]',
 'format_inner': 'format_inner',
 'sip hasher': 'sip::Hasher',
 'memcmp': '__memcmp',
 'memmove': '__memmove',
 'BTreeMap': 'btree',
 'axum http receive': 'tally_receiver::http',
 'serde_json': 'serde_json',
}
for t in targets: keys[t] = t
for name, pat in keys.items():
    c = sum(1 for s in samples if any(pat in f for f in s))
    print(f"{100*c/N:6.2f}%  {name}")
