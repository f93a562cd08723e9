#!/bin/sh
# Refresh the vendored BPF headers from the build host's packages.
#
# The copies are committed so that compiling bpf/*.c never reads the host's
# /usr/include (in particular never <asm/types.h>, which is missing or
# multiarch-specific on many hosts). Run this only when a program needs a
# newer helper or UAPI definition, then regenerate with `go generate` and
# record the package versions in README.md.
#
#   LIBBPF_INCLUDE  directory holding libbpf's bpf_helpers.h (libbpf-dev)
#   UAPI_INCLUDE    directory holding the UAPI linux/bpf.h (linux-libc-dev)
#
# linux/types.h is hand-written and never overwritten.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
libbpf=${LIBBPF_INCLUDE:-/usr/include/bpf}
uapi=${UAPI_INCLUDE:-/usr/include/linux}

for f in bpf_helpers.h bpf_helper_defs.h bpf_endian.h; do
	install -m 0644 "$libbpf/$f" "$here/bpf/$f"
done
for f in bpf.h bpf_common.h; do
	install -m 0644 "$uapi/$f" "$here/linux/$f"
done

if command -v dpkg-query >/dev/null 2>&1; then
	echo "copied from:"
	dpkg-query -W -f '  ${Package} ${Version}\n' libbpf-dev linux-libc-dev 2>/dev/null || true
fi
