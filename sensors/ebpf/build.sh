#!/usr/bin/env bash
# Build the cadr BPF object from source against the running kernel's BTF, and the sensor's
# native ring-buffer consumer.
#
#   sensors/ebpf/build.sh [--force] [--out DIR]
#
# Steps (each skipped when its output is newer than its inputs, so reruns are cheap):
#   1. DIR/libcadrring.so <- $CC -O2 -shared cadrring.c: walks the ring buffer and formats
#      events to JSON in C (sensors/ebpf/native.py; without it the sensor uses the slower
#      pure Python consumer). Needs a C compiler (cc, gcc or clang) and linux-libc-dev.
#   2. DIR/vmlinux.h      <- bpftool btf dump file $CADR_BTF (default /sys/kernel/btf/vmlinux)
#   3. DIR/cadr.bpf.o     <- clang -target bpf, CO-RE (libbpf relocates it on the target kernel)
#
# Needs: clang, llvm-strip (llvm), bpftool, libbpf headers (libbpf-dev), a BTF file.
# DIR defaults to sensors/ebpf/build (git-ignored; nothing built is committed).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="$HERE/build"
FORCE=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --force) FORCE=1; shift ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
BTF="${CADR_BTF:-/sys/kernel/btf/vmlinux}"
CLANG="${CLANG:-clang}"
BPFTOOL="${BPFTOOL:-bpftool}"

die() { echo "build.sh: $*" >&2; exit 1; }

stale() { # stale OUTPUT INPUT... : true when OUTPUT is missing or older than an input
  local out="$1"; shift
  [[ $FORCE -eq 1 || ! -s "$out" ]] && return 0
  local f
  for f in "$@"; do [[ "$f" -nt "$out" ]] && return 0; done
  return 1
}

mkdir -p "$OUT"
# One builder at a time (CI setup, tests and `cadr up` may race on a fresh tree).
exec 9>"$OUT/.build.lock"
flock 9

# The native consumer first: it needs only a C compiler, and the sensor runs (slower)
# without it, so a missing compiler is a warning, not a failure.
CC_BIN=""
for c in "${CC:-}" cc gcc "$CLANG"; do
  if [[ -n "$c" ]] && command -v "$c" >/dev/null; then CC_BIN="$c"; break; fi
done
if [[ -z "$CC_BIN" ]]; then
  echo "build.sh: no C compiler (cc, gcc or clang): the sensor will use its pure Python consumer" >&2
elif stale "$OUT/libcadrring.so" "$HERE/cadrring.c" "$HERE/cadr.h" "$0"; then
  if "$CC_BIN" -O2 -g -fPIC -shared -Wall -Wextra -Wno-missing-field-initializers \
      -I "$HERE" -o "$OUT/libcadrring.so.tmp" "$HERE/cadrring.c"; then
    mv "$OUT/libcadrring.so.tmp" "$OUT/libcadrring.so"
    echo "build.sh: built $OUT/libcadrring.so" >&2
  else
    rm -f "$OUT/libcadrring.so.tmp"
    echo "build.sh: $CC_BIN failed on cadrring.c: the sensor will use its pure Python consumer" >&2
  fi
fi

missing=()
command -v "$CLANG" >/dev/null || missing+=("clang (apt: clang)")
command -v "$BPFTOOL" >/dev/null || missing+=("bpftool (apt: bpftool)")
[[ -f /usr/include/bpf/bpf_helpers.h ]] || missing+=("libbpf headers /usr/include/bpf (apt: libbpf-dev)")
[[ -r "$BTF" ]] || missing+=("kernel BTF at $BTF (a kernel built with CONFIG_DEBUG_INFO_BTF=y)")
if [[ ${#missing[@]} -gt 0 ]]; then
  die "cannot build the BPF object; missing: $(IFS=';'; echo "${missing[*]}")"
fi

case "$(uname -m)" in
  x86_64) ARCH=x86 ;;
  aarch64) ARCH=arm64 ;;
  *) die "unsupported architecture $(uname -m) (the syscall numbers in cadr.bpf.c are x86_64's)" ;;
esac
[[ "$ARCH" == x86 ]] || die "only x86_64 is supported for now (syscall numbers in cadr.bpf.c)"

if stale "$OUT/vmlinux.h" "$BTF"; then
  "$BPFTOOL" btf dump file "$BTF" format c >"$OUT/vmlinux.h.tmp" || die "bpftool could not dump $BTF"
  mv "$OUT/vmlinux.h.tmp" "$OUT/vmlinux.h"
  echo "build.sh: generated $OUT/vmlinux.h from $BTF" >&2
fi

if stale "$OUT/cadr.bpf.o" "$OUT/vmlinux.h" "$HERE/cadr.bpf.c" "$HERE/cadr.h" "$0"; then
  "$CLANG" -g -O2 -target bpf -D__TARGET_ARCH_$ARCH -Wall -Werror -Wno-unused-function \
    -I "$OUT" -I "$HERE" -I /usr/include/bpf \
    -c "$HERE/cadr.bpf.c" -o "$OUT/cadr.bpf.o.tmp" || die "clang failed to compile cadr.bpf.c"
  # Keep BTF (CO-RE needs it) but drop DWARF: smaller object, faster open.
  if command -v llvm-strip >/dev/null; then
    llvm-strip -g "$OUT/cadr.bpf.o.tmp"
  fi
  mv "$OUT/cadr.bpf.o.tmp" "$OUT/cadr.bpf.o"
  echo "build.sh: built $OUT/cadr.bpf.o" >&2
fi
echo "$OUT/cadr.bpf.o"
