# switchyard's build, test and demo entry points. Every target installs what
# it needs (Debian packages through apt-get, Go modules through the module
# proxy), so a fresh machine needs only Go, make and root.

GO        ?= go
BIN       := bin
PKGS      := ./...
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
APT_PKGS  := iptables nftables ipset ipvsadm conntrack iproute2 procps containernetworking-plugins
# Test timeout per package run; make test as a whole stays under 25 minutes.
TEST_TIMEOUT ?= 15m

.PHONY: all build deps bench test test-cluster test-vm test-vm-full unit lint demo clean image test-image test-node node-deps test-node-full

all: build

## deps: install the kernel tools the tests and the demo drive (and the CNI portmap plugin the
## host-port side-by-side test calls), and the Go modules.
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
## namespaces, the image run by runc, the end-to-end suite against a real kube-apiserver, two real
## nodes running the DaemonSet (test-node), and the
## IPVS suite inside a throwaway VM.
test: deps lint
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) $(PKGS)
	$(MAKE) test-image
	$(MAKE) test-cluster
	$(MAKE) test-node
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
## fetches the kernel) and runs the ipvs package's real-kernel test,
## test/conformance's IPVS-mode conntrack test and the end-to-end suite
## (test/ipvs-e2e, dual-stack included) there. The 10k benchmark: see
## test/ipvs-e2e/README.md.
VM_TEST_DIR := /var/tmp/swy-test-vm
# In make test: the live-process suite (scheduler, eTP Local, graceful
# termination, restart recovery, idempotence, cleanup) and the scenario
# table under its first proxy configuration; emulation makes the rest slow.
VM_TEST_ARGS ?= -test.skip '^TestScenarios$$/^(no-cluster-cidr|masquerade-all)$$'
VM_TIMEOUT ?= 3000
test-vm: deps
	mkdir -p $(VM_TEST_DIR)
	$(GO) build -o $(VM_TEST_DIR)/switchyard ./cmd/switchyard
	$(GO) test -c -o $(VM_TEST_DIR)/ipvs.test ./ipvs
	$(GO) test -c -o $(VM_TEST_DIR)/ipvs-e2e.test ./test/ipvs-e2e
	$(GO) test -c -o $(VM_TEST_DIR)/conformance.test ./test/conformance
	$(GO) build -o $(VM_TEST_DIR)/swy-echo ./test/echo/cmd/swy-echo
	SWY_SWITCHYARD_BIN=$(VM_TEST_DIR)/switchyard SWY_ECHO_BIN=$(VM_TEST_DIR)/swy-echo \
	SWY_BENCH_SERVICES=1000 VM_TIMEOUT=$(VM_TIMEOUT) \
		test/vm/run sh test/ipvs-e2e/vm-suite.sh $(VM_TEST_DIR) $(CURDIR) \
		-test.timeout 30m $(VM_TEST_ARGS)

## test-vm-full: test-vm with every scenario configuration and the 1k benchmark.
test-vm-full:
	$(MAKE) test-vm VM_TEST_ARGS="-test.bench IPVSSync -test.benchtime 1x" VM_TIMEOUT=3600

## bench: upstream kube-proxy v1.37.2 (built from test/cluster's module) and
## switchyard side by side, one after the other, same lab, same real API server
## objects, same command line: convergence after a bulk create, one-endpoint
## change latency (p50/p90/p99), full sync, cold start, ruleset bytes, the
## kernel alone, RSS, CPU. Writes a markdown table and an SVG plot to
## test/bench/results/. BENCH_N=1000,10000 BENCH_MODE=iptables|nftables
## BENCH_PROXIES=kube-proxy,switchyard BENCH_CHANGES=20. kube-proxy's 10k
## iptables-nft cold start alone can take many minutes.
BENCH_N ?= 1000,10000
BENCH_MODE ?= iptables
BENCH_PROXIES ?= kube-proxy,switchyard
BENCH_CHANGES ?= 20
bench: deps
	cd test/cluster && $(GO) build -o ../../.cache/bin/swy-testcluster ./cmd/swy-testcluster
	cd test/cluster/e2e && SWY_TESTCLUSTER_BIN=$(CURDIR)/.cache/bin/swy-testcluster \
		SWY_BENCH_N=$(BENCH_N) SWY_BENCH_MODE=$(BENCH_MODE) SWY_BENCH_PROXIES=$(BENCH_PROXIES) \
		SWY_BENCH_CHANGES=$(BENCH_CHANGES) SWY_BENCH_OUT=$(CURDIR)/test/bench/results \
		$(GO) test -count=1 -timeout 0 -run '^TestBenchSideBySide$$' -v .

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

