# PLACEHOLDER until the serving issue: this image installs worldstream and runs the benchmark.
# The real image (serving `worldstream play` behind a token) comes with the browser-play issue.
# Pass a CPU-only torch wheel source through pip's own config (PIP_EXTRA_INDEX_URL / PIP_FIND_LINKS)
# at build time if you do not want the CUDA build.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY app app
COPY engine engine
COPY kernels kernels
COPY assets assets
RUN pip install --no-cache-dir torch==2.13.0 && pip install --no-cache-dir .
CMD ["worldstream", "bench", "--preset", "small"]
