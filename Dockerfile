# canarist controller image.
#   docker build -t ghcr.io/canarist/canarist:0.1.0 .
# Builder: build this project's wheel (templates/ is packaged inside it) and install it with its
# dependencies into a virtualenv. Final: the same base image, the virtualenv, a non-root user.

FROM python:3.11.13-slim-bookworm AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY controller/ controller/
COPY templates/ templates/

RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir /wheels/canarist-*.whl

FROM python:3.11.13-slim-bookworm

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
