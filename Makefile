# Berth's entry points. `make run` and `make test` are all a newcomer needs.
SHELL := /bin/bash
CARGO ?= cargo
CLUSTER := tests/cluster
export KUBECONFIG_LOCAL := $(CURDIR)/target/cluster/kubeconfig

.PHONY: build run test lint fmt crds cluster-up cluster-down cluster-status clean-test-namespaces

## build: compile the berth binary (debug)
build:
	$(CARGO) build --locked

## run: the API and the controllers; on the local control plane unless KUBECONFIG reaches a cluster
run: build
	hack/run.sh

## test: unit and integration tests against the local control plane (started if needed)
test:
	$(CARGO) build --locked --tests
	$(CLUSTER)/with-cluster.sh $(CARGO) test --locked -- --test-threads=$${TEST_THREADS:-8}

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

## clean-test-namespaces: remove namespaces left by tests on a long-running local cluster
clean-test-namespaces:
	target/cluster/bin/kubectl --kubeconfig $(KUBECONFIG_LOCAL) delete ns -l berth.dev/test=true --wait=false
