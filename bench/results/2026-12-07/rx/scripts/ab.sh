#!/bin/bash
# A/B: 3 interleaved pairs per transport (A B / B A), each run under the bench lock.
cd /work/wt-rx
OUT=/work/wt-rx/bench/results/2026-12-07/rx
export RUST_LOG=warn,tally::run=info
for pair in 1 2 3; do
  for t in grpc http; do
    if [ $((pair % 2)) -eq 1 ]; then arms="base B"; else arms="B base"; fi
    for arm in $arms; do
      echo "$(date -u +%T) start $arm $t $pair $(cut -d' ' -f1-3 /proc/loadavg)"
      flock /work/bench.lock /work/prof/rx-base/tally-bench ingest --runs 1 --transports $t \
        --tally /work/prof/rx-$arm/tally --json $OUT/$arm-$t-$pair.json > /tmp/rx-ab-$arm-$t-$pair.log 2>&1
      echo "$(date -u +%T) done $arm $t $pair rc=$?"
    done
  done
done
