# canarist controller image.
#   docker build -t ghcr.io/canarist/canarist:0.1.0 .
# Builder: install the locked dependencies (requirements.lock, every file checked against its
# hash, nothing resolved at build time) into a virtualenv, then build this project's wheel
# (templates/ is packaged inside it) with the locked build backend and add it without dependencies.
# Final: the same base image, the virtualenv, a non-root user.
#
# The base image is pinned by digest (the python:3.11.13-slim-bookworm multi-arch index; the tag
# is kept for people reading it). To move to a newer patch release, update tag and digest together:
#   docker buildx imagetools inspect python:3.11.X-slim-bookworm   (the "Digest:" line)

FROM python:3.11.13-slim-bookworm@sha256:86adf8dbadc3d6e82ee5dd2c74bec2e1c2467cdad47886280501df722372d2e1 AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY requirements.lock requirements-build.lock ./
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --require-hashes --no-deps -r requirements.lock \
    && python -m venv /opt/build \
    && /opt/build/bin/pip install --no-cache-dir --require-hashes --no-deps -r requirements-build.lock

COPY pyproject.toml README.md ./
COPY controller/ controller/
COPY templates/ templates/

RUN /opt/build/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheels . \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps /wheels/canarist-*.whl

FROM python:3.11.13-slim-bookworm@sha256:86adf8dbadc3d6e82ee5dd2c74bec2e1c2467cdad47886280501df722372d2e1

LABEL org.opencontainers.image.title="canarist" \
      org.opencontainers.image.description="Istio canary controller for ML model versions" \
      org.opencontainers.image.source="https://github.com/canarist/canarist" \
      org.opencontainers.image.licenses="Apache-2.0"

# MPLCONFIGDIR: `canarist report` runs matplotlib, whose cache must be writable (the root is read-only).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib

COPY --from=builder /opt/venv /opt/venv

# Numeric, so Kubernetes can verify runAsNonRoot; matches runAsUser in istio/deployment.yaml.
USER 65532:65532
WORKDIR /tmp
EXPOSE 8080

HEALTHCHECK NONE
ENTRYPOINT ["canarist"]
CMD ["run"]
