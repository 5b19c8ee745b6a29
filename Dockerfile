# cadr image for docker-compose.yml and the Kubernetes manifests.
FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends clang llvm libbpf-dev bpftool libelf-dev zlib1g-dev make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/cadr
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY sensors sensors
COPY streams streams
COPY cadr cadr
COPY deploy deploy
COPY scripts scripts
RUN pip install --no-cache-dir .
ENTRYPOINT ["cadr"]
