#!/usr/bin/env bash
# `make images`: the module and the control service as OCI image layout directories,
# built without a container daemon or a registry (GNU tar for the layers, umoci for the
# layout). Usage: tools/images.sh WASM CONTROL_BINARY OUT_DIR
#
#   OUT_DIR/gatehouse-wasm     the Wasm image spec's "compat" variant (solo-io/wasm,
#                              spec-compat.md), the one Istio's WasmPlugin and Envoy
#                              Gateway both fetch: one application/vnd.oci.image.layer.v1.tar+gzip
#                              layer holding plugin.wasm and nothing else, and the manifest
#                              annotation module.wasm.image/variant=compat.
#   OUT_DIR/gatehouse-control  the static binary on an empty base: user 65532:65532, the
#                              SQLite directory /var/lib/gatehouse a volume it owns, port 8081.
#
# Each is tagged with the workspace version, and its manifest carries the standard
# org.opencontainers.image.* annotations (version, source, revision, created). Reproducible
# from a given commit: every timestamp is the commit's time, files have fixed owners and
# modes, and entries are sorted; a build from a changed tree says `-dirty` in its revision.
# No secret goes into an image: the tokens come from the environment at run time.
set -euo pipefail

if [ $# -ne 3 ]; then
  echo "usage: $0 WASM CONTROL_BINARY OUT_DIR" >&2
  exit 2
fi
wasm=$1 control=$2 out=$3

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
source_url=$(sed -n 's/^repository = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
revision=$(git rev-parse HEAD)
if [ -n "$(git status --porcelain)" ]; then
  revision="$revision-dirty"
fi
epoch=$(git log -1 --format=%ct)
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

# ustar: no extended headers to vary, and every name here fits.
layer_tar() {
  tar --format=ustar --sort=name --mtime="@$epoch" --numeric-owner --no-recursion "$@"
}

# The module's layer: plugin.wasm at the root, as the spec names it.
mkdir "$stage/wasm"
install -m 0444 "$wasm" "$stage/wasm/plugin.wasm"
layer_tar --owner=0 --group=0 -C "$stage/wasm" -cf "$stage/wasm.tar" plugin.wasm

# The control service's root: the binary, /tmp for SQLite's temporary files, and
# /etc/passwd and /etc/group naming the user, so tools show `nonroot`, not a number.
root=$stage/control
mkdir -p "$root/etc" "$root/tmp" "$root/usr/local/bin" "$root/var/lib/gatehouse"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/var/lib/gatehouse:/sbin/nologin\n' \
  >"$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
install -m 0755 "$control" "$root/usr/local/bin/gatehouse-control"
chmod 0755 "$root/etc" "$root/usr" "$root/usr/local" "$root/usr/local/bin" "$root/var" \
  "$root/var/lib"
chmod 0644 "$root/etc/passwd" "$root/etc/group"
chmod 1777 "$root/tmp"
# Owned by the service's user: a fresh volume (Docker's, or a Kubernetes volume without
# fsGroup) takes the image directory's owner, and the service must create its database.
chmod 0700 "$root/var/lib/gatehouse"
layer_tar --owner=0 --group=0 -C "$root" -cf "$stage/control.tar" \
  etc etc/group etc/passwd tmp usr usr/local usr/local/bin usr/local/bin/gatehouse-control \
  var var/lib
layer_tar --owner=65532 --group=65532 -C "$root" -rf "$stage/control.tar" var/lib/gatehouse

# The annotations of both manifests, also set as the configs' labels (what `docker
# inspect` shows).
common=(
  "org.opencontainers.image.version=$version"
  "org.opencontainers.image.source=$source_url"
  "org.opencontainers.image.revision=$revision"
  "org.opencontainers.image.created=$created"
  "org.opencontainers.image.licenses=Apache-2.0"
)

# image NAME LAYER_TAR DESCRIPTION [umoci config options...]
image() {
  local name=$1 layer=$2 description=$3
  shift 3
  local dir=$out/$name
  local -a meta=()
  local kv
  for kv in "${common[@]}" "org.opencontainers.image.title=$name" \
    "org.opencontainers.image.description=$description"; do
    meta+=(--manifest.annotation "$kv" --config.label "$kv")
  done
  rm -rf "$dir"
  mkdir -p "$out"
  umoci init --layout "$dir"
  umoci new --image "$dir:$version"
  umoci raw add-layer --image "$dir:$version" --history.created "$created" \
    --history.created_by "make images (tools/images.sh)" "$layer"
  umoci config --image "$dir:$version" --no-history --created "$created" "${meta[@]}" "$@"
  # Drops the blobs of the manifests and configs the steps above replaced.
  umoci gc --layout "$dir"
  echo "$dir: $(cat "$dir"/blobs/sha256/* | wc -c) bytes of blobs ($name:$version, revision $revision)"
}

image gatehouse-wasm "$stage/wasm.tar" \
  "The gatehouse proxy-wasm module (Wasm image spec, compat variant)" \
  --manifest.annotation module.wasm.image/variant=compat

image gatehouse-control "$stage/control.tar" \
  "The gatehouse control service: keys, revocations and the proxies' key feed" \
  --config.user 65532:65532 \
  --config.entrypoint /usr/local/bin/gatehouse-control \
  --config.cmd serve \
  --config.env GATEHOUSE_CONTROL_LISTEN=0.0.0.0:8081 \
  --config.env GATEHOUSE_DATABASE_URL=sqlite:///var/lib/gatehouse/control.db \
  --config.exposedports 8081/tcp \
  --config.volume /var/lib/gatehouse \
  --config.workingdir /var/lib/gatehouse \
  --config.stopsignal SIGTERM
