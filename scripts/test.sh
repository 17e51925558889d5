#!/usr/bin/env bash
# The project's test command (README.md): installs what the tests need, then runs them all.
#
#   1. Debian packages (scripts/setup.sh);
#   2. the committed XDP object matches its source (ebpf/build.sh --check);
#   3. formatting (cargo fmt, shellcheck);
#   4. every Rust test of the workspace (the XDP, AF_XDP and netns tests need root: with CI
#      set, a missing privilege fails them instead of skipping);
#   5. the NIC tuning scripts' tests (shellcheck, fake NIC, veth);
#   6. the benchmarks, briefly: every workload on every server produces numbers and intact
#      data (the main bench, then the HTTP/3 one);
#   7. the fuzz crate's own tests (fuzz/ is a workspace of its own, which step 4 does not
#      reach), then a short fuzz run: every cargo-fuzz target of fuzz/ for 20 s over the
#      committed corpus (stable Rust; installs cargo-fuzz, pinned, when missing).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup.sh
ebpf/build.sh --check
shellcheck scripts/*.sh scripts/lib/*.sh scripts/tests/*.sh .ci/run ebpf/build.sh
cargo fmt --all --check
cargo test --workspace --all-targets
bash scripts/tests/nic_scripts_test.sh
cargo run -q -p xdp-quic-bench -- --quick
# The paced client and the async servers' task-per-connection application.
cargo run -q -p xdp-quic-bench -- --quick --servers udp,async-tpc --only ingest --ingest-rate 50000 --app-tasks connection
cargo run -q -p xdp-quic-bench --bin xdp-quic-h3-bench -- --quick
cargo test --manifest-path fuzz/Cargo.toml --target-dir fuzz/target --lib
scripts/fuzz.sh 20
