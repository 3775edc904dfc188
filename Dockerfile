# One image for the node (default command `ringkv-node`), the operator (`ringkv-operator`)
# and the CLI (`ringkv`). Build: docker build -t ringkv:dev .   (needs constraints.txt)
# Base images are named literally (no ARG): the local cluster's builder
# (../shared/k8s/cluster image build) reads FROM lines to provide python:3.11-slim offline.

# --- builder: turn the project and every dependency into wheels -------------------------
FROM python:3.11-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Only what the wheel is built from; tests, charts and docs stay out of the image.
COPY pyproject.toml README.md constraints.txt ./
COPY src/ src/
# The operator extra (kopf) is included: the same image runs the operator.
RUN pip wheel --no-cache-dir --constraint constraints.txt --wheel-dir /wheels ".[operator]"

# --- final: wheels installed into a clean interpreter, no compilers, no source tree -----
FROM python:3.11-slim
LABEL org.opencontainers.image.title="ringkv" \
      org.opencontainers.image.description="Replicated leaderless key-value store: node, operator and CLI" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RINGKV_DATA_DIR=/data
# A fixed numeric uid/gid (10001) so Kubernetes' runAsNonRoot can verify it and volume
# ownership (fsGroup) matches; --no-log-init avoids a huge sparse lastlog for a big uid.
RUN groupadd --system --gid 10001 ringkv \
    && useradd --system --no-log-init --uid 10001 --gid ringkv \
       --home-dir /home/ringkv --create-home --shell /usr/sbin/nologin ringkv \
    && install --directory --owner=ringkv --group=ringkv --mode=0750 /data
# Install from the builder's wheels only (no index, so no network and nothing unpinned),
# through a bind mount so the wheel files never become a layer of this image.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/*.whl
# Run from a directory that holds no source tree, so `import ringkv` is the installed wheel.
WORKDIR /home/ringkv
USER 10001:10001
# 8080: public HTTP API, /healthz, /readyz, /metrics; 9080: internal peer protocol.
EXPOSE 8080 9080
CMD ["ringkv-node"]
