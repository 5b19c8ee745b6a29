#!/usr/bin/env bash
# Build cadr's BPF objects from source against this machine's kernel BTF (idempotent:
# nothing is rebuilt unless a source or the BTF changed). Called by scripts/setup.sh.
#
# Needs (Debian): clang llvm libbpf-dev bpftool libelf-dev zlib1g-dev, and a kernel with
# BTF at /sys/kernel/btf/vmlinux (or CADR_BTF=/path). Fails with the list of what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
exec bash sensors/ebpf/build.sh "$@"
