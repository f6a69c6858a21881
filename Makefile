# switchyard's build, test and demo entry points. Every target installs what
# it needs (Debian packages through apt-get, Go modules through the module
# proxy), so a fresh machine needs only Go, make and root.

GO        ?= go
BIN       := bin
PKGS      := ./...
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
APT_PKGS  := iptables nftables ipset ipvsadm conntrack iproute2 procps
# Test timeout per package run; make test as a whole stays under 25 minutes.
TEST_TIMEOUT ?= 15m

.PHONY: all build deps test test-cluster test-vm test-vm-full unit lint demo clean

all: build

## deps: install the kernel tools the tests and the demo drive, and the Go modules.
deps:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo ">> installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	$(GO) mod download

## build: the switchyard binary in bin/.
build:
	$(GO) build -o $(BIN)/switchyard ./cmd/switchyard

## test: everything CI runs: lint, unit tests, real-kernel tests in network
## namespaces, the end-to-end suite against a real kube-apiserver, and the
## IPVS suite inside a throwaway VM.
test: deps lint
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) $(PKGS)
	$(MAKE) test-cluster
	$(MAKE) test-vm

## test-cluster: build the test control plane (kube-apiserver + etcd; a cold
## build takes minutes and ~3 GB of RAM), then run its tests and the e2e suite
## (which also builds upstream kube-proxy from the same go.mod for the
## takeover test, into .cache/bin).
test-cluster:
	cd test/cluster && $(GO) vet ./... && \
		$(GO) build -o ../../.cache/bin/swy-testcluster ./cmd/swy-testcluster && \
		SWY_TESTCLUSTER_BIN=$(CURDIR)/.cache/bin/swy-testcluster $(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...
	cd test/cluster/e2e && $(GO) vet . && \
		SWY_TESTCLUSTER_BIN=$(CURDIR)/.cache/bin/swy-testcluster $(GO) test -count=1 -timeout $(TEST_TIMEOUT) .

## test-vm: the IPVS suite in a throwaway VM with Debian's stock kernel
## (the test machines' kernel has no IPVS): builds switchyard and the test
## binaries on the host, boots the VM once (test/vm/run installs qemu and
## fetches the kernel) and runs the ipvs package's real-kernel test and the
## end-to-end suite (test/ipvs-e2e) there. The 10k benchmark: see
## test/ipvs-e2e/README.md.
VM_TEST_DIR := /var/tmp/swy-test-vm
# In make test: the live-process suite (scheduler, eTP Local, graceful
# termination, restart recovery, idempotence, cleanup) and the scenario
# table under its first proxy configuration; emulation makes the rest slow.
VM_TEST_ARGS ?= -test.skip '^TestScenarios$$/^(no-cluster-cidr|masquerade-all)$$'
VM_TIMEOUT ?= 1800
test-vm: deps
	mkdir -p $(VM_TEST_DIR)
	$(GO) build -o $(VM_TEST_DIR)/switchyard ./cmd/switchyard
	$(GO) test -c -o $(VM_TEST_DIR)/ipvs.test ./ipvs
	$(GO) test -c -o $(VM_TEST_DIR)/ipvs-e2e.test ./test/ipvs-e2e
	SWY_SWITCHYARD_BIN=$(VM_TEST_DIR)/switchyard SWY_BENCH_SERVICES=1000 VM_TIMEOUT=$(VM_TIMEOUT) \
		test/vm/run sh test/ipvs-e2e/vm-suite.sh $(VM_TEST_DIR) $(CURDIR) \
		-test.timeout 30m $(VM_TEST_ARGS)

## test-vm-full: test-vm with every scenario configuration and the 1k benchmark.
test-vm-full:
	$(MAKE) test-vm VM_TEST_ARGS="-test.bench IPVSSync -test.benchtime 1x" VM_TIMEOUT=3600

## unit: the tests without the lint step.
unit:
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) $(PKGS)

## lint: gofmt, go vet and staticcheck must be clean.
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	$(GO) run $(STATICCHECK) $(PKGS)

## demo: build everything and show switchyard balancing real traffic
## (make demo MODE=ipvs picks the proxy mode; DEMO_SOURCE=manifests skips
## the API server). demo.sh builds the binaries itself, with progress lines.
MODE        ?= iptables
DEMO_SOURCE ?= api
demo: deps
	MODE=$(MODE) DEMO_SOURCE=$(DEMO_SOURCE) GO=$(GO) bash test/demo/demo.sh

clean:
	rm -rf $(BIN)