## image: switchyard's OCI image without a container engine (build/image):
## static switchyard and iptables-wrapper, Debian's iptables (nft and legacy),
## ipset, conntrack, ipvsadm. Writes the OCI layout .cache/image/oci, the
## docker-archive .cache/image/switchyard.tar, and prints the digest.
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
IMAGE     ?= ghcr.io/switchyard-proxy/switchyard:$(VERSION)
IMAGE_DIR := .cache/image
image:
	@command -v dpkg-deb >/dev/null && command -v apt-get >/dev/null || { echo "make image needs Debian's apt-get and dpkg-deb"; exit 1; }
	mkdir -p $(IMAGE_DIR)/bin
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w -X github.com/switchyard-proxy/switchyard/cmd/switchyard/app.Version=$(VERSION)" \
		-o $(IMAGE_DIR)/bin/switchyard ./cmd/switchyard
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o $(IMAGE_DIR)/bin/iptables-wrapper ./cmd/iptables-wrapper
	sh build/image/rootfs.sh $(IMAGE_DIR) $(IMAGE_DIR)/rootfs $(IMAGE_DIR)/bin/switchyard $(IMAGE_DIR)/bin/iptables-wrapper
	$(GO) run ./build/image -rootfs $(IMAGE_DIR)/rootfs -out $(IMAGE_DIR)/oci -ref $(IMAGE) -version $(VERSION) \
		-epoch $$(git log -1 --format=%ct 2>/dev/null || echo 0) -archive $(IMAGE_DIR)/switchyard.tar > $(IMAGE_DIR)/digest
	@echo ">> $(IMAGE) $$(cat $(IMAGE_DIR)/digest)"
	@echo ">> OCI layout $(IMAGE_DIR)/oci ($$(du -sh $(IMAGE_DIR)/oci | cut -f1)), docker-archive $(IMAGE_DIR)/switchyard.tar ($$(du -sh $(IMAGE_DIR)/switchyard.tar | cut -f1))"

## test-image: build the image, then start it with runc in a lab network
## namespace (test/image): --version, a real --once sync, real traffic, the
## iptables wrapper's choice. Warm: ~15 s; cold: + the static build and the
## package download.
test-image: image
	@missing=""; for p in runc umoci skopeo; do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi
	SWY_IMAGE_LAYOUT=$(CURDIR)/$(IMAGE_DIR)/oci SWY_IMAGE_ARCHIVE=$(CURDIR)/$(IMAGE_DIR)/switchyard.tar $(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./test/image

## test-node: two real nodes (test/node): the test control plane plus
## kube-controller-manager and kube-scheduler, and per node a network and
## mount namespace with Debian's containerd + runc + CNI plugins and kubelet
## (all built from test/cluster's go.mod into .cache/bin). Imports `make
## image` into each node's containerd, applies deploy/, sends pod -> ClusterIP
## and outside -> NodePort traffic across the nodes and rolls the DaemonSet
## under traffic. Warm: about 1 minute; cold: + the kubelet, controller-manager
## and scheduler builds (minutes each).
NODE_APT_PKGS := containerd runc containernetworking-plugins util-linux
node-deps:
	@missing=""; for p in $(NODE_APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo ">> installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
test-node: deps node-deps image
	cd test/node && $(GO) vet ./... && \
		SWY_IMAGE_ARCHIVE=$(CURDIR)/$(IMAGE_DIR)/switchyard.tar $(GO) test -count=1 -timeout $(TEST_TIMEOUT) -v -run 'TestSwitchyardDaemonSet|TestOverlay' .

## test-node-full: test-node, then upstream's [sig-network] Services e2e specs
## (e2e.test, agnhost, kubectl, kube-proxy built from test/cluster's go.mod,
## CoreDNS from its module, into .cache/bin) on a fresh two-node bed against
## switchyard's DaemonSet, then on another against upstream kube-proxy;
## results in .cache/node-e2e/<proxy>/summary.txt (see test/node/README.md).
NODE_E2E_OUT := $(CURDIR)/.cache/node-e2e
test-node-full: test-node
	cd test/node && s=0; k=0; \
	SWY_NODE_E2E=switchyard SWY_NODE_E2E_OUT=$(NODE_E2E_OUT) SWY_IMAGE_ARCHIVE=$(CURDIR)/$(IMAGE_DIR)/switchyard.tar \
		$(GO) test -count=1 -timeout 4h -v -run TestUpstreamServices . || s=$$?; \
	SWY_NODE_E2E=kube-proxy SWY_NODE_E2E_OUT=$(NODE_E2E_OUT) \
		$(GO) test -count=1 -timeout 4h -v -run TestUpstreamServices . || k=$$?; \
	head -qn1 $(NODE_E2E_OUT)/switchyard/summary.txt $(NODE_E2E_OUT)/kube-proxy/summary.txt; \
	[ $$s = 0 ] && [ $$k = 0 ]

clean:
	rm -rf $(BIN)
