#!/usr/bin/env bash
# Runs the cargo-fuzz targets of fuzz/ on STABLE Rust for a while each; fails on any crash,
# assertion failure, timeout or out-of-memory.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# SECONDS_PER_TARGET defaults to $FUZZ_SECONDS, else 20 (the CI setting). TARGETs default to
# every target of fuzz/Cargo.toml. Installs cargo-fuzz $CARGO_FUZZ_VERSION (pinned, --locked)
# when missing.
#
# Environment:
#   FUZZ_SECONDS        seconds per target when not given as the first argument (default 20)
#   FUZZ_GROW_CORPUS=1  write new inputs into the committed fuzz/corpus/<target>/ (to grow it
#                       before `cargo fuzz cmin`); by default they go to a scratch directory
#                       and the committed corpus is only read
#   FUZZ_JOBS           parallel fuzzing processes per target (default 1)
#   FUZZ_ARGS           extra libFuzzer flags, e.g. "-max_len=2048"
#
# Stable Rust works because of `--sanitizer none`: without it cargo-fuzz passes
# `-Zsanitizer=address`, a nightly-only flag. Everything else cargo-fuzz puts in RUSTFLAGS
# (`-Cpasses=sancov-module`, `-Cllvm-args=-sanitizer-coverage-*`, `--cfg fuzzing`,
# `-Cdebug-assertions` from `-a`) is stable. Crashing inputs are kept in
# fuzz/artifacts/<target>/; a known crash belongs in fuzz/regressions/<target>/, which every
# run replays first.
set -euo pipefail

readonly CARGO_FUZZ_VERSION="${CARGO_FUZZ_VERSION:-0.13.2}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

seconds="${1:-${FUZZ_SECONDS:-20}}"
if [[ $# -gt 0 ]]; then
    shift
fi
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
    echo "fuzz.sh: seconds per target must be a positive integer, got '$seconds'" >&2
    exit 2
fi
jobs="${FUZZ_JOBS:-1}"
read -r -a extra_args <<<"${FUZZ_ARGS:-}"

log() { printf '\n=== fuzz: %s\n' "$*" >&2; }

# --- cargo-fuzz, pinned -------------------------------------------------------------------
installed=""
if cargo fuzz --version >/dev/null 2>&1; then
    installed="$(cargo fuzz --version | awk '{print $2}')"
fi
if [[ "$installed" != "$CARGO_FUZZ_VERSION" ]]; then
    log "installing cargo-fuzz $CARGO_FUZZ_VERSION (found: ${installed:-none})"
    cargo install cargo-fuzz --version "=$CARGO_FUZZ_VERSION" --locked --force
fi

# --- targets --------------------------------------------------------------------------------
# The fuzz build must not share a target directory with the workspace: its RUSTFLAGS differ,
# so sharing would rebuild everything on both sides.
unset CARGO_TARGET_DIR
fuzz_flags=(--sanitizer none --debug-assertions --target-dir "$root/fuzz/target")

if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi
if [[ ${#targets[@]} -eq 0 ]]; then
    echo "fuzz.sh: no fuzz targets" >&2
    exit 2
fi

log "building ${targets[*]} (stable, no sanitizer, debug assertions)"
cargo fuzz build "${fuzz_flags[@]}"

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

failed=()
summary=()
for t in "${targets[@]}"; do
    corpus="fuzz/corpus/$t"
    mkdir -p "$corpus" "fuzz/artifacts/$t"
    # The first directory receives new inputs; the others are only read.
    if [[ "${FUZZ_GROW_CORPUS:-0}" == 1 ]]; then
        dirs=("$corpus")
    else
        mkdir -p "$scratch/$t"
        dirs=("$scratch/$t" "$corpus")
    fi
    if [[ -d "fuzz/regressions/$t" ]]; then
        dirs+=("fuzz/regressions/$t")
    fi
    libfuzzer=(
        "-max_total_time=$seconds"
        -timeout=10
        -rss_limit_mb=2048
        -print_final_stats=1
    )
    if [[ "$jobs" -gt 1 ]]; then
        libfuzzer+=("-jobs=$jobs" "-workers=$jobs")
    fi
    libfuzzer+=("${extra_args[@]}")

    log "$t: ${seconds}s over ${dirs[*]}"
    out="$scratch/$t.log"
    # Full log to $out; the console gets progress, final stats and any crash report.
    set +e
    cargo fuzz run "${fuzz_flags[@]}" "$t" "${dirs[@]}" -- "${libfuzzer[@]}" 2>&1 |
        tee "$out" |
        grep --line-buffered -E '(INITED|DONE|pulse|^stat::|^Done |^==[0-9]+==|panicked|^SUMMARY|Failing input|Test unit written)'
    status="${PIPESTATUS[0]}"
    set -e
    execs="$(awk '/stat::number_of_executed_units/ {s += $2} END {print s + 0}' "$out")"
    rate="$(awk '/stat::average_exec_per_sec/ {s += $2} END {print s + 0}' "$out")"
    files="$(find "$corpus" -type f | wc -l)"
    if [[ "$status" -ne 0 ]]; then
        failed+=("$t")
        summary+=("$(printf '%-12s FAILED (exit %s): see fuzz/artifacts/%s/' "$t" "$status" "$t")")
        tail -n 60 "$out" >&2
    else
        summary+=("$(printf '%-12s ok  %12s execs  %9s execs/s  corpus %s files' "$t" "$execs" "$rate" "$files")")
    fi
done

log "summary (${seconds}s per target)"
printf '%s\n' "${summary[@]}" >&2
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzz.sh: crashes in: ${failed[*]}" >&2
    exit 1
fi
