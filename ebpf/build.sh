#!/usr/bin/env bash
# Builds the XDP steering program: ebpf/xdp_quic.c -> ebpf/xdp_quic.o (committed).
#
#   ebpf/build.sh          rebuild ebpf/xdp_quic.o in place
#   ebpf/build.sh --check  rebuild into a temporary directory and fail (exit 1) when
#                          the committed object differs from what the source gives
#
# The object is embedded in the Rust crate (ebpf/src/lib.rs), so `cargo build` needs
# no clang. The build is reproducible across checkout directories: it compiles from
# inside ebpf/ with relative paths and maps the directory out of the debug info.
# Identical bytes need the same clang as the committed object: Debian 12's clang 14
# (`apt-get install clang libbpf-dev`), which is what CI installs.
# Needs: clang, libbpf-dev (bpf/bpf_helpers.h), linux-libc-dev.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CLANG="${CLANG:-clang}"

check=0
case "${1:-}" in
"") ;;
--check) check=1 ;;
-h | --help)
	sed -n '2,13p' "${BASH_SOURCE[0]}"
	exit 0
	;;
*)
	echo "build.sh: unknown argument '$1' (use --check or nothing)" >&2
	exit 2
	;;
esac

if ! command -v "$CLANG" >/dev/null 2>&1; then
	echo "build.sh: '$CLANG' not found: install clang and libbpf-dev (Debian: apt-get install clang libbpf-dev)" >&2
	exit 1
fi
if [ ! -e /usr/include/bpf/bpf_helpers.h ]; then
	echo "build.sh: bpf/bpf_helpers.h not found: install libbpf-dev" >&2
	exit 1
fi

# The uapi headers include <asm/types.h>, which lives in the multiarch directory.
multiarch="$(gcc -print-multiarch 2>/dev/null || true)"
[ -n "$multiarch" ] || multiarch="$(uname -m)-linux-gnu"

build() { # $1: output path
	(
		cd "$here"
		"$CLANG" -O2 -g -target bpf \
			-Wall -Werror \
			-I"/usr/include/$multiarch" \
			-ffile-prefix-map="$here"=. \
			-fdebug-compilation-dir=. \
			-c xdp_quic.c -o "$1"
	)
}

if [ "$check" = 0 ]; then
	build "$here/xdp_quic.o"
	echo "built $here/xdp_quic.o with $("$CLANG" --version | head -n1)"
	exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
build "$tmp/xdp_quic.o"
if [ ! -e "$here/xdp_quic.o" ]; then
	echo "build.sh --check: ebpf/xdp_quic.o is missing: run ebpf/build.sh and commit it" >&2
	exit 1
fi
if ! cmp -s "$tmp/xdp_quic.o" "$here/xdp_quic.o"; then
	echo "build.sh --check: ebpf/xdp_quic.o is stale: it differs from what ebpf/xdp_quic.c gives" >&2
	echo "  with $("$CLANG" --version | head -n1)." >&2
	echo "  Run ebpf/build.sh and commit ebpf/xdp_quic.o (with the clang named in build.sh)." >&2
	exit 1
fi
echo "build.sh --check: ebpf/xdp_quic.o is up to date"
