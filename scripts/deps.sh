#!/usr/bin/env bash
# Installs what building weir needs and a fresh machine may lack: cmake, make and a C compiler
# (Pingora builds zlib-ng and ring from C, and the `weir` binary's allocator, jemalloc, builds
# with make), pkg-config, and protoc with protobuf's well-known
# types (the etcd client, `cluster:`, compiles etcd's protobuf definitions). Idempotent; sourced
# by run.sh and test.sh. Uses apt-get (Debian/Ubuntu), as root or through sudo.
set -euo pipefail

missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v cc >/dev/null 2>&1 || missing+=(gcc g++)
command -v make >/dev/null 2>&1 || missing+=(make)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
[ -e /usr/include/google/protobuf/descriptor.proto ] || missing+=(libprotobuf-dev)
if ((${#missing[@]})); then
  echo "weir: installing ${missing[*]} (needed to build Pingora and the etcd client)" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "weir: cargo is missing; install the Rust toolchain (https://rustup.rs) first" >&2
  exit 1
fi
