# Metaparticle Sync for Kubernetes. `make help` lists the targets.

SHELL = bash -o pipefail
.SHELLFLAGS = -ec
.DEFAULT_GOAL := help

# Cache for binaries built from the Go module proxy (control plane, linters), keyed by version.
export METAPARTICLE_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/metaparticle-sync
export GOFLAGS ?= -buildvcs=false

STATICCHECK_VERSION ?= v0.8.2
STATICCHECK := $(METAPARTICLE_CACHE)/tools/staticcheck-$(STATICCHECK_VERSION)/staticcheck
# krew and its manifest validator, for the plugin's install test (make krew-tools).
KREW_VERSION ?= v0.4.3
KREW_TOOLS := $(METAPARTICLE_CACHE)/tools/krew-$(KREW_VERSION)

GO_TEST_FLAGS ?=
# How long each fuzz target runs in `make test`; `make fuzz FUZZTIME=5m` runs longer.
FUZZTIME ?= 10s

BIN := bin

##@ General

.PHONY: help
help: ## Show the targets and what they do.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n"} \
	  /^[a-zA-Z0-9_-]+:.*?##/ { printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2 } \
	  /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Development

.PHONY: build
build: ## Build every binary into ./bin (static, CGO_ENABLED=0).
	@mkdir -p $(BIN)
	CGO_ENABLED=0 go build -trimpath -o $(BIN)/ ./cmd/...

.PHONY: fmt
fmt: ## Format the Go code in place.
	gofmt -w $$(git ls-files '*.go')

