# The image of every dsm service (docker-compose.yml): the package, its `dsm` command and the
# programs of nodes/. The entrypoint runs `dsm doctor` first (see nodes/entrypoint.py).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY dsm ./dsm
COPY nodes ./nodes
RUN pip install . && rm -rf /src

WORKDIR /
ENTRYPOINT ["dsm-entrypoint"]
CMD ["dsm", "doctor"]
