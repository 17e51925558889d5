#!/usr/bin/env bash
# Installs the Debian packages the tests and the XDP tooling need (idempotent; fast when
# everything is there). Run as root. The Rust toolchain (1.95) is expected on PATH.
#
#   clang, llvm, libbpf-dev  rebuild and check the committed XDP object (ebpf/build.sh)
#   iproute2, iputils-ping   network namespaces, veth pairs, traffic checks in the tests
#   ethtool, shellcheck      the NIC tuning scripts and their tests
#   util-linux               nsenter, mount (bpffs)
#   python3, python3-pip     JSON checks in the script tests; pip for aioquic
#   g++                      libFuzzer (the cargo-fuzz targets, scripts/fuzz.sh)
#   ngtcp2-client            gtlsclient: ngtcp2's HTTP/3 client, a second independent HTTP/3 peer
#   aioquic (PyPI)           the independent QUIC peer of the interop tests
set -euo pipefail

install_aioquic() {
	python3 -c 'import aioquic' 2>/dev/null && return 0
	echo "setup.sh: installing aioquic (PyPI)" >&2
	local pip=(python3 -m pip install --quiet --root-user-action=ignore)
	"${pip[@]}" 'aioquic==1.7.2' 2>/dev/null && return 0
	# Debian's own python3 is "externally managed" (PEP 668) and refuses the install above;
	# aioquic is only a test peer, so it goes beside the system's packages there.
	echo "setup.sh: retrying with --break-system-packages (an externally managed python3)" >&2
	"${pip[@]}" --break-system-packages 'aioquic==1.7.2'
}

# The Rust toolchain's parts the tests call (rustup cannot download them where crates.io is
# the only network): say so at once rather than fail later unclearly.
for tool in cargo rustfmt; do
	command -v "$tool" >/dev/null 2>&1 || {
		echo "setup.sh: $tool not found on PATH: install Rust 1.95 with rustup's default profile (rustc, cargo, rustfmt)" >&2
		exit 1
	}
done

packages=(clang llvm libbpf-dev iproute2 iputils-ping ethtool shellcheck util-linux python3 python3-pip g++ ngtcp2-client)
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
	install_aioquic
	exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
	echo "setup.sh: missing packages (${missing[*]}); run as root to install them" >&2
	exit 1
fi
echo "setup.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
install_aioquic
