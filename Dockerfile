# cadr image for docker-compose.yml and the Kubernetes manifests, in two stages: the compilers and headers that
# build the BPF object and the sensor's native ring consumer stay in the build stage; the image ships the Python
# environment, the built objects and the runtime libraries only (no clang, llvm, bpftool, gcc, make or headers).
FROM python:3.11-slim-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends clang llvm libbpf-dev bpftool libelf-dev zlib1g-dev gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY sensors sensors
COPY streams streams
COPY cadr cadr
COPY deploy deploy
COPY scripts scripts
# The CO-RE object is built against the build host's kernel BTF (libbpf relocates it on each node's kernel);
# --build-arg CADR_BTF=/path/to/vmlinux builds against another.
ARG CADR_BTF=/sys/kernel/btf/vmlinux
RUN CADR_BTF="$CADR_BTF" bash sensors/ebpf/build.sh \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir . \
    && SITE="$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
    && mkdir -p "$SITE/sensors/ebpf/build" "$SITE/deploy" \
    && cp sensors/ebpf/build/cadr.bpf.o sensors/ebpf/build/libcadrring.so "$SITE/sensors/ebpf/build/" \
    && cp -r deploy/clickhouse "$SITE/deploy/clickhouse"

FROM python:3.11-slim-bookworm
# libbpf1, libelf1, zlib1g: what the sensor loads at run time (through ctypes)
RUN apt-get update \
    && apt-get install -y --no-install-recommends libbpf1 libelf1 zlib1g \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/cadr --create-home cadr \
    && chmod 700 /var/lib/cadr
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# Non-root by default; the eBPF sensor's pod runs as root with only CAP_BPF and CAP_PERFMON (deploy/kubernetes).
USER 10001
WORKDIR /var/lib/cadr
ENTRYPOINT ["cadr"]
