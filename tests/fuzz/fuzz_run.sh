# Shared by the run_*fuzzers.sh scripts (sourced): run NAME SEEDS [MAX_LEN] runs $work/bin/NAME for $seconds seconds
# on a corpus seeded from SEEDS in $work/NAME (inputs of at most MAX_LEN bytes, default 16384), prints its run count
# and final stats, and sets status=1 when it fails.
status=0
run() {
  local name="$1" seeds="$2" max_len="${3:-16384}"
  local dir="$work/$name"
  mkdir -p "$dir/corpus"
  cp -n "$seeds"/* "$dir/corpus/" 2>/dev/null || true
  echo "running $name for ${seconds}s"
  if (cd "$dir" && "$work/bin/$name" -max_total_time="$seconds" -max_len="$max_len" -timeout=10 -rss_limit_mb=4096 \
        -print_final_stats=1 corpus > "$dir/log.txt" 2>&1); then
    echo "$name: $(grep -E '^Done [0-9]+ runs' "$dir/log.txt" || true)"
    grep -E 'stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb' "$dir/log.txt" || true
  else
    echo "$name: FAILED (see $dir/log.txt)"
    tail -40 "$dir/log.txt"
    status=1
  fi
}
