# Agent Passport: one small static image for every passport service
# (authority, proxy, fleet, healer, chaos, tools). The subcommand is the
# container's command, e.g. `docker run IMAGE proxy --listen 0.0.0.0:8080`.
#
#   docker build -t agentpassport/passport:dev --build-arg VERSION=$(git describe --always) .
#
# Build stage: always runs on the builder's own platform and cross-compiles
# (pure Go, CGO off), so multi-arch builds (buildx --platform) need no emulation.
FROM --platform=$BUILDPLATFORM golang:1.26 AS build
WORKDIR /src

# Modules first, so that editing code does not re-download them.
COPY go.mod go.sum ./
RUN go mod download

COPY . .
# Set by BuildKit for the platform being built; empty (the builder's own
# platform) with the legacy builder.
ARG TARGETOS
ARG TARGETARCH
ARG VERSION=dev
# CGO_ENABLED=0: a static binary that needs no libc, so it runs on distroless/static.
# -trimpath: no build-machine paths in the binary. -s -w: no symbol table or DWARF.
# -buildvcs=false: .git is not in the build context (.dockerignore); VERSION says what was built.
RUN CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -buildvcs=false -ldflags "-s -w -X main.version=${VERSION}" \
      -o /out/passport ./cmd/passport
# The agents' state directory (--credentials), owned by the nonroot user so
# that a named volume mounted there starts out writable by it.
RUN mkdir -p /out/state

# Run stage: distroless static (CA certificates, tzdata, /etc/passwd with the
# nonroot user; no shell, no package manager), running as uid/gid 65532.
# Nothing in the image can be used to pivot: there is no shell to exec into.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/passport /usr/local/bin/passport
# The policy library, so that a proxy can point its policy directory at it;
# deployments usually mount their own (docker-compose.yml, examples/kubernetes/).
COPY --from=build /src/policies /etc/passport/policies
COPY --from=build --chown=65532:65532 /out/state /var/lib/passport
# Never run as root, even if a platform ignores the base image's user.
USER 65532:65532
# proxy (agents), proxy admin (/metrics /healthz /readyz), authority,
# fleet control API, dashboard, healer, chaos.
EXPOSE 8080 9080 8081 9000 8090 9100 9092
ENTRYPOINT ["/usr/local/bin/passport"]
CMD ["--help"]
