#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ (or the ones named) for SECONDS each, one after another.
#
#   tools/fuzz.sh SECONDS [TARGET...]
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Seeds come from
# tools/fuzz_corpus.py (written to fuzz/corpus/TARGET, which the fuzzer then grows). Each run has
# libFuzzer's -rss_limit_mb (default 512, FUZZ_RSS_MB) and -timeout (10 s per input), so an input
# that makes kairos allocate past the bound or hang is a finding like a panic. Builds without a
# sanitizer (-s none; FUZZ_SANITIZER=address to use ASan) as the crates are safe Rust.
# A summary per target (executions, coverage, findings) goes to fuzz/logs/summary.txt; crashing
# inputs are in fuzz/artifacts/TARGET/: make each a test case in the owning crate's tests/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:?usage: tools/fuzz.sh SECONDS [TARGET...]}
shift
rss=${FUZZ_RSS_MB:-512}
san=${FUZZ_SANITIZER:-none}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
[ -d corpus ] || python3 ../tools/fuzz_corpus.py corpus
cargo +nightly fuzz build -s "$san"
mkdir -p logs
echo "# $(date -u +%FT%TZ) tools/fuzz.sh $secs ${targets[*]}" >> logs/summary.txt
status=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    echo "== $t ($secs s)"
    touch "logs/$t.start"
    cmd=(cargo +nightly fuzz run -s "$san" "$t" "corpus/$t" -- -max_total_time="$secs" -rss_limit_mb="$rss"
         -timeout=10 -print_final_stats=1)
    if ! "${cmd[@]}" > "logs/$t.log" 2>&1; then
        status=1
    fi
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "logs/$t.log" | grep -o '[0-9]*$' || echo '?')
    cov=$(grep -o 'cov: [0-9]*' "logs/$t.log" | tail -1 | grep -o '[0-9]*' || echo '?')
    ft=$(grep -o 'ft: [0-9]*' "logs/$t.log" | tail -1 | grep -o '[0-9]*' || echo '?')
    found=$(find "artifacts/$t" -type f -newer "logs/$t.start" | wc -l)
    line="$t: ${execs} executions, cov ${cov}, ft ${ft}, ${found} new findings in artifacts/$t; ${cmd[*]}"
    echo "$line" | tee -a logs/summary.txt
done
exit $status
