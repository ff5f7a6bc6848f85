# One image for every bookfeed process: feed, migrate, Celery worker and beat, Flower, the simulator.
# No secrets and no configuration are baked in: DATABASE_URL, REDIS_URL and BOOKFEED_* come from the environment.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BOOKFEED_DATA_DIR=/var/lib/bookfeed

WORKDIR /app

# Dependencies first, read from pyproject.toml alone, so that a code change does not reinstall them. Only
# [project] dependencies: the `local` extra (embedded PostgreSQL/Redis for `bookfeed up`) stays out of the image.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
    > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The source also stays in /app, read-only for the runtime user: `celery -A workers` imports from the working
# directory, and the `alembic` command (e.g. `alembic check`) finds models/migrations through pyproject.toml.
COPY celeryconfig.py ./
COPY models/ models/
COPY feed/ feed/
COPY workers/ workers/
COPY simulator/ simulator/
COPY stack/ stack/
COPY api/ api/
RUN pip install --no-deps . \
    && rm -rf build ./*.egg-info

RUN groupadd --system --gid 10001 bookfeed \
    && useradd --system --uid 10001 --gid bookfeed --home-dir /home/bookfeed --create-home \
        --shell /usr/sbin/nologin bookfeed \
    && install -d -o bookfeed -g bookfeed /var/lib/bookfeed
USER 10001:10001

# Every compose service sets its own command; a bare `docker run` shows the subcommands.
CMD ["bookfeed", "--help"]
