# cloudbucket-csi: one image for the node plugin, the mounter and the controller.
#
# Debian bookworm slim + fuse3 + the driver installed from its package into /opt/cloudbucket.
# The image's default user is unprivileged (uid 10001); the chart runs only the containers
# that mount (node plugin, mounter) as root, and the controller as this user.
#
# Elsewhere: `docker build -t cloudbucket-csi .`. On machines without a registry,
# `make image` imports a debootstrap rootfs and passes it as BASE_IMAGE.
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends \
      python3 python3-venv python3-dev gcc libc6-dev libfuse3-dev pkg-config ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/cloudbucket
# .build-ca.crt (optional; the pattern may match nothing): a CA bundle for reaching the
# package index through a TLS-inspecting proxy. `make image` puts the host's there for the
# build. Only this stage sees it: it is not copied into the shipped image.
COPY pyproject.toml .build-ca.cr[t] /src/
RUN if [ -s /src/.build-ca.crt ]; then echo "PIP_CERT=/src/.build-ca.crt" > /tmp/pip.env; \
    else : > /tmp/pip.env; fi
COPY driver /src/driver
RUN set -a && . /tmp/pip.env && set +a \
 && /opt/cloudbucket/bin/pip install -q --upgrade pip \
 && /opt/cloudbucket/bin/pip install -q /src \
 && /opt/cloudbucket/bin/cloudbucket-csi --version

FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
# fuse3: fusermount3 and libfuse3 (pyfuse3 links it); mount/umount come with the base.
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends python3 fuse3 libfuse3-3 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && sed -i 's/^#\s*user_allow_other/user_allow_other/' /etc/fuse.conf \
 && groupadd --system --gid 10001 cloudbucket \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin cloudbucket
COPY --from=build /opt/cloudbucket /opt/cloudbucket
ENV PATH=/opt/cloudbucket/bin:$PATH PYTHONUNBUFFERED=1
USER 10001
ENTRYPOINT []
CMD ["cloudbucket-csi", "--help"]
