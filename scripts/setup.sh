#!/usr/bin/env bash
# Install everything cadr needs on a fresh Debian machine of this kind (idempotent):
# Debian packages (BPF toolchain, bpftrace, rsyslog), the Python venv with pinned
# dependencies, the Kafka jars from Maven Central, and the compiled BPF objects.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

APT_PACKAGES=(clang llvm libbpf-dev bpftool libelf-dev zlib1g-dev pkg-config make bpftrace
              rsyslog rsyslog-gnutls gnutls-bin iproute2 util-linux procps openjdk-17-jre-headless maven)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.cadr-installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
  echo "setup: installing Python packages (pinned in pyproject.toml)"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[dev]'
  touch "$stamp"
fi

echo "setup: fetching Apache Kafka jars (cached)"
bash deploy/kafka/kafka.sh fetch

if [[ -x scripts/build-bpf.sh ]]; then
  if [[ $(id -u) -eq 0 && -r /sys/kernel/btf/vmlinux ]]; then
    echo "setup: building BPF objects"
    bash scripts/build-bpf.sh
  else
    echo "setup: skipping BPF build (needs root and /sys/kernel/btf/vmlinux)"
  fi
fi
echo "setup: ready ($ROOT)"
