#!/bin/bash
# usage: prof.sh BIN TRANSPORT TAG
BIN=$1; T=$2; TAG=$3
export RUST_LOG=warn,tally::run=info
flock /work/bench.lock /work/prof/cpu-bench-A ingest --runs 1 --duration 20 --transports $T --tally $BIN --json /tmp/cpu/prof-$TAG.json > /tmp/cpu/prof-$TAG.log 2>&1 &
BPID=$!
# wait for the collector
for i in $(seq 1 1200); do
  P=$(pgrep -f "^$BIN " | head -1)
  [ -n "$P" ] && break
  sleep 0.5
done
echo "collector pid $P at $(date -u +%T)"
sleep 4
perf record -F 499 -g --call-graph dwarf,16384 -p "$P" -o /tmp/cpu/$TAG.data -- sleep 12 2>&1 | tail -2
wait $BPID
echo "bench rc=$?"
perf script -i /tmp/cpu/$TAG.data -F comm,tid,ip,sym --no-inline > /tmp/cpu/$TAG.txt 2>/dev/null
