# telewire with the Twilio and Bandwidth carriers and every extra a deployment uses (Redis control
# plane, S3 recordings, uvloop/orjson). Builds from this repository with nothing fetched but
# packages from PyPI. See docs/deployment.md.
#
#   docker build -t telewire .
#   docker run -p 8080:8080 -e TELEWIRE_PUBLIC_URL=https://voice.example.com telewire
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /build
COPY pyproject.toml README.md ./
COPY core ./core
COPY plugins/twilio ./plugins/twilio
COPY plugins/bandwidth ./plugins/bandwidth
RUN python -m pip install './[control,s3,speedups]' ./plugins/twilio ./plugins/bandwidth \
    && rm -rf /build \
    && useradd --system --create-home --home-dir /srv/telewire telewire

# recordings, their spool and the span database live in the working directory: mount a volume
WORKDIR /srv/telewire
USER telewire
ENV TELEWIRE_HOST=0.0.0.0 \
    TELEWIRE_PORT=8080 \
    TELEWIRE_LOG_JSON=true
EXPOSE 8080
STOPSIGNAL SIGTERM
# liveness: the process answers (readiness, /readyz, is for the load balancer)
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request, sys; urllib.request.urlopen('http://127.0.0.1:8080/livez', timeout=2); sys.exit(0)"]
CMD ["telewire", "serve"]
