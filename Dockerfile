# Cloud monitor relay: API, /admin, player pages and stored files on one port.
# Data (SQLite catalogue, recordings, snapshots) lives in the /data volume.
#   docker build -t cloud-monitor .
#   docker run -p 8080:8080 -v cm-data:/data -e RELAY_PUBLIC_URL=http://HOST:8080 cloud-monitor
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RELAY_DATA=/data \
    RELAY_LISTEN=0.0.0.0:8080 \
    RELAY_PLAYER_DIR=/app/player

WORKDIR /app
COPY pyproject.toml README.md ./
COPY relay ./relay
COPY player ./player
RUN pip install --no-cache-dir . \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin relay \
 && mkdir -p /data && chown relay:relay /data

USER relay
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s --start-period=15s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
ENTRYPOINT ["relay", "serve"]
