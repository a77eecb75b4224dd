# syntax=docker/dockerfile:1
# turnd container image: built in the Rust image, run on Debian slim as the
# non-root user turnd (uid 10001, as deploy/kubernetes/daemonset.yaml expects).
#
#   docker build -t turnd:0.1.0 .
#   docker run --network host -v /etc/turnd:/etc/turnd:ro turnd:0.1.0
#
# Host networking: a TURN relay needs its whole relay port range reachable,
# which `-p` cannot publish sensibly. The image carries deploy/turnd.toml as
# /etc/turnd/turnd.toml; mount your own config over /etc/turnd. That file also
# listens on [::]: on a host without IPv6, mount one without those listeners.
# CI has no Docker engine, so this file is checked by reading (tests/deploy.rs
# checks what it copies and who it runs as), not by building it.

FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target dir between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin turnd \
    && install -D -m 0755 target/release/turnd /out/turnd

# Same Debian release as the build stage: the binary links against its glibc.
FROM debian:bookworm-slim
RUN groupadd --system --gid 10001 turnd \
    && useradd --system --uid 10001 --gid turnd --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin turnd
COPY --from=build /out/turnd /usr/bin/turnd
COPY --chown=root:turnd --chmod=0640 deploy/turnd.toml /etc/turnd/turnd.toml
USER turnd:turnd
# STUN/TURN (UDP and TCP), the admin listener (bound to 127.0.0.1 in the
# default config), and the relay range in [relay].
EXPOSE 3478/udp 3478/tcp 9641/tcp 49152-65535/udp
# `turnd serve` reads the config file named here unless given -c.
ENV TURND_CONFIG=/etc/turnd/turnd.toml
# SIGTERM starts a drain; give `docker stop` a longer timeout (-t 60) for it.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/turnd"]
CMD ["serve"]
