# syntax=docker/dockerfile:1
# mcp-fanout container image: build with `docker build -t <registry>/mcp-fanout:0.1.0 .`
# (BuildKit). The runtime image is distroless (glibc + CA certificates, no shell, no package
# manager) and runs as the non-root user 65532; the Helm chart sets the same user and a
# read-only root filesystem.

ARG RUST_VERSION=1

FROM rust:${RUST_VERSION}-bookworm AS build
# The binary is built with profile-guided optimisation (scripts/build-pgo): an instrumented build
# runs through the bench's scenarios, then the release build uses its counts. The training run
# starts Postgres, nginx (its static MCP upstream) and wrk; llvm-tools merges the counts.
# `--build-arg PGO=0` builds without it (faster to build; 25-30 % more CPU per proxied request).
# The tools stay in this stage, not in the image, so their versions are Debian's current ones,
# not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql nginx wrk procps \
 && rm -rf /var/lib/apt/lists/* \
 && rustup component add llvm-tools
WORKDIR /src
# The whole workspace (testkit is a member, so Cargo needs its manifest); .dockerignore keeps
# target/, .git/ and the chart out of the context.
COPY . .
ARG PGO=1
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    if [ "$PGO" = 1 ]; then \
      ./scripts/build-pgo /out/mcp-fanout; \
    else \
      cargo build --release --locked --bin mcp-fanout \
      && install -D -m 0755 target/release/mcp-fanout /out/mcp-fanout; \
    fi

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="mcp-fanout" \
      org.opencontainers.image.description="Fans MCP server notifications out to every SSE subscriber on every replica" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
COPY --from=build /out/mcp-fanout /usr/local/bin/mcp-fanout
USER 65532:65532
# 8080: public listener (subscribers). 9090: admin, probes and metrics, when FANOUT_ADMIN_ADDR
# is set (the chart sets FANOUT_ADMIN_ADDR=0.0.0.0:9090).
EXPOSE 8080 9090
ENV FANOUT_ADDR=0.0.0.0:8080
# No transparent huge pages from the allocator's first moments: the binary turns them off itself
# when main starts (src/allocator.rs), but mimalloc starts before main and would fault its first
# ranges as 2 MB pages (3 MB more resident for good, measured).
ENV MIMALLOC_ALLOW_THP=0
# The binary is PID 1 and handles SIGTERM itself (readiness off, drain, clean stream ends).
ENTRYPOINT ["/usr/local/bin/mcp-fanout"]
CMD ["serve"]
