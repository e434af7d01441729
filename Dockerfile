# syntax=docker/dockerfile:1
# The dunning worker: `dunning worker` as a non-root user, templates baked in at
# /etc/dunning/templates (mount your own over it), /healthz as the health check.
# BASE can point at a local base image where no registry is reachable:
# deploy/build-image-offline.sh makes one from Debian's packages.
ARG BASE=python:3.12-slim

# ---- build: a virtualenv with the package and its extras ---------------------------------------
FROM ${BASE} AS build
# pip trusts the system's CA store (the build script can mount a proxy's bundle over it).
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt
WORKDIR /src
# Dependencies first, against an empty package and README, so that a change in service/ or in
# README.md reuses this layer.
# The extras: postgres (shared ledger), redis (shared rate limits), letters (WeasyPrint PDFs),
# fast (uvloop), each as soon as pyproject.toml declares it.
COPY pyproject.toml ./
RUN mkdir service \
    && touch README.md service/__init__.py \
    && python3 -m venv /opt/dunning \
    && extras="$(python3 -c 'import tomllib; o = tomllib.load(open("pyproject.toml", "rb"))["project"].get("optional-dependencies", {}); print(",".join(x for x in ("postgres", "redis", "letters", "fast") if x in o))')" \
    && echo "installing dunning[${extras}]" \
    && /opt/dunning/bin/pip install ".[${extras}]"
COPY README.md ./
COPY service ./service
RUN /opt/dunning/bin/pip install --no-deps --force-reinstall . \
    && /opt/dunning/bin/dunning --help >/dev/null

# ---- runtime ------------------------------------------------------------------------------------
FROM ${BASE}
# The CJK font letters use: fonts-noto-cjk has real bold (~90 MB); fonts-wqy-microhei is 5 MB
# without bold. Keep a full font: a trimmed one loses rare characters of names.
ARG CJK_FONT=fonts-noto-cjk
# WeasyPrint's libraries (without libharfbuzz-subset0 a Chinese letter takes ~24 s instead of
# 0.2 s), fontconfig and the font, with the font cache built here: the user cannot write /var/cache.
# Fontconfig trusts a cache only if the font folders' mtimes match to the nanosecond, and image
# layers keep whole seconds: round them first, or every worker rebuilds the cache at its first letter.
# Versions are not pinned: BASE may be any Debian release, and each brings its own security fixes.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fontconfig "${CJK_FONT}" \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /usr/local/share/fonts \
    && find /usr/share/fonts /usr/local/share/fonts -type d -exec touch -d "@$(date +%s)" {} + \
    && fc-cache -f
# uid/gid 10001: numeric, so Kubernetes can check runAsNonRoot. Writable places: the home
# (SQLite ledger, outbox), the letter spool and a cache for fontconfig.
RUN groupadd --system --gid 10001 dunning \
    && useradd --system --uid 10001 --gid dunning --home-dir /var/lib/dunning \
        --shell /usr/sbin/nologin dunning \
    && install -d -o dunning -g dunning -m 0750 \
        /var/lib/dunning /var/lib/dunning/outbox /var/spool/dunning /var/cache/dunning
COPY --from=build /opt/dunning /opt/dunning
COPY templates /etc/dunning/templates
ENV PATH=/opt/dunning/bin:$PATH \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/dunning \
    XDG_CACHE_HOME=/var/cache/dunning \
    DUNNING_TEMPLATES_DIR=/etc/dunning/templates \
    DUNNING_DATABASE_URL=sqlite:////var/lib/dunning/dunning.db \
    DUNNING_OUTBOX_DIR=/var/lib/dunning/outbox \
    DUNNING_HTTP_PORT=8080
USER 10001:10001
WORKDIR /var/lib/dunning
EXPOSE 8080
# Liveness only: /healthz checks no dependency (a broker outage must not restart every worker).
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import http.client as h, os; c = h.HTTPConnection('127.0.0.1', int(os.environ.get('DUNNING_HTTP_PORT', '8080')), timeout=2); c.request('GET', '/healthz'); raise SystemExit(c.getresponse().status != 200)"]
ENTRYPOINT ["dunning"]
CMD ["worker"]
