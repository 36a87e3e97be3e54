# The Docker and Kubernetes agents' default image, baton:<version>: Baton (with the docker SDK and the kubernetes
# client, so the image also runs those agents) in a venv at /opt/baton on Python 3.11, so `python -m baton.engine`
# runs a flow run in a container or a pod.
#
# Build it with `baton docker build-image [--tag TAG]`. It builds the wheels on the host (Baton from the local
# source, the dependencies from the package index, cached in .cache/wheels) and sends a context of its own:
# this file, deps/ (the dependencies' wheels) and baton/ (Baton's wheel). The build runs with no network.
# The dependencies get a stage of their own, so that a change of Baton's source rebuilds only the small last
# layers: the stage is reused from the layer cache for as long as the dependencies do not change.
#
# The base is the official python:3.11-slim where a registry is reachable; offline, scripts/docker/base-image.sh
# makes an image of that name from Debian bookworm (its Python is /usr/bin/python3, the official one's is in
# /usr/local/bin; the venv works on both).
#
# Flow runs run as root, like in the official python images: bind-mounted host directories and named volumes
# are then writable by the flow unless mounted read-only. Run as another user with
# DockerRun(host_config={"user": "1000:1000"}).

ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS deps
COPY deps /wheels
# setuptools (which ensurepip puts in every 3.11 venv) is not needed at run time: 9 MB less. pip stays, so that
# images FROM this one can add packages.
RUN python3 -m venv /opt/baton \
 && /opt/baton/bin/pip install --quiet --no-cache-dir --no-index --find-links /wheels /wheels/*.whl \
 && /opt/baton/bin/pip uninstall --quiet --yes setuptools
# Lets a build find and remove the untagged stages of earlier builds, keeping the one it used as layer cache.
LABEL io.baton.stage=deps

FROM ${BASE_IMAGE}
COPY --from=deps /opt/baton /opt/baton
# The whole PATH, not `/opt/baton/bin:$PATH`: an imported base image has no PATH to extend.
ENV PATH=/opt/baton/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1
WORKDIR /opt/flows
COPY baton /tmp/baton-wheel
# `pip check` and the imports fail the build, not the first flow run, when something is missing.
RUN pip install --quiet --no-cache-dir --no-index --no-deps /tmp/baton-wheel/*.whl \
 && rm -rf /tmp/baton-wheel \
 && pip check \
 && python -c "import baton.engine, docker, kubernetes" \
 && baton --version
ARG BATON_SOURCE_HASH=unknown
ARG BATON_VERSION=unknown
LABEL org.opencontainers.image.title=baton \
      org.opencontainers.image.version=${BATON_VERSION} \
      io.baton.version=${BATON_VERSION} \
      io.baton.source-hash=${BATON_SOURCE_HASH}
CMD ["baton", "--help"]
