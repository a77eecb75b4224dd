#!/usr/bin/env bash
# Fuzzes turnd with libFuzzer (the crate in fuzz/, see docs/robustness.md): every
# target, or the ones named, for SECONDS each, one after the other.
#
#   scripts/fuzz.sh SECONDS [TARGET...]     # targets: stun_decode channel_data framer server proxy_header client_hello
#
# Needs the nightly toolchain; without it the script says so and exits 0. It builds
# with the flags cargo-fuzz 0.13 uses (SanitizerCoverage, `--cfg fuzzing`), so no
# cargo-fuzz install is needed, plus debug assertions and overflow checks; set
# FUZZ_ASAN=1 to add AddressSanitizer as `cargo fuzz` does by default (turnd's parsers
# are safe Rust, so ASAN mostly costs speed). `cargo +nightly fuzz run TARGET` works
# on the same crate.
#
# The corpus grows in fuzz/corpus/TARGET (not committed), starting from the committed
# seeds in fuzz/seeds/TARGET; crashes land in fuzz/artifacts/TARGET/. Exits non-zero
# if any target crashes. Prints executions and CPU seconds per target.
set -uo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -lt 1 ]; then
    echo "usage: scripts/fuzz.sh SECONDS [TARGET...]" >&2
    exit 2
fi
shift
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(stun_decode channel_data framer server proxy_header client_hello)

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    echo "==> fuzz: no nightly toolchain (rustup toolchain install nightly); skipped"
    exit 0
fi
host="$(rustc +nightly -vV | sed -n 's/^host: //p')"
flags="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4"
flags+=" -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table"
flags+=" -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing"
flags+=" -Cdebug-assertions -Coverflow-checks"
[ "${FUZZ_ASAN:-0}" = 1 ] && flags+=" -Zsanitizer=address"
target_dir="${FUZZ_TARGET_DIR:-fuzz/target/sancov}"

echo "==> fuzz: building ${targets[*]} (nightly, $host)"
build_start=$(date +%s)
# --target keeps the flags off build scripts and proc macros, as cargo-fuzz does.
if ! RUSTFLAGS="$flags" cargo +nightly build --quiet --release --manifest-path fuzz/Cargo.toml \
    --target "$host" --target-dir "$target_dir" $(printf -- '--bin %s ' "${targets[@]}"); then
    echo "==> fuzz: build FAILED"
    exit 1
fi
echo "==> fuzz: built in $(( $(date +%s) - build_start )) s"

failed=()
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    log="fuzz/artifacts/$t/last-run.log"
    # -timeout: one input may take at most 10 s; -rss_limit_mb: a leak is a crash.
    TIMEFORMAT="%R %U %S"
    { time "$target_dir/$host/release/$t" "fuzz/corpus/$t" "fuzz/seeds/$t" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="fuzz/artifacts/$t/" > "$log" 2>&1; } 2> "fuzz/artifacts/$t/time"
    status=$?
    read -r real user sys < "fuzz/artifacts/$t/time"
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
    corpus=$(find "fuzz/corpus/$t" -type f | wc -l)
    echo "==> fuzz $t: ${execs:-?} executions in ${real}s (CPU ${user}s user + ${sys}s sys), peak RSS ${rss:-?} MB, corpus $corpus, exit $status"
    if [ "$status" -ne 0 ]; then
        failed+=("$t")
        grep -E "panicked|ERROR: libFuzzer|SUMMARY|Test unit written" "$log" | head -20
    fi
done
if [ ${#failed[@]} -ne 0 ]; then
    echo "==> fuzz: CRASHED: ${failed[*]} (inputs in fuzz/artifacts/)"
    exit 1
fi
echo "==> fuzz: no crashes"
