#!/usr/bin/env bash
# Measures the XDP shield under a flood: runs the on-the-wire test
# tokenless_initial_flood_with_and_without_the_shield (control/tests/xdp_floods.rs) RUNS times
# and prints, for each run, its figures with the shield off and on: the kernel's drops at the
# AF_XDP sockets (fill ring empty, RX ring full), the packets the workers received, the
# workers' CPU and the machine's softirq time per flood packet, the 8 quinn clients'
# handshake times. The test asserts that every client connects both times; the figures are
# printed, never compared with thresholds. See docs/XDP.md ("Measured: the shield under a
# flood").
set -euo pipefail

usage() {
    cat <<EOF
Usage: shield-flood.sh [RUNS] [--release]

RUNS       how many runs (default 3); each floods a server twice, shield off then on
--release  build the test with the release profile (default: the test profile, whose
           dependencies are optimized and the workspace is not)

Needs root (network namespaces, XDP, AF_XDP, a raw socket); CI=1 is set, so a missing
privilege fails instead of skipping.
EOF
}

runs=3
profile=()
for a in "$@"; do
    case "$a" in
    -h | --help) usage; exit 0 ;;
    --release) profile=(--release) ;;
    '' | *[!0-9]*) usage >&2; exit 2 ;;
    *) runs=$a ;;
    esac
done
[ "$runs" -ge 1 ] || { usage >&2; exit 2; }

cd "$(dirname "${BASH_SOURCE[0]}")/.."
test=tokenless_initial_flood_with_and_without_the_shield
cmd=(cargo test "${profile[@]}" -p xdp-quic-control --test xdp_floods "$test" -- --exact --nocapture)
echo "# $(date -u +%FT%TZ); $(nproc) CPUs; kernel $(uname -r); git $(git rev-parse --short HEAD)"
echo "# CI=1 ${cmd[*]}"
cargo test "${profile[@]}" -p xdp-quic-control --test xdp_floods --no-run
for i in $(seq 1 "$runs"); do
    echo "## run $i of $runs; load average $(cut -d' ' -f1-3 /proc/loadavg)"
    out=$(CI=1 "${cmd[@]}" 2>&1) || { printf '%s\n' "$out" >&2; exit 1; }
    printf '%s\n' "$out" | grep -E '^(  shield |[0-9]+ tokenless)'
done
