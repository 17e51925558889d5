#!/usr/bin/env bash
# Two network namespaces joined by a multi-queue veth pair, for trying xdp-quic.
#
#   scripts/testbed.sh up   [--queues N] [--name PREFIX]
#   scripts/testbed.sh down [--name PREFIX]
#
# With the default PREFIX "xq":
#   namespace xq-server: interface xq-srv, 10.200.0.1/24 and fd00:200::1/64
#   namespace xq-client: interface xq-cli, 10.200.0.2/24 and fd00:200::2/64
# N rx and N tx queues on each side (default 4). veth has no RSS: a packet arrives on
# the rx queue whose number is the tx queue the sender used.
#
# Use it (as root):
#   xdp-quic attach xq-srv --netns xq-server --port 4433
#   ip netns exec xq-client ping -c1 10.200.0.1
#   xdp-quic stats xq-srv --netns xq-server
# `up` fails if the namespaces exist; `down` removes everything `up` made (and the
# xdp-quic pins of the server interface, if any) and is quiet about what is missing.
set -euo pipefail

usage() { sed -n '2,18p' "$0" >&2; exit 2; }

cmd="${1:-}"; [ -n "$cmd" ] || usage; shift
queues=4
prefix=xq
while [ $# -gt 0 ]; do
	case "$1" in
	--queues) [ $# -ge 2 ] || { echo "testbed.sh: --queues needs a number" >&2; usage; }; queues=$2; shift 2 ;;
	--name) [ $# -ge 2 ] || { echo "testbed.sh: --name needs a prefix" >&2; usage; }; prefix=$2; shift 2 ;;
	*) echo "testbed.sh: unknown argument '$1'" >&2; usage ;;
	esac
done
case "$queues" in ''|*[!0-9]*) echo "testbed.sh: --queues must be a number" >&2; exit 2 ;; esac
# Decimal whatever its leading zeros (iproute2 would read 010 as octal), and short enough
# for the shell's arithmetic.
[ "${#queues}" -le 3 ] || { echo "testbed.sh: --queues must be 1..64" >&2; exit 2; }
queues=$((10#$queues))
if [ "$queues" -lt 1 ] || [ "$queues" -gt 64 ]; then
	echo "testbed.sh: --queues must be 1..64" >&2
	exit 2
fi
case "$prefix" in ''|*[!a-zA-Z0-9_]*) echo "testbed.sh: --name must be letters, digits, _" >&2; exit 2 ;; esac
[ "${#prefix}" -le 10 ] || { echo "testbed.sh: --name must be at most 10 characters" >&2; exit 2; }

srv_ns="$prefix-server"; cli_ns="$prefix-client"
srv_if="$prefix-srv"; cli_if="$prefix-cli"
srv4=10.200.0.1; cli4=10.200.0.2; srv6=fd00:200::1; cli6=fd00:200::2

if [ "$(id -u)" != 0 ]; then
	echo "testbed.sh: needs root (ip netns, veth)" >&2
	exit 1
fi

# Removes the namespaces named, their processes, and, with the server's, the pins of its
# interface.
down() {
	local ns pids
	for ns in "$@"; do
		# A process left in the namespace (a server started in it) would keep it, its veth
		# and its XDP program alive after the name is gone.
		pids=$(ip netns pids "$ns" 2>/dev/null || true)
		if [ -n "$pids" ]; then
			echo "testbed.sh: stopping the processes left in $ns: $(echo "$pids" | tr '\n' ' ')" >&2
			# shellcheck disable=SC2086 # one pid per word
			kill $pids 2>/dev/null || true
			for _ in 1 2 3 4 5 6 7 8 9 10; do
				[ -z "$(ip netns pids "$ns" 2>/dev/null)" ] && break
				sleep 0.5
			done
			# shellcheck disable=SC2046 # one pid per word
			kill -9 $(ip netns pids "$ns" 2>/dev/null) 2>/dev/null || true
		fi
		ip netns del "$ns" 2>/dev/null || true
	done
	case " $* " in *" $srv_ns "*) ;; *) return 0 ;; esac
	# Under the lock `xdp-quic attach` and `detach` take on the pin root.
	if [ -d /sys/fs/bpf/xdp-quic ] && command -v flock >/dev/null 2>&1; then
		# shellcheck disable=SC2016 # $1 is the inner shell's
		flock /sys/fs/bpf/xdp-quic sh -c 'rm -rf "$1"; rmdir /sys/fs/bpf/xdp-quic 2>/dev/null' \
			sh "/sys/fs/bpf/xdp-quic/$srv_if" 2>/dev/null || true
	else
		rm -rf "/sys/fs/bpf/xdp-quic/$srv_if" 2>/dev/null || true
		rmdir /sys/fs/bpf/xdp-quic 2>/dev/null || true
	fi
}

case "$cmd" in
up)
	for ns in "$srv_ns" "$cli_ns"; do
		# The exact name: xq-server-old is not xq-server.
		if ip netns list | cut -d' ' -f1 | grep -xF -- "$ns" >/dev/null; then
			echo "testbed.sh: namespace $ns exists: run 'scripts/testbed.sh down --name $prefix' first" >&2
			exit 1
		fi
	done
	# A failure removes only what this run made: a namespace another run made meanwhile
	# (`ip netns add` then fails) is not ours to remove.
	made=()
	trap 'down ${made[@]+"${made[@]}"}; echo "testbed.sh: failed; removed what was made" >&2' ERR
	trap 'down ${made[@]+"${made[@]}"}; echo "testbed.sh: interrupted; removed what was made" >&2; exit 130' INT
	trap 'down ${made[@]+"${made[@]}"}; echo "testbed.sh: interrupted; removed what was made" >&2; exit 143' TERM
	ip netns add "$srv_ns"
	made+=("$srv_ns")
	ip netns add "$cli_ns"
	made+=("$cli_ns")
	ip link add "$srv_if" netns "$srv_ns" numrxqueues "$queues" numtxqueues "$queues" type veth \
		peer name "$cli_if" netns "$cli_ns" numrxqueues "$queues" numtxqueues "$queues"
	ip -n "$srv_ns" addr add "$srv4/24" dev "$srv_if"
	ip -n "$cli_ns" addr add "$cli4/24" dev "$cli_if"
	ip -n "$srv_ns" addr add "$srv6/64" dev "$srv_if" nodad
	ip -n "$cli_ns" addr add "$cli6/64" dev "$cli_if" nodad
	for ns in "$srv_ns" "$cli_ns"; do ip -n "$ns" link set lo up; done
	ip -n "$srv_ns" link set "$srv_if" up
	ip -n "$cli_ns" link set "$cli_if" up
	# veth hands locally sent UDP over with a partial checksum (offload); the server's AF_XDP
	# reader sees those bytes, so the client's end computes checksums in full. The server's
	# end keeps its offloads, as a real NIC would (checksum offload is what lets the kernel's
	# UDP path do GSO), as the tests' and the bench's testbeds do.
	if command -v ethtool >/dev/null 2>&1; then
		ip netns exec "$cli_ns" ethtool -K "$cli_if" tx off >/dev/null
	else
		echo "testbed.sh: ethtool missing: TX checksum offload stays on (serve AF_XDP with --skip-checksum)" >&2
	fi
	trap - ERR INT TERM
	echo "server: netns $srv_ns, $srv_if, $srv4 $srv6"
	echo "client: netns $cli_ns, $cli_if, $cli4 $cli6"
	echo "queues: $queues"
	;;
down) down "$srv_ns" "$cli_ns" ;;
*) usage ;;
esac
