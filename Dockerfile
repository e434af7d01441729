# syntax=docker/dockerfile:1
# The dunning worker. BASE can point at a local base image where no registry is reachable.
ARG BASE=python:3.12-slim

FROM ${BASE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
RUN python -m venv /opt/dunning \
    && /opt/dunning/bin/pip install --no-cache-dir --upgrade pip \
    && /opt/dunning/bin/pip install --no-cache-dir ".[postgres]"

FROM ${BASE}
RUN useradd --system --uid 10001 --home-dir /var/lib/dunning --create-home dunning
COPY --from=build /opt/dunning /opt/dunning
COPY templates /etc/dunning/templates
ENV PATH=/opt/dunning/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DUNNING_TEMPLATES_DIR=/etc/dunning/templates \
    DUNNING_DATABASE_URL=sqlite:////var/lib/dunning/dunning.db \
    DUNNING_OUTBOX_DIR=/var/lib/dunning/outbox \
    DUNNING_HTTP_PORT=8080
USER 10001
WORKDIR /var/lib/dunning
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s \
    CMD ["python", "-c", "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
ENTRYPOINT ["dunning"]
CMD ["worker"]
