# One image for the four services and the operator CLI.
#   payment/wallet/gifting/payout:  python -m services.<name>
#   one-shot setup:                 coinstream setup
# Settings come from the environment (KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL, HTTP_PORT, ...).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# --- build: install the project and its runtime dependencies into a venv -------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Only what `pip install .` packages (see [tool.setuptools.packages.find]); no dev extras.
COPY pyproject.toml ./
COPY shared ./shared
COPY services ./services
COPY devstack ./devstack
RUN pip install .

# --- runtime ---------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HTTP_HOST=0.0.0.0
RUN groupadd --system --gid 10001 coinstream \
 && useradd --system --uid 10001 --gid coinstream --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin coinstream
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
USER 10001:10001

# payment 8081, wallet 8082, gifting 8083, payout 8084 (each container sets HTTP_PORT).
EXPOSE 8081 8082 8083 8084

# No curl in slim: urllib raises on a refused connection or a non-2xx answer -> exit 1.
# Containers that serve no HTTP (the one-shot `coinstream setup`) disable it in compose.yaml.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('HTTP_PORT', '8080') + '/health/ready', timeout=4)"]

CMD ["coinstream", "--help"]
