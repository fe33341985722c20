# Agent Passport. `make run` brings up the whole demo; `make test` runs every test.
GO       ?= go
OPA_VER  := v1.22.3
OPA      := $(GO) run github.com/open-policy-agent/opa@$(OPA_VER)
BIN      := bin/passport
DATA     ?= .passport
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)

.PHONY: all build run test test-short deps deps-test lint fmt vet bench fuzz clean

all: build

build:
	$(GO) build -trimpath -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/passport

deps:
	$(GO) mod download
	scripts/deps.sh redis

deps-test: deps
	scripts/deps.sh chromium

## run: the whole demo stack (authority, proxy, fleet, healer, chaos, dashboard) on loopback.
run: deps build
	$(BIN) up --data $(DATA)

## test: vet, the Rego library's tests, and every Go test with the race detector.
test: deps-test
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 30m ./...

test-short:
	$(GO) test -short ./...

## lint: gofmt, go vet, opa fmt and opa check on policies/.
lint:
	@test -z "$$(gofmt -l .)" || (echo "gofmt needed on:"; gofmt -l .; exit 1)
	$(GO) vet ./...
	$(OPA) fmt --list --fail policies/
	$(OPA) check --strict policies/

fmt:
	gofmt -w .
	$(OPA) fmt --write policies/

## bench: throughput and latency of the proxy paths, and the Go micro-benchmarks.
bench: deps build
	$(GO) test -run '^$$' -bench . -benchmem ./...

fuzz:
	@echo "run one fuzz target, e.g.: go test -fuzz FuzzVerify ./proxy/"

clean:
	rm -rf bin $(DATA)
