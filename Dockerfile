# syntax=docker/dockerfile:1
# clvm-snapshot-agent: one pod per KVM hypervisor (helm/clvm-snapshot-agent runs it as a DaemonSet).
# Build:  docker build -t clvm-snapshot-agent:0.1.0 .
# Both stages use the same Node 24 LTS base, so native bits (none today) would match.

# ---- build: all dependencies, TypeScript → dist/ ----
FROM node:24-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build

# ---- runtime: production dependencies and the host tools the adapters call ----
FROM node:24-bookworm-slim AS runtime
# qemu-utils:      qemu-img (export, rebase, check, compare, measure, map, commit) and qemu-io
# lvm2:            lvm, lvs, vgs, lvcreate, lvremove, lvrename, lvchange
# libvirt-clients: virsh (domain state, disk list, QMP through qemu-monitor-command)
# util-linux:      losetup, mount, nsenter (reflink clones are made in-process)
# tini:            PID 1: forwards SIGTERM to node (graceful job drain) and reaps tool processes
# qemu-system-x86 is NOT installed: QEMU runs on the host under libvirtd; the agent asks libvirt
# for its version and QMP commands (the capability probe reports the missing binary as null).
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      qemu-utils lvm2 libvirt-clients util-linux tini ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# LVM from inside the container uses the HOST's lvm2 state, mounted by the chart:
#  /etc/lvm       the host's lvm.conf (filters, use_lvmlockd, system_id): same view of the VGs;
#  /run/lvm       lvmlockd's socket and lvm2's runtime files: shared VG locks (lvmlockd + sanlock);
#  /run/lock/lvm  lvm2's file locks: the agent's and the host's LVM commands serialise;
#  /dev           the device-mapper nodes and the PVs.
# There is no udev in the container, so libdevmapper creates and removes the /dev/mapper nodes
# itself instead of waiting for udev confirmations that never come.
ENV DM_DISABLE_UDEV=1 \
    LVM_SUPPRESS_FD_WARNINGS=1 \
    NODE_ENV=production

WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force
COPY --from=build /app/dist ./dist
COPY config ./config
# The dashboard's static files are served from src/dashboard/public (resolved from dist/).
COPY src/dashboard/public ./src/dashboard/public

# Runs as root on purpose: the agent creates, renames and removes LVs (device-mapper ioctls on
# /dev/mapper), opens block devices, talks to the root-owned libvirt socket, and writes QCOW2
# files that QEMU (root on CloudStack hosts) opens. The pod is privileged on a hypervisor node;
# a non-root user would need the same capabilities (CAP_SYS_ADMIN...) and gain nothing.
USER root

# Health and metrics (config http.port): /livez, /readyz, /metrics.
EXPOSE 9464
# The check reads the agent's configuration (AGENT_CONFIG, environment) for http.host/http.port,
# so a port changed there is followed (a fixed 9464 here would report a healthy agent unhealthy).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
  CMD ["node", "dist/service/healthcheck.js"]

ENTRYPOINT ["/usr/bin/tini", "--"]
# node directly (not npm): signals reach the agent, and no npm process sits in between.
# A small, steady footprint (docs/benchmarks.md, "Agent memory"): a 1 MiB young generation,
# size-optimising heap growth, GC on the main thread only and two malloc arenas keep the agent
# under 80 MB of RSS after 10,000 commands (was ~115 MB); it is I/O-bound, the extra GC work
# does not show.
ENV MALLOC_ARENA_MAX=2
CMD ["node", "--max-semi-space-size=1", "--optimize-for-size", "--single-threaded-gc", "dist/main.js"]
