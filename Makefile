# Postern: `make demo` runs the gateway on its demo default, `make ha-demo` two of them behind HAProxy; `make test` runs the whole suite.
SWIFT ?= swift
BUILD_FLAGS ?=

.PHONY: demo ha-demo test deps certs build release install clean-var fuzz security bench

PREFIX ?= /usr/local

deps:
	@scripts/install-deps.sh

certs:
	@certs/make-dev-certs.sh >/dev/null

build: deps
	$(SWIFT) build $(BUILD_FLAGS)

# The gateway in the foreground with dev certificates, a throwaway directory (var/) and the demo policy.
demo: deps certs
	$(SWIFT) build $(BUILD_FLAGS)
	scripts/demo.sh

# Two gateways behind HAProxy (TCP mode, PROXY v2) with their own spools and one policy copy (var/ha/); README "High availability".
ha-demo: deps certs
	$(SWIFT) build $(BUILD_FLAGS)
	scripts/ha-demo.sh

# Builds and runs every test: unit tests and integration tests against real listeners, slapd and upstreams.
test: deps certs
	$(SWIFT) build --build-tests $(BUILD_FLAGS)
	$(SWIFT) test --skip-build $(BUILD_FLAGS)
	SWIFT=$(SWIFT) scripts/fuzz.sh 20000

# libFuzzer over the wire format and the session state machine (FUZZ_RUNS inputs, default 200000), then the
# whole-pipeline property test (listener, session, spool, relay, upstream) with PIPELINE_TRANSACTIONS random
# transactions (default 5000) from a random seed; `make test` runs 300 from a fixed one.
PIPELINE_TRANSACTIONS ?= 5000
fuzz:
	SWIFT=$(SWIFT) scripts/fuzz.sh $(FUZZ_RUNS)
	$(SWIFT) build --build-tests $(BUILD_FLAGS)
	POSTERN_PIPELINE_TRANSACTIONS=$(PIPELINE_TRANSACTIONS) POSTERN_PIPELINE_SEED=random $(SWIFT) test --skip-build $(BUILD_FLAGS) --filter PipelinePropertyTests

# sslyze (Mozilla intermediate) against the TLS endpoints and nmap smtp-open-relay against the device endpoint.
security: deps certs
	scripts/security.sh

# Benchmarks against Postfix on this machine (loopback, bounded); see BENCHMARKS.md. Release build.
bench: deps
	$(SWIFT) build -c release --scratch-path .build-release --product postern
	$(SWIFT) build -c release --scratch-path .build-release --product postern-load
	bench/run.sh

# Puts a release build of `postern` on PATH: $(PREFIX)/bin/postern (PREFIX=$$HOME/.local for a user install).
install: deps
	$(SWIFT) build -c release --scratch-path .build-release --product postern
	install -d $(PREFIX)/bin
	install -m 0755 .build-release/release/postern $(PREFIX)/bin/postern

clean-var:
	rm -rf var