.PHONY: lint
lint: $(STATICCHECK) ## Check formatting (gofmt), go vet, staticcheck and the SDK import rule.
	@out=$$(gofmt -l $$(git ls-files --cached --others --exclude-standard '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	go vet ./...
	$(STATICCHECK) ./...

.PHONY: krew-tools
krew-tools: $(KREW_TOOLS)/krew ## Build krew and validate-krew-manifest from the Go module proxy into the cache (once).

$(KREW_TOOLS)/krew:
	@echo "installing krew $(KREW_VERSION) into $(@D)"
	GOBIN=$(@D) GOFLAGS=-mod=mod go install sigs.k8s.io/krew/cmd/krew@$(KREW_VERSION) sigs.k8s.io/krew/cmd/validate-krew-manifest@$(KREW_VERSION)

$(STATICCHECK):
	@echo "installing staticcheck $(STATICCHECK_VERSION) into $(@D)"
	GOBIN=$(@D) GOFLAGS=-mod=mod go install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

##@ Testing

.PHONY: test
test: lint unit integration fuzz-smoke python-test bench-smoke cluster-test cluster-cycle ## Everything CI checks: lint, unit, integration (real API server), fuzz smoke runs, the Python client, the benchmark harness, the local cluster (root).

.PHONY: unit
unit: ## Unit tests with the race detector; no control plane (go test -short). The engine's run again with --watch-scope=namespace.
	go test -race -short $(GO_TEST_FLAGS) ./...
	ELECTOR_TEST_WATCH_SCOPE=namespace go test -race -short $(GO_TEST_FLAGS) ./elector/

.PHONY: integration
integration: control-plane cert-manager krew-tools ## All tests, including those against a real kube-apiserver and etcd (envtest), and krew installing the plugin.
	KUBEBUILDER_ASSETS=$$(hack/control-plane.sh --print-assets) KREW_TOOLS=$(KREW_TOOLS) go test -count=1 $(GO_TEST_FLAGS) ./...

.PHONY: sim
sim: ## Deterministic simulation of the lock engine: SIM_SCHEDULES (100000) seeded schedules, or SEED=<n> one with its trace.
	@hack/sim.sh

.PHONY: fuzz-smoke
fuzz-smoke: ## Run every fuzz target for FUZZTIME each.
	@hack/fuzz.sh $(FUZZTIME)

.PHONY: fuzz
fuzz: FUZZTIME = 5m
fuzz: fuzz-smoke ## Run every fuzz target for 5 minutes each.

.PHONY: python-test
python-test: control-plane ## Python SDK (sdk/python) with unittest against real side-cars (cmd/elector) on a real API server.
	@mkdir -p $(BIN)
	go build -o $(BIN)/elector ./cmd/elector
	go build -o $(BIN)/pytest-env ./hack/pytest-env
	KUBEBUILDER_ASSETS=$$(hack/control-plane.sh --print-assets) METAPARTICLE_ELECTOR_BIN=$(CURDIR)/$(BIN)/elector \
	  METAPARTICLE_PYTEST_ENV_BIN=$(CURDIR)/$(BIN)/pytest-env PYTHONPATH=$(CURDIR)/sdk/python \
	  python3 -m unittest discover -s sdk/python/tests -v

##@ Benchmarks

.PHONY: bench
bench: control-plane ## Side-car vs client-go leader election on a real API server: one table, bench/results/latest.json, docs/benchmarks.md (about 18 min).
	KUBEBUILDER_ASSETS=$$(hack/control-plane.sh --print-assets) go run ./bench/cmd/bench

.PHONY: bench-smoke
bench-smoke: control-plane ## The same with few samples and short windows (BENCH_QUICK=1, about a minute): the harness still works.
	KUBEBUILDER_ASSETS=$$(hack/control-plane.sh --print-assets) BENCH_QUICK=1 go run ./bench/cmd/bench

##@ Environments

.PHONY: control-plane
control-plane: ## Build kube-apiserver, kubectl, etcd and helm from the Go module proxy into the cache (once).
	hack/control-plane.sh

.PHONY: cert-manager
cert-manager: ## Build the test-only binary that runs cert-manager's real controllers (once).
	hack/cert-manager.sh

.PHONY: demo
demo: ## The whole product on the local cluster (root): locks, elections, failover, rolling restart; cleans up after.
	@hack/demo.sh

.PHONY: clean
clean: ## Remove ./bin and test caches (the control-plane cache under $(METAPARTICLE_CACHE) stays).
	rm -rf $(BIN)
	go clean -testcache

##@ Release (docs/install.md)

# Where make push and make chart push to: a registry host and path prefix, e.g. ghcr.io/acme/metaparticle.
REGISTRY ?=
CHART_VERSION := $(shell awk '/^version:/ {print $$2}' charts/metaparticle-sync/Chart.yaml)
APP_VERSION := $(shell awk '/^appVersion:/ {gsub(/"/, "", $$2); print $$2}' charts/metaparticle-sync/Chart.yaml)
# The platforms make plugin builds, and where the release publishes its archives.
PLUGIN_PLATFORMS ?= linux/amd64 linux/arm64 darwin/amd64 darwin/arm64 windows/amd64
PLUGIN_URI ?= https://github.com/metaparticle-io/sync/releases/download/v$(APP_VERSION)

.PHONY: images
images: ## Build every image of hack/cluster/images.list for linux/amd64 and linux/arm64 (no Docker): one OCI index each in bin/images/NAME; imported too when the local cluster runs.
	hack/cluster/images.sh --oci $(BIN)/images

.PHONY: push
push: ## Build the images (make images) and push them to REGISTRY=<registry/prefix> as REGISTRY/NAME:TAG (credentials: docker login).
	@[ -n "$(REGISTRY)" ] || { echo "make push: set REGISTRY=<registry host and path>, for example REGISTRY=ghcr.io/acme/metaparticle" >&2; exit 2; }
	hack/cluster/images.sh --no-import --oci $(BIN)/images | awk '{print $$3}' | xargs go run ./hack/tools/pushimages -registry $(REGISTRY)

.PHONY: chart
chart: ## Package the chart into bin/charts; with REGISTRY=<registry/prefix> also push it to oci://REGISTRY/charts (credentials: helm registry login).
	hack/control-plane.sh helm
	$$(hack/control-plane.sh --print-bin helm) package charts/metaparticle-sync -d $(BIN)/charts
	@[ -z "$(REGISTRY)" ] || { echo "pushing to oci://$(REGISTRY)/charts"; \
	  $$(hack/control-plane.sh --print-bin helm) push $(BIN)/charts/metaparticle-sync-$(CHART_VERSION).tgz oci://$(REGISTRY)/charts; }

.PHONY: plugin
plugin: ## Package kubectl-sync for krew: bin/plugin/kubectl-sync_OS_ARCH.tar.gz for PLUGIN_PLATFORMS and the manifest bin/plugin/sync.yaml, naming them under PLUGIN_URI.
	@rm -rf $(BIN)/plugin && mkdir -p $(BIN)/plugin
	set --; for p in $(PLUGIN_PLATFORMS); do os=$${p%/*}; arch=$${p#*/}; exe=kubectl-sync; \
	  if [ "$$os" = windows ]; then exe=kubectl-sync.exe; fi; \
	  CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch go build -trimpath -ldflags='-s -w' -o $(BIN)/plugin/$$os-$$arch/$$exe ./cmd/syncctl; \
	  set -- "$$@" "$$p=$(BIN)/plugin/$$os-$$arch/$$exe"; done; \
	go run ./hack/tools/krewplugin -version v$(APP_VERSION) -uri $(PLUGIN_URI) -license LICENSE -out $(BIN)/plugin "$$@"

##@ Local cluster (a real single-node Kubernetes built from source; needs root)

.PHONY: cluster-up
cluster-up: ## Start the local cluster (idempotent); prints each step's time and the kubeconfig path.
	hack/cluster/up.sh

.PHONY: cluster-down
cluster-down: ## Stop the local cluster and remove everything it created, also after a crash.
	hack/cluster/down.sh

.PHONY: cluster-test
cluster-test: ## Bring the local cluster up, run the ./e2e/... tests against it, bring it down.
	hack/cluster/test.sh

.PHONY: e2e
e2e: ## The product end to end on the local cluster (./e2e/product; part of cluster-test). CHAOS_GRANTS=20000 makes the chaos run longer.
	CLUSTER_TEST_PACKAGES=./e2e/product/... hack/cluster/test.sh

.PHONY: cluster-cycle
cluster-cycle: ## cluster-up/cluster-down three times in a row (one after a simulated crash), nothing left.
	hack/cluster/cycle.sh 3

