# syntax=docker/dockerfile:1
# fluent-ld's container image; how to build and run it: README.md, "Use it".
#
# Without arguments it runs the packaged default config (fluent_ld/default.conf); `run -c FILE`
# runs a config of your own (conf/kubernetes/fluent-ld.yaml mounts one from a ConfigMap).
# tests/test_container.py checks this file against that example and runs its entrypoint and command.

# Bookworm: the Debian release whose tini the final stage installs.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- build: fluent-ld's wheel and the wheels of its dependencies -------------------------------------
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml setup.cfg README.md ./
COPY fluent_ld ./fluent_ld
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# -- the image ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

# tini as PID 1. The kernel drops a signal sent to PID 1 unless PID 1 handles it, and fluent-ld
# hands SIGTERM back to its default action once it has started stopping, so that a second SIGTERM
# stops it at once: as PID 1 itself that second signal would be ignored. tini passes SIGTERM and
# SIGHUP to fluent-ld alone, as `kill PID` does outside a container, and not with -g to its
# whole process group: fluent-ld's pool processes would die of a SIGHUP meant as a reload, and the
# supervisor of `workers N` signals its workers itself (they run in sessions of their own). tini
# also reaps orphans and exits with fluent-ld's status (128+N when a signal N killed it).
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini=0.19.* \
    && rm -rf /var/lib/apt/lists/*

# A fixed, numeric uid and gid: Kubernetes' runAsNonRoot can only verify a numeric USER, and the
# store's files keep their owner across image upgrades (conf/kubernetes/ runs as 10001 too).
RUN groupadd --gid 10001 fluent-ld \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/fluent-ld --shell /usr/sbin/nologin fluent-ld \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/fluent-ld

RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/fluent_ld-*.whl

# The default config listens on 127.0.0.1 unless told otherwise, which a container cannot be
# reached on; its store goes to the volume below.
ENV FLUENT_LD_BIND=0.0.0.0 \
    FLUENT_LD_BUFFER_PATH=/var/lib/fluent-ld

# What the node has acknowledged lives here until it is delivered: a volume that outlives the
# container (in Kubernetes, the StatefulSet's volume claim).
VOLUME ["/var/lib/fluent-ld"]
WORKDIR /var/lib/fluent-ld

# forward (Fluent Bit / Fluentd), and the monitor_agent that a config of your own may add (the
# default config has none).
EXPOSE 24224 24220

# Opt-in, because the default config has no monitor: with FLUENT_LD_HEALTHCHECK_URL set (for example
# http://127.0.0.1:24220/healthz, for a config with a monitor_agent on 24220) the container is
# healthy while that answers 200; unset, there is nothing to ask and the check passes. Kubernetes
# ignores this and uses the probes in conf/kubernetes/.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; url = os.environ.get('FLUENT_LD_HEALTHCHECK_URL'); sys.exit(bool(url) and urllib.request.urlopen(url, timeout=5).status != 200)"]

USER 10001:10001
ENTRYPOINT ["tini", "--", "fluent-ld"]
CMD ["run"]
