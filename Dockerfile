# The image of every dsm service (docker-compose.yml, deploy/k8s/): the distribution dsm-uffd, its
# commands `dsm`, `dsm-node` and `dsm-entrypoint`, and the workloads of dsm/workloads/. The
# entrypoint runs `dsm doctor` first (see dsm/programs/entrypoint.py).
#
# BASE: any image with python3 (>= 3.11) and its venv module: the official one by default, or a
# Debian one made without Docker Hub (`debootstrap --variant=minbase --include=python3,python3-venv`
# then `docker import`, as .ci/compose-check does):  docker build --build-arg BASE=IMAGE .
ARG BASE=python:3.11-slim
FROM ${BASE}

# the install lives in a virtual environment: the same on the official image and on Debian's
# python3 (whose system site-packages pip refuses to change, PEP 668)
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/dsm \
    PATH=/opt/dsm/bin:$PATH

COPY pyproject.toml README.md /src/
COPY dsm /src/dsm
RUN python3 -m venv /opt/dsm && /opt/dsm/bin/pip install "/src[metrics]" && rm -rf /src

WORKDIR /
ENTRYPOINT ["dsm-entrypoint"]
CMD ["dsm", "doctor"]
