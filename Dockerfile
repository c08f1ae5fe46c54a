# Cloud monitor relay: API, /admin, player pages and stored files on one TCP port; WebRTC live
# video on the UDP ports 40000-40099 (RELAY_ICE_PORTS, one port per WebRTC viewer).
# Data (SQLite catalogue, recordings, snapshots) lives in the /data volume.
#   docker build -t cloud-monitor .
#   docker run -p 8080:8080 -p 40000-40099:40000-40099/udp -v cm-data:/data \
#     -e RELAY_PUBLIC_URL=http://HOST:8080 -e RELAY_ICE_PORTS=40000-40099 \
#     -e RELAY_ICE_PUBLIC_IP=HOST_IP cloud-monitor
# HOST_IP is the address browsers reach the Docker host at. Publish the UDP range to the same port
# numbers it has inside. Or run with --network host (no -p; RELAY_LISTEN and the range are then on
# the host itself). Without the UDP ports every viewer falls back to MSE after a few seconds.
# See docs/DOCKER.md.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RELAY_DATA=/data \
    RELAY_LISTEN=0.0.0.0:8080 \
    RELAY_ICE_PORTS=40000-40099 \
    RELAY_PLAYER_DIR=/app/player

WORKDIR /app
COPY pyproject.toml README.md ./
COPY relay ./relay
COPY player ./player
# gcc builds the C send loop of WebRTC fan-out (relay/live/_fanout.c), then goes again.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && pip install --no-cache-dir . \
 && python -c "import relay.live._fanout" \
 && apt-get purge -y --auto-remove gcc libc6-dev && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin relay \
 && mkdir -p /data && chown relay:relay /data

USER relay
VOLUME ["/data"]
EXPOSE 8080 40000-40099/udp
HEALTHCHECK --interval=30s --timeout=3s --start-period=15s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
ENTRYPOINT ["relay", "serve"]
