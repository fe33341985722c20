# Agent Passport. `make run` brings up the whole demo; `make test` runs every test.
GO       ?= go
OPA_VER  := v1.22.3
OPA      := $(GO) run github.com/open-policy-agent/opa@$(OPA_VER)
BIN      := bin/passport
DATA     ?= .passport
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
# bash with pipefail: a failing `go test -json` fails `make test` even though its output goes through a pipe.
SHELL        := /bin/bash
.SHELLFLAGS  := -o pipefail -c

.PHONY: all build run test test-short test-cluster deps deps-test lint fmt vet bench fuzz clean

all: build

build:
	$(GO) build -trimpath -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/passport

deps:
	$(GO) mod download
	scripts/deps.sh redis

deps-test: deps
	scripts/deps.sh chromium
	scripts/deps.sh openssl

## run: the whole demo stack (authority, proxy, fleet, healer, chaos, dashboard) on loopback.
run: deps build
	$(BIN) up --data $(DATA)

## test: vet, the Rego library's tests, and every Go test with the race detector: about 7 minutes on two
## cores, a line per package as each finishes (scripts/testprogress.go), the full output of any that fails.
test: deps-test
	@echo "make test: go vet, then every package's tests with the race detector (about 7 minutes on two cores)"
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 30m -json ./... | $(GO) run scripts/testprogress.go -expect "about 7 minutes on two cores"

test-short:
	$(GO) test -short ./...

## test-cluster: the end-to-end tests of internal/stack (the whole demo) on a private Redis Cluster of
## 3 primaries and 3 replicas instead of one redis-server (build tag cluster); not part of make test.
test-cluster: deps-test
	$(GO) test -race -count=1 -timeout 30m -tags cluster ./internal/stack/

## lint: gofmt, go vet, opa fmt and opa check on policies/.
lint:
	@test -z "$$(gofmt -l .)" || (echo "gofmt needed on:"; gofmt -l .; exit 1)
	$(GO) vet ./...
	$(OPA) fmt --list --fail policies/
	$(OPA) check --strict policies/

fmt:
	gofmt -w .
	$(OPA) fmt --write policies/

## bench: the proxy under load (upstream direct, bare ReverseProxy, full path, deny path, a GET with and without a budget,
## full path over TLS, and nginx auth_request
## to an OPA server as the comparison point; 100 keep-alive connections; req/s, p50, p99, ratios; fixed rates
## 1000 and 3000 req/s beside the disk's own flush p99; three interleaved rounds, medians shown), then the Go micro-benchmarks of the hot path.
## Without nginx the comparison is skipped.
## BENCHFLAGS="-duration 10s -fsync everysec" tunes the load run (go run ./internal/bench -h lists the flags).
BENCHFLAGS ?=
bench: deps build
	scripts/deps.sh nginx || true
	$(GO) run ./internal/bench $(BENCHFLAGS)
	$(GO) test -run '^$$' -bench . -benchmem -cpu 1 ./proxy/ ./proxy/policy/ ./policies/ ./audit/
	$(GO) test -run '^$$' -bench ChaosToResolved -benchtime=10x ./healer/

## fuzz: each fuzz target for FUZZTIME (default 20s). One target: go test -fuzz FuzzVerify ./proxy/
FUZZTIME ?= 20s
fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz'); do \
	    echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	  done; \
	done

clean:
	rm -rf bin $(DATA)
