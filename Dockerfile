# gracefuld container image.
#
#   podman build -t gracefuld .        (or: docker build -t gracefuld .)
#   podman run --rm --read-only --cap-drop ALL -p 8080:8080 \
#     -e REDIS_ADDR=redis:6379 gracefuld
#
# Two stages: a Debian 12 build stage compiles a Release binary, and the final
# image is FROM scratch with only the binary, the shared libraries it loads,
# the files glibc reads to resolve names and users, and a nonroot user. No
# shell, no package manager. BASE may name another Debian 12 image
# (--build-arg BASE=...); test/container/base-image.sh provides the default one
# on machines that reach no container registry.

ARG BASE=debian:bookworm-slim

FROM ${BASE} AS build
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential cmake pkg-config libuv1-dev libhiredis-dev libssl-dev \
      node-llhttp ca-certificates \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .
RUN cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DGRACEFULD_TESTS=OFF \
 && cmake --build build -j

# /out becomes the final image's root file system.
#  - the binary, stripped;
#  - every shared library ldd lists, at the path ldd gives (the dynamic
#    loader included, at the path the binary's PT_INTERP names), plus
#    libgcc_s.so.1, which glibc loads at run time should a thread ever exit
#    through pthread_exit or cancellation (libuv runs a thread pool);
#  - /etc/nsswitch.conf naming "hosts: files dns", so that a name the
#    runtime writes into /etc/hosts (--add-host, a pod's hostAliases) wins
#    over DNS, as REDIS_ADDR=redis:6379 needs. glibc 2.36 already uses that
#    order when the file is missing; the file pins it. glibc 2.36 has the
#    files and dns services built in, so no libnss_*.so is needed;
#  - /etc/passwd and /etc/group with user and group 65532 (nonroot);
#  - the system's CA bundle (Debian's ca-certificates) as OpenSSL's default
#    file, /usr/lib/ssl/cert.pem, for rediss:// without REDIS_TLS_CA_FILE;
#  - an empty /tmp.
RUN set -eu; \
    out=/out; \
    multiarch=$(gcc -print-multiarch); \
    mkdir -p "$out/etc" "$out/tmp"; \
    chmod 1777 "$out/tmp"; \
    install -m 0755 build/gracefuld "$out/gracefuld"; \
    strip --strip-unneeded "$out/gracefuld"; \
    deps=$(ldd build/gracefuld); \
    case $deps in *'not found'*) echo "$deps" >&2; exit 1 ;; esac; \
    for lib in $(echo "$deps" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do \
      mkdir -p "$out${lib%/*}"; \
      cp -L "$lib" "$out$lib"; \
    done; \
    mkdir -p "$out/lib/$multiarch"; \
    cp -L "/usr/lib/$multiarch/libgcc_s.so.1" "$out/lib/$multiarch/"; \
    mkdir -p "$out/usr/lib/ssl"; \
    cp -L /etc/ssl/certs/ca-certificates.crt "$out/usr/lib/ssl/cert.pem"; \
    printf '%s\n' 'passwd: files' 'group: files' 'shadow: files' 'hosts: files dns' \
      >"$out/etc/nsswitch.conf"; \
    printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' \
      'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
      'nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin' >"$out/etc/passwd"; \
    printf '%s\n' 'root:x:0:' 'nogroup:x:65534:' 'nonroot:x:65532:' >"$out/etc/group"; \
    chmod 0644 "$out/etc/nsswitch.conf" "$out/etc/passwd" "$out/etc/group"; \
    interp=$(readelf -l "$out/gracefuld" | sed -n 's/.*interpreter: \(.*\)]$/\1/p'); \
    [ -x "$out$interp" ]; \
    deps=$(chroot "$out" "$interp" --list /gracefuld); \
    case $deps in *'not found'*) echo "$deps" >&2; exit 1 ;; esac

FROM scratch
COPY --from=build /out/ /
USER 65532:65532
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["/gracefuld"]
