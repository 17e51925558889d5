#!/usr/bin/env bash
# Installs the Debian packages the tests and the XDP tooling need (idempotent; fast when
# everything is there). Run as root. The Rust toolchain (1.95) is expected on PATH.
#
#   clang, llvm, libbpf-dev  rebuild and check the committed XDP object (ebpf/build.sh)
#   iproute2, iputils-ping   network namespaces, veth pairs, traffic checks in the tests
#   ethtool, shellcheck      the NIC tuning scripts and their tests
#   util-linux               nsenter, mount (bpffs)
#   python3                  JSON checks in the script tests
#   g++                      libFuzzer (the cargo-fuzz targets, scripts/fuzz.sh)
#   ngtcp2-client            gtlsclient: ngtcp2's HTTP/3 client, a second independent HTTP/3 peer
#   aioquic (PyPI)           the independent QUIC peer of the interop tests
set -euo pipefail

install_aioquic() {
	python3 -c 'import aioquic' 2>/dev/null && return 0
	echo "setup.sh: installing aioquic (PyPI)" >&2
	python3 -m pip install --quiet --root-user-action=ignore 'aioquic==1.7.2'
}

packages=(clang llvm libbpf-dev iproute2 iputils-ping ethtool shellcheck util-linux python3 g++ ngtcp2-client)
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
