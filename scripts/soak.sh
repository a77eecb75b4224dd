#!/usr/bin/env bash
# Runs the soak test (tests/soak.rs) for MINUTES against a release build of turnd:
# allocations created, refreshed, relaying, deleted and left to expire in churn, with
# turnd's RSS, open descriptors, allocations and relay ports sampled every few seconds.
# It stops by itself: the load for MINUTES, then at most the allocation lifetime plus
# 10 s for every allocation to expire.
#
#   scripts/soak.sh MINUTES
#
# Tunables (environment): TURND_SOAK_SLOTS (2000), TURND_SOAK_RATE (2000 steps/s),
# TURND_SOAK_LIFETIME (30 s), TURND_SOAK_SAMPLE (5 s), TURND_SOAK_OUT (target/soak).
# The samples go to $TURND_SOAK_OUT/soak-STAMP.csv, the whole output to soak-STAMP.log.
set -euo pipefail
cd "$(dirname "$0")/.."

minutes="${1:-}"
if ! [[ "$minutes" =~ ^[0-9]+$ ]] || [ "$minutes" -lt 1 ]; then
    echo "usage: scripts/soak.sh MINUTES" >&2
    exit 2
fi
out="${TURND_SOAK_OUT:-target/soak}"
mkdir -p "$out"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
export TURND_SOAK_SECONDS=$((minutes * 60))
export TURND_SOAK_SLOTS="${TURND_SOAK_SLOTS:-2000}"
export TURND_SOAK_RATE="${TURND_SOAK_RATE:-2000}"
export TURND_SOAK_LIFETIME="${TURND_SOAK_LIFETIME:-30}"
export TURND_SOAK_SAMPLE="${TURND_SOAK_SAMPLE:-5}"
export TURND_SOAK_CSV="$out/soak-$stamp.csv"

echo "==> soak for $minutes min: slots $TURND_SOAK_SLOTS, rate $TURND_SOAK_RATE/s, lifetime ${TURND_SOAK_LIFETIME}s"
echo "==> samples: $TURND_SOAK_CSV, log: $out/soak-$stamp.log"
cargo test --release --test soak -- --nocapture 2>&1 | tee "$out/soak-$stamp.log"
