# Quick start: `make demo` runs the demo, `make test` runs the whole test suite.
# Both install the Debian packages they need when missing (as root), or say how.

SWIFT ?= swift
DEBIAN_PACKAGES := libsodium-dev pkg-config

.PHONY: demo test build release deps bench-replay bench-state bench-sync bench-failover clean

deps:
	@./scripts/ensure-debian-packages.sh $(DEBIAN_PACKAGES)

# In release: the simulation of 1,000 IKE SAs takes about a second there, ten in debug.
demo: deps
	$(SWIFT) run -c release ikeha-demo

test: deps
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build

build: deps
	$(SWIFT) build

release: deps
	$(SWIFT) build -c release

# The anti-replay window against a plain C implementation of the same RFC 6479 ring.
bench-replay: deps
	./Benchmarks/replay-vs-c.sh

# SAD and SPD cache lookups and memory per SA, with a million Child SAs (about a minute).
bench-state: deps
	$(SWIFT) run -c release ikeha-demo bench state

# Counter checkpoints through the synch channel, a bulk resync, tail-loss detection.
bench-sync: deps
	$(SWIFT) run -c release ikeha-demo bench sync

# The takeover plan for 100,000 IKE SAs and 200,000 Child SAs.
bench-failover: deps
	$(SWIFT) run -c release ikeha-demo bench failover

clean:
	rm -rf .build
