# syntax=docker/dockerfile:1
# Lifeline production image: one image, one process per container (`lifeline <command>`).
#   docker build -t lifeline .
#   docker run --rm lifeline --help
# Default command is the REST API; docker-compose.yml runs the same image as worker, dispatcher, listener, migrate.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: a virtualenv with the pinned runtime dependencies, then the project itself ----
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/lifeline
ENV PATH=/opt/lifeline/bin:$PATH
WORKDIR /src

# Dependencies first (cached until the lock or pyproject changes). requirements.lock pins the whole tree,
# dev tools included; it is used as a constraints file so the image gets exactly the locked versions of the
# runtime dependencies declared in pyproject.toml and none of pytest/mypy/ruff/uv/test servers.
COPY requirements.lock pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/runtime.txt \
 && pip install -r /tmp/runtime.txt -c requirements.lock

# The project, without touching the dependencies installed above.
COPY . .
RUN pip install --no-deps . \
 && pip check

# ---- runtime ----
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="lifeline" \
      org.opencontainers.image.description="Self-healing HL7 v2 integration engine on Temporal" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 lifeline \
 && useradd --system --uid 10001 --gid lifeline --home-dir /srv/lifeline --create-home --shell /usr/sbin/nologin lifeline
COPY --from=build /opt/lifeline /opt/lifeline
ENV PATH=/opt/lifeline/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LIFELINE_ENVIRONMENT=production \
    LIFELINE_API_HOST=0.0.0.0 \
    LIFELINE_API_PORT=8000 \
    LIFELINE_DATA_DIR=/srv/lifeline/data
WORKDIR /srv/lifeline
USER lifeline:lifeline

# 8000: REST API (`lifeline api`); 2575: MLLP (`lifeline listener`, the port set per channel in lifeline.yaml).
EXPOSE 8000 2575

# Liveness of the API (the default command). Other commands override or disable it (see docker-compose.yml).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('LIFELINE_API_PORT', '8000'), timeout=4)"]

ENTRYPOINT ["lifeline"]
CMD ["api"]
