# kubestow developer tasks. `just` with no arguments lists them.

set shell := ["bash", "-euo", "pipefail", "-c"]

# List the recipes.
default:
    @just --list

# Install and build the real test servers (etcd, kube-apiserver, kube-controller-manager, Garage); cached under ~/.cache/kubestow.
setup:
    bash tests/env/setup.sh

# Format check and clippy with warnings as errors.
lint:
    cargo fmt --all -- --check
    cargo clippy --all-targets -- -D warnings

# Fast inner loop: format check, clippy, and the unit tests; starts no servers.
check:
    cargo fmt --all -- --check
    cargo clippy --all-targets -- -D warnings
    cargo test --lib --quiet

# The Kubernetes releases the loopback integration suite runs against: the oldest the chart supports (setup.sh builds it) and a current one (setup-node.sh builds it).
oldest_k8s := "1.20.2"
current_k8s := "1.37.2"

# Set up, lint, then run every test: unit; the loopback integration suite on Kubernetes 1.20.2 and again on 1.37.2; the node tests (image, chart, CSI, movers) on a real 1.37.2 node, and the chart and mover flow (node::) again on a real 1.20.2 node.
test: setup lint
    bash tests/env/setup-node.sh all k8s-1.20
    bash images/build.sh
    mkdir -p target
    KUBESTOW_TEST_K8S_VERSION={{oldest_k8s}} cargo test --lib --bins --tests 2>&1 | tee target/test.log
    KUBESTOW_TEST_K8S_VERSION={{current_k8s}} cargo test --test integration -- --skip node:: --skip node_movers:: 2>&1 | tee -a target/test.log
    KUBESTOW_K8S_VERSION={{oldest_k8s}} cargo test --test integration -- node:: 2>&1 | tee -a target/test.log
    @awk '/^test result:/ { p += $4; f += $6 } END { printf "all tests: %d passed, %d failed\n", p, f; exit (f > 0) }' target/test.log

# A real one-node cluster (1.37) with CSI and S3: the chart backs up a sample shop with its volume data, the namespace is deleted, a Job from the chart's restore template brings it back, every object and byte is checked.
demo: setup
    bash tests/env/setup-node.sh
    bash images/build.sh
    cargo run --quiet --example demo

# Format the code.
fmt:
    cargo fmt --all

# Benchmarks: kubestow vs restic and rustic on a generated 1+ GiB dataset, blob ids, and resources vs kubectl on the test cluster; updates BENCHMARKS.md. Then the 30 s STOW_RATE_LIMIT checks against Garage.
bench: setup
    bash bench/run.sh
    cargo bench --quiet --bench ids
    cargo build --release --quiet
    cargo run --release --quiet --example bench_resources
    cargo test --release --test integration rate:: -- --ignored --nocapture

# Scale: one million small files (generated, 10,000 directories) backed up, re-backed up and restored by kubestow and restic side by side, with peak RSS (~10 minutes here once the files are generated, ~10 GB of disk; SCALE_FILES shrinks it); then 100,000 objects (ConfigMaps and custom resources in 100 namespaces) backed up and restored by kubestow and kubectl on the test cluster, with the API server's limit and each process's CPU time (~14 minutes; KUBESTOW_BENCH_SCALE shrinks it). Rewrites their sections of BENCHMARKS.md. Not part of `just bench` or CI.
bench-scale: setup
    bash bench/scale.sh
    cargo build --release --quiet
    KUBESTOW_BENCH_SCALE=${KUBESTOW_BENCH_SCALE:-100000} cargo run --release --quiet --example bench_resources

# Memory against data size: the `just bench` dataset (1 GiB) and the same mix at ten times the size, each backed up, re-backed up and restored by kubestow (default STOW_CHANNELS) and restic side by side, with peak RSS (~15-25 minutes, ~40 GB of disk). Rewrites its section of BENCHMARKS.md. Not part of `just bench` or CI.
bench-size: setup
    bash bench/size.sh

# Fuzz the repository decoders (pack, index, manifest, tree, catalogue, envelope) and the configuration parser with cargo fuzz, FUZZ_SECONDS (default 60) each, or only the targets named; prints the executions per target and fails on a crash. Not part of `just test`.
fuzz *targets:
    bash fuzz/run.sh {{targets}}

# Build the container image FROM scratch with buildah (images/build.sh; no registry needed) and write it as a docker-archive tar.
image tag="localhost/kubestow:dev":
    bash images/build.sh "{{tag}}"

# Build the real-node parts (current Kubernetes, etcd 3.6, containerd, CNI, pause, CSI driver and sidecars); cached under ~/.cache/kubestow. `just test` runs it.
setup-node *steps:
    bash tests/env/setup-node.sh {{steps}}

# The one-node cluster the node tests use, by hand: `just node up`, `just node smoke`, `just node volume`, `just node api`, `just node down` (tests/env/node-up.sh; needs `just image` first).
node cmd:
    bash tests/env/node-up.sh {{cmd}}
