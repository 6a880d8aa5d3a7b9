# Berth's entry points. `make run` and `make test` are all a newcomer needs.
SHELL := /bin/bash
CARGO ?= cargo
CLUSTER := tests/cluster
export KUBECONFIG_LOCAL := $(CURDIR)/target/cluster/kubeconfig
# Schemathesis (PyPI) for the fuzz test, in a venv of the project's own.
VENV := target/venv
# The chaos tests restart the shared control plane: after the others, one at a time.
CHAOS := $(CARGO) test --locked --test it chaos:: -- --ignored --test-threads=1
SCHEMATHESIS_VERSION := 4.32.5

.PHONY: build run test fuzz chaos bench lint fmt crds cluster-up cluster-down cluster-status clean-test-namespaces

## build: compile the berth binary (debug)
build:
	$(CARGO) build --locked

## run: the API and the controllers; on the local control plane unless KUBECONFIG reaches a cluster
## (kwok's fake nodes; REAL_NODE=1 adds the real node, which runs the stand-in game server)
run: build
	REAL_NODE=$(or $(REAL_NODE),0) hack/run.sh

$(VENV)/bin/schemathesis:
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check schemathesis==$(SCHEMATHESIS_VERSION)

## test: unit and integration tests against the local control plane (started if needed, with
## its real node, where Berth's own image, built from the release binary, runs from the chart),
## then the chaos tests, which restart the control plane, one at a time
test: $(VENV)/bin/schemathesis
	@# The console page test drives Debian's Chromium, headless.
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
	$(CARGO) build --locked --tests
	$(CARGO) build --locked --release --bin berth
	$(CLUSTER)/with-cluster.sh bash -c '$(CLUSTER)/clean.sh && $(CLUSTER)/images.sh berth target/release/berth && $(CARGO) test --locked -- --test-threads=$${TEST_THREADS:-8} && $(CHAOS)'


## fuzz: the schemathesis run with many more cases (1,000 per operation)
fuzz: $(VENV)/bin/schemathesis
	$(CARGO) build --locked --tests
	BERTH_FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-1000} $(CLUSTER)/with-cluster.sh $(CARGO) test --locked --test it fuzz:: -- --nocapture

## chaos: only the chaos tests (kube-apiserver and etcd killed under Berth; they run alone)
chaos:
	$(CARGO) build --locked --tests
	$(CLUSTER)/with-cluster.sh $(CHAOS)

## bench: deploy latency/throughput vs the raw API server, reads at 10,000 instances, memory, idle writes, restart
bench:
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
	$(CARGO) build --locked --release --bin berth
	$(CLUSTER)/with-cluster.sh $(CARGO) bench --locked --bench bench

## lint: formatting and clippy, warnings are errors
lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

## crds: regenerate crds/ and the chart's copy from the Rust types
crds:
	$(CARGO) run --locked -q -- crd --out-dir crds
	$(CARGO) run --locked -q -- crd --out-dir charts/berth/crds

cluster-up:
	$(CLUSTER)/up.sh

cluster-down:
	$(CLUSTER)/down.sh

cluster-status:
	$(CLUSTER)/status.sh

## clean-test-namespaces: remove what failed tests and benchmarks left on a long-running local cluster
clean-test-namespaces:
	$(CLUSTER)/clean.sh
