# Quick start: `make demo` runs the demo, `make test` runs the whole test suite.
# Both install the Debian packages they need when missing (as root), or say how.

SWIFT ?= swift
DEBIAN_PACKAGES := libsodium-dev pkg-config
# Only some tests need these (they skip, saying what is missing, where they are not installed).
TEST_PACKAGES := tshark gcc g++ valgrind nftables python3 spin
# The strongSwan interop scenario (scripts/interop.sh, also run by the test suite as root).
INTEROP_PACKAGES := strongswan-charon strongswan-swanctl libcharon-extra-plugins libstrongswan-extra-plugins iputils-ping
# The keepalived deployment scenario (scripts/cluster.sh, also run by the test suite as root).
CLUSTER_PACKAGES := keepalived
# The Debian VM with the stock kernel (ESP and XFRM) that the kernel data-plane tests boot.
KERNEL_VM_PACKAGES := qemu-system-x86 debootstrap

PREFIX ?= /usr/local

.PHONY: demo test torture model-check install-c c-api load-sharing interop cluster xfrm-kernel interop-kernel build release deps soak fuzz fuzz-smoke test-sanitize docs bench bench-allocations bench-replay bench-state bench-sync bench-scale bench-udp bench-failover bench-delete clean

deps:
	@./scripts/ensure-debian-packages.sh $(DEBIAN_PACKAGES)

# In release: the simulation of 1,000 IKE SAs takes about a second there, ten in debug.
demo: deps
	$(SWIFT) run -c release ikeha-demo

# Deterministic hashing: the tests that replay torture seeds reproduce them exactly only with it
# (Swift iterates sets and dictionaries in a per-process order otherwise).
test: deps
	@./scripts/ensure-debian-packages.sh --optional $(TEST_PACKAGES) $(INTEROP_PACKAGES) $(CLUSTER_PACKAGES) $(KERNEL_VM_PACKAGES)
	$(SWIFT) build --build-tests
	SWIFT_DETERMINISTIC_HASHING=1 $(SWIFT) test --skip-build

# Short simulated runs, each under a fault schedule drawn from its seed (crashes of any member,
# reboots, partitions, one-way loss, delays, an arbiter, load-sharing moves), every invariant
# checked; one table at the end (Docs/Reliability.md). 2,000 schedules take four and a half
# minutes here on 2 cores, in release. FIRST_SEED=S for another range.
SCHEDULES ?= 2000
FIRST_SEED ?= 1
torture: deps
	$(SWIFT) build -c release --product ikeha-demo
	SWIFT_DETERMINISTIC_HASHING=1 $(SWIFT) run -c release --skip-build ikeha-demo torture --schedules $(SCHEDULES) --first-seed $(FIRST_SEED)

# The Promela models (Models/) checked with Spin for 2 and 3 members, and their broken
# variants refuted (about a minute and a half, 2 GB; MODEL_DEPTH=4 for a deeper leases run).
model-check:
	@./scripts/ensure-debian-packages.sh spin gcc
	./scripts/model-check.sh

# strongSwan across a member crash, with the negative controls (root; about 40 s): the
# reference gateway in release, charon from Debian, network namespaces made and removed here.
interop: deps
	@./scripts/ensure-debian-packages.sh $(INTEROP_PACKAGES)
	$(SWIFT) build -c release --product ikeha-gateway
	./scripts/interop.sh

# keepalived moves the address, the package moves the state: strongSwan, two members each with
# keepalived, a crash and a restart, at advert_int 0.01 s and 0.1 s, with the negative controls
# (root; about a minute).
cluster: deps
	@./scripts/ensure-debian-packages.sh $(INTEROP_PACKAGES) $(CLUSTER_PACKAGES)
	$(SWIFT) build -c release --product ikeha-gateway
	./scripts/cluster.sh

# Load sharing on real processes: three members steered by nftables, six charon peers, a member
# killed and restarted (root; about half a minute).
load-sharing: deps
	@./scripts/ensure-debian-packages.sh $(INTEROP_PACKAGES) nftables
	$(SWIFT) build -c release --product ikeha-gateway
	./scripts/load-sharing.sh

# IPsecHAXFRM against a real kernel: SAs in a Debian VM under qemu (root; the image is built
# once, about a minute, then each run takes about ten seconds).
xfrm-kernel: deps
	@./scripts/ensure-debian-packages.sh $(KERNEL_VM_PACKAGES)
	./scripts/xfrm-kernel.sh

