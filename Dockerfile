# orderhook: multi-stage build on the slim Python image; runs as a non-root user.
# The image expects a Redis: set REDIS_URL (redis://, rediss://). Without it the gateway falls
# back to its embedded store, which needs a persistent volume at ORDERHOOK_DATA_DIR.
# Behind a TLS-terminating proxy, set FORWARDED_ALLOW_IPS to the proxy's address(es) ("*" when
# nothing else can reach the port, as on Fly: fly.toml): its X-Forwarded-Proto and -For are
# trusted then (the dashboard cookie gets `Secure`). Unset, only loopback's are.

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
RUN python -m venv /opt/orderhook && /opt/orderhook/bin/pip install .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/orderhook orderhook
COPY --from=build /opt/orderhook /opt/orderhook
COPY examples/orderhook.toml /etc/orderhook/orderhook.toml
ENV PATH=/opt/orderhook/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    ORDERHOOK_CONFIG=/etc/orderhook/orderhook.toml \
    ORDERHOOK_DATA_DIR=/var/lib/orderhook/data
USER orderhook
WORKDIR /var/lib/orderhook
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status != 200)"]
STOPSIGNAL SIGTERM
CMD ["orderhook", "serve", "--host", "0.0.0.0", "--port", "8000"]
