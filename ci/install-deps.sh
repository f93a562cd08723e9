#!/usr/bin/env bash
# Installs what svclab needs on a Debian 12 machine, and nothing when it is
# all there already. Run as root (make bench / make test call it).
set -euo pipefail

# Debian packages svclab builds or runs with:
#   clang, llvm         compile bpf/*.c (bpf2go) and strip the objects
#   libbpf-dev          libbpf headers (bpf/include vendors a copy; kept for update.sh)
#   iptables, nftables  the iptables (nft and legacy) and nftables baselines
#   bpftool             diagnostics of loaded programs and maps
#   iproute2            ip netns / ip link for users inspecting a lab topology
#   git, ca-certificates, make
#   qemu-system-x86     svclab vm: boots Debian kernels (IPVS, other versions) for bench and tests
#   busybox-static      svclab vm: the guest's /init, shell and insmod/modprobe
#   kmod                svclab vm: depmod indexes a downloaded kernel's modules
#   xz-utils            svclab vm: unpacks .xz Packages indexes and kernel modules
#   gpgv                svclab vm: checks the signature of Debian's indexes
#   debian-archive-keyring  svclab vm: the keys gpgv checks them with
#   chromium            the report test opens report.html in headless Chromium (results/report_browser_test.go)
#   fonts-liberation    the charts' font (Liberation Sans), so the browser lays text out as the charts measured it
#   jq                  ci/gate.sh finds the reference of this machine kind; ci/prove-gate.sh reads runs
pkgs=(clang llvm libbpf-dev iptables nftables bpftool iproute2 git ca-certificates make qemu-system-x86 busybox-static kmod xz-utils gpgv debian-archive-keyring chromium fonts-liberation jq)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps: missing Debian packages: ${missing[*]}; run as root or install them" >&2
    exit 1
  fi
  echo "install-deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v go >/dev/null 2>&1; then
  if [[ -x /usr/local/go/bin/go ]]; then
    echo "install-deps: Go is at /usr/local/go/bin but not on PATH; add it: export PATH=/usr/local/go/bin:\$PATH" >&2
  else
    echo "install-deps: Go 1.26 or later is needed (go.mod); install it from https://go.dev/dl/ into /usr/local/go" >&2
  fi
  exit 1
fi

# Go modules (and the bpf2go tool pinned in go.mod).
go mod download