# Failover with the kernel's ESP against strongSwan with the kernel's ESP, in that VM (root;
# about a minute and a half after the image).
interop-kernel: deps
	@./scripts/ensure-debian-packages.sh $(KERNEL_VM_PACKAGES)
	./scripts/interop-kernel.sh

# libipsecha for C daemons into $(PREFIX): the shared library (Swift runtime linked in, the C API
# alone exported), ipsecha.h and ipsecha.pc; then cc app.c $$(pkg-config --cflags --libs ipsecha)
# (Docs/EmbeddingFromC.md). A release build, about a minute here.
install-c: deps
	./scripts/install-c.sh "$(PREFIX)"

# The C API from C, also run by the test suite: the header under -std=c11 -pedantic, every entry
# point with bad arguments, a two-process failover, each plainly, under AddressSanitizer and
# valgrind (needs gcc, pkg-config and valgrind).
c-api: deps
	@./scripts/ensure-debian-packages.sh gcc g++ valgrind
	./scripts/c-api.sh

build: deps
	$(SWIFT) build

release: deps
	$(SWIFT) build -c release

# Every benchmark in release, one table with each figure beside its goal (a few minutes).
bench: deps
	./scripts/bench.sh

# The hot paths (replay check, counters, SPI lookup, SPD cache, checkpoint encoding) with
# allocation counts (ordo-one/benchmark, Benchmarks/): fails when one allocates other than
# Benchmarks/Thresholds says. After a deliberate change:
# (cd Benchmarks && swift package --allow-writing-to-package-directory benchmark thresholds update --metric mallocCountTotal)
bench-allocations: deps
	cd Benchmarks && swift package benchmark thresholds check --metric mallocCountTotal --no-progress

# The anti-replay window against a plain C implementation of the same RFC 6479 ring.
bench-replay: deps
	./Benchmarks/replay-vs-c.sh

# SAD and SPD cache lookups and memory per SA, with a million Child SAs (about a minute).
bench-state: deps
	$(SWIFT) run -c release ikeha-demo bench state

# Counter checkpoints through the synch channel, a bulk resync, tail-loss detection.
bench-sync: deps
	$(SWIFT) run -c release ikeha-demo bench sync

# How the standby's work grows: bulk resync, takeover plan, standby memory and checkpoint apply
# at 10,000, 100,000 and 1,000,000 IKE SAs (two Child SAs each), per SA at each size, with the
# goals of Docs/Replication.md. About a minute and 4 GB at the largest size.
bench-scale: deps
	$(SWIFT) run -c release ikeha-demo bench scale

# The bulk resync between two member processes over loopback UDP, beside the in-memory figure
# (IKE_SAS=N, default 100,000).
bench-udp: deps
	./scripts/bench-udp.sh

# The takeover plan for 100,000 IKE SAs and 200,000 Child SAs.
bench-failover: deps
	$(SWIFT) run -c release ikeha-demo bench failover

# A Delete through the IKEv2 responder with 100,000 Child SAs installed.
bench-delete: deps
	$(SWIFT) run -c release ikeha-demo bench delete

# A long simulated run (5 simulated minutes, 2,000 IKE SAs and no new ones, so that the state
# keeps its size; 20% synch loss; a crash and a
# restart at a time drawn from the seed), with the resident memory every tenth of the way:
# it must level off. A few minutes on this machine.
soak: deps
	$(SWIFT) run -c release ikeha-demo simulate --seed 11 --ike-sas 2000 --new-ike-sas-per-second 0 --duration-ms 300000 --sync-loss 0.2 --random-crash --soak

# The DocC catalogs of the public modules, warnings as errors, into .build/docs/html.
docs: deps
	./scripts/docs.sh

# libFuzzer targets of every decoder of network input (FuzzTesting/), with AddressSanitizer:
# a minute each, or ten seconds each for CI's smoke run.
fuzz: deps
	./scripts/fuzz.sh 60

fuzz-smoke: deps
	./scripts/fuzz.sh 10

# The test suite under AddressSanitizer, then ThreadSanitizer (a release check: each builds the
# whole package again, several minutes here).
test-sanitize: deps
	$(SWIFT) build --build-tests --sanitize=address --scratch-path .build/asan
	LSAN_OPTIONS=suppressions=$(CURDIR)/scripts/lsan-suppressions.txt $(SWIFT) test --skip-build --sanitize=address --scratch-path .build/asan
	$(SWIFT) build --build-tests --sanitize=thread --scratch-path .build/tsan
	$(SWIFT) test --skip-build --sanitize=thread --scratch-path .build/tsan

clean:
	rm -rf .build
