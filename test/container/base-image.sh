#!/usr/bin/env bash
# Provides docker.io/library/debian:bookworm-slim in podman's local store, for
# machines that reach Debian's package archive but no container registry.
#
#   test/container/base-image.sh
#
# Does nothing when the image is already there. Otherwise builds a minbase
# Debian 12 root file system with debootstrap from the Debian mirror the host's
# apt uses (read from /etc/apt at run time; DEBIAN_MIRROR overrides it) and
# imports it under that name, with apt inside set up like the host's so that
# `apt-get update && apt-get install` works in a Dockerfile's RUN.
# Needs root (debootstrap), podman and debootstrap (scripts/bootstrap test).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"

image=docker.io/library/debian:bookworm-slim
suite=bookworm
keyring=/usr/share/keyrings/debian-archive-keyring.gpg

die() {
  echo "base-image: $*" >&2
  exit 1
}

command -v podman >/dev/null || die "podman is not installed (scripts/bootstrap test)"
if podman image exists "$image"; then
  exit 0
fi
command -v debootstrap >/dev/null || die "debootstrap is not installed (scripts/bootstrap test)"
[ "$(id -u)" -eq 0 ] || die "debootstrap needs root"
[ -r "$keyring" ] || die "missing $keyring (package debian-archive-keyring)"

# Prints "SUITE URI" for every enabled binary source of the host's apt: the
# one-line sources.list and *.list files first, then the deb822 *.sources.
host_sources() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -r "$f" ] || continue
    awk '$1 == "deb" {
      i = 2
      if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
      if (i + 1 <= NF) print $(i + 1), $i
    }' "$f"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -r "$f" ] || continue
    awk '
      function flush(   nu, ns, i, j, U, S) {
        if (types ~ /(^|[ \t])deb([ \t]|$)/ && enabled != "no") {
          nu = split(uris, U, /[ \t]+/)
          ns = split(suites, S, /[ \t]+/)
          for (i = 1; i <= nu; i++)
            for (j = 1; j <= ns; j++)
              if (U[i] != "" && S[j] != "") print S[j], U[i]
        }
        types = uris = suites = enabled = ""
      }
      /^#/ { next }
      /^[ \t]*$/ { flush(); next }
      /^[ \t]/ { next }
      {
        key = tolower($0); sub(/:.*/, "", key)
        val = $0; sub(/^[^:]*:[ \t]*/, "", val)
        if (key == "types") types = val
        else if (key == "uris") uris = val
        else if (key == "suites") suites = val
        else if (key == "enabled") enabled = tolower(val)
      }
      END { flush() }' "$f"
  done
}

sources=$(host_sources)
mirror=${DEBIAN_MIRROR:-$(awk -v s="$suite" '$1 == s { print $2; exit }' <<<"$sources")}
if [ -z "$mirror" ]; then
  # A host on another release still names a Debian mirror; take its first
  # non-security one.
  mirror=$(awk '$1 !~ /-security$/ { print $2; exit }' <<<"$sources")
fi
[ -n "$mirror" ] || die "no Debian mirror found in /etc/apt (set DEBIAN_MIRROR)"
mirror=${mirror%/}
security=$(awk '$1 ~ /-security$/ { print $2; exit }' <<<"$sources")
security=${security%/}

tmp=$(mktemp -d /var/tmp/base-image.XXXXXX)
rootfs=$tmp/rootfs
group= # process group of a running debootstrap
cleanup() {
  # debootstrap may leave proc, sys or bind-mounted /dev entries behind when
  # stopped: unmount everything below $tmp, deepest first, before removing.
  local m
  while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done < <(awk -v t="$tmp/" 'index($2, t) == 1 { print $2 }' /proc/self/mounts | sort -r)
  rm -rf --one-file-system "$tmp"
}
interrupted() {
  if [ -n "$group" ]; then
    kill -TERM -- "-$group" 2>/dev/null || true
    for _ in $(seq 50); do
      kill -0 -- "-$group" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL -- "-$group" 2>/dev/null || true
    wait 2>/dev/null || true
  fi
  echo "base-image: interrupted" >&2
  exit "$1"
}
trap cleanup EXIT
trap 'interrupted 130' INT
trap 'interrupted 143' TERM

# debootstrap runs in a process group of its own, waited for with `wait`, so
# that a signal reaches the trap at once and stops all of debootstrap's
# children (dpkg in the chroot, downloads) before the tree is removed.
setsid -w debootstrap --variant=minbase --keyring="$keyring" "$suite" "$rootfs" "$mirror" \
  >"$tmp/debootstrap.log" 2>&1 &
group=$!
if ! wait "$group"; then
  group=
  tail -n 30 "$tmp/debootstrap.log" >&2
  if [ -f "$rootfs/debootstrap/debootstrap.log" ]; then
    tail -n 30 "$rootfs/debootstrap/debootstrap.log" >&2
  fi
  die "debootstrap $suite from $mirror failed"
fi
group=

# apt inside the image: the host's mirrors, and the host's Acquire settings
# that reaching them may need (a snapshot mirror's expired Valid-Until, a
# proxy), plus the usual slim-image trimming.
rm -f "$rootfs/etc/apt/sources.list"
{
  printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\nSigned-By: %s\n' \
    "$mirror" "$suite" "$suite" "$keyring"
  if [ -n "$security" ]; then
    printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\nSigned-By: %s\n' \
      "$security" "$suite" "$keyring"
  fi
} >"$rootfs/etc/apt/sources.list.d/debian.sources"

acquire=$(apt-config dump | grep -E '^Acquire::(Check-Valid-Until|Check-Date|https?::Proxy|ftp::Proxy) ' || true)
if [ -n "$acquire" ]; then
  printf '%s\n' "$acquire" >"$rootfs/etc/apt/apt.conf.d/90host-acquire"
fi
cat >"$rootfs/etc/apt/apt.conf.d/90slim" <<'CONF'
Acquire::Languages "none";
Acquire::GzipIndexes "true";
APT::Install-Recommends "false";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CONF
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/90slim" <<'CONF'
force-unsafe-io
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
CONF
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
  "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/* "$rootfs/debootstrap"
find "$rootfs"/usr/share/doc -mindepth 1 -not -name copyright -not -type d -delete
find "$rootfs"/usr/share/man "$rootfs"/usr/share/info "$rootfs"/usr/share/locale \
  -mindepth 1 -not -name locale.alias -not -type d -delete 2>/dev/null || true
: >"$rootfs/etc/hostname"
: >"$rootfs/etc/resolv.conf"

if ! tar --numeric-owner --xattrs -C "$rootfs" -cf - . |
  podman import --quiet \
    --change 'ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD=["bash"]' \
    --message "debootstrap --variant=minbase $suite" \
    - "$image" >/dev/null; then
  die "podman import of $image failed"
fi
