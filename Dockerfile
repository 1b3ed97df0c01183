# worldstream: serve the bundled model in the browser (`worldstream play`).
#   docker build -t worldstream .
#   docker run --rm -p 7860:7860 -e WORLDSTREAM_TOKEN=choose-a-long-token worldstream
#   then open http://localhost:7860/?token=choose-a-long-token
# Inside the container the server binds 0.0.0.0 (the port is published), so a token is required:
# the container refuses to start without WORLDSTREAM_TOKEN. Recordings go to /data/recordings
# (mount a volume there to keep them).
# For a CPU-only image, point pip at the CPU wheel index at build time, e.g.
#   docker build --build-arg PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu -t worldstream .
FROM python:3.11-slim
ARG PIP_EXTRA_INDEX_URL
WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY app app
COPY engine engine
COPY kernels kernels
COPY train train
COPY assets assets
RUN pip install --no-cache-dir torch==2.13.0 && pip install --no-cache-dir -e .
RUN useradd --create-home player && mkdir -p /data/recordings && chown player /data/recordings
USER player
EXPOSE 7860
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/healthz')"
CMD ["sh", "-c", "exec worldstream play --host 0.0.0.0 --port 7860 --steps 1 --compile --recordings /data/recordings --token \"${WORLDSTREAM_TOKEN:?set WORLDSTREAM_TOKEN (8+ characters) to serve outside the container}\""]
