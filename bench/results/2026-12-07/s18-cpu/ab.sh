#!/bin/bash
# A/B: 3 interleaved pairs per transport (A B / B A), each run under the bench lock.
# A = main's release build (6bceb41) as /work/prof/cpu-A, B = branch cpu as /work/prof/cpu-B;
# the same tally-bench (main's) drives both.
OUT=/work/wt-cpu/bench/results/2026-12-07/s18-cpu
export RUST_LOG=warn,tally::run=info
for pair in ${PAIRS:-1 2 3}; do
  for t in grpc http; do
    if [ $((pair % 2)) -eq 1 ]; then arms="A B"; else arms="B A"; fi
    for arm in $arms; do
      echo "$(date -u +%T) start $arm $t $pair $(cut -d' ' -f1-3 /proc/loadavg)"
      flock /work/bench.lock /work/prof/cpu-bench-A ingest --runs 1 --transports $t \
        --tally /work/prof/cpu-$arm --json $OUT/$arm-$t-$pair.json > /tmp/cpu/ab-$arm-$t-$pair.log 2>&1
      echo "$(date -u +%T) done $arm $t $pair rc=$? $(cut -d' ' -f1-3 /proc/loadavg)"
    done
  done
done
