# Two commands a user needs: `make demo` and `make test`. Both install what
# a fresh Debian machine lacks (apt, when run as root) before building.

CARGO ?= cargo
# etcd-server: the comparison target of `make bench` and its test;
# fiu-utils: the disk faults `make test` injects (libfiu); fuse3: the
# power-loss file system of the same tests (fusermount3, /dev/fuse);
# python3-venv: the outsider client of `make test` (interop/python), whose
# pinned grpcio-tools come from PyPI into a virtualenv in the target dir.
APT_PACKAGES := libclang-dev g++ make fonts-dejavu-core etcd-server fiu-utils fuse3 python3 python3-venv

.PHONY: demo test deps build fmt lint jepsen soak bench fuzz

deps:
	@missing=""; \
	for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing:$$missing"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	    case "$$missing" in *etcd-server*) \
	      if [ -d /run/systemd/system ]; then systemctl disable --now etcd || true; fi;; \
	    esac; \
	  else \
	    echo "missing Debian packages:$$missing (run: sudo apt-get install$$missing)"; exit 1; \
	  fi; \
	fi
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install a Rust toolchain"; exit 1; }

build: deps
	$(CARGO) build --release --workspace --bins

# The product's story: a local 3-node state cluster, the windowed job
# with 4 tasks and a warm standby, a worker kill and a leader kill, each
# recovery's timings, the result checked against the ground truth (exit 1
# unless exact), and demo-timeline.png.
demo: build
	$(CARGO) run --release -q -p streamshield-runtime --bin streamshield-runtime -- demo

fmt:
	$(CARGO) fmt --all

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# fmt and clippy checks, unit tests, openraft's storage suite and the
# integration tests against real server processes.
test: lint
	$(CARGO) test --workspace

# The full lab sweep: every workload under every nemesis and under all of
# them, 30 s each, on release builds. Reports go to store/; the summary
# table to store/sweep-summary.md.
jepsen: build
	$(CARGO) run --release -q -p streamshield-jepsen --bin streamshield-jepsen -- sweep --time-limit 30 --runs 32

# An hour of mixed load under partitions, lost and slow links and paused
# nodes; fails if a node's resident memory grows more than 20 % after the
# first 10 minutes. Not part of `make test`.
soak: build
	$(CARGO) run --release -q -p streamshield-jepsen --bin streamshield-jepsen -- soak --minutes 60

# Benchmarks side by side with etcd (a 3-member cluster of Debian's
# etcd-server, started with free ports) and the machine's floor, and the
# operator runtime's reattach (warm standby and the restore baseline);
# writes BENCHMARKS.md. About 15 minutes.
bench: build
	$(CARGO) run --release -q -p streamshield-jepsen --bin streamshield-jepsen -- matrix --out BENCHMARKS.md

# The property-based fuzzers of decoders and the apply path with many more
# cases than `make test` runs (proptest's default is 256 per property);
# inputs that once failed are kept in server/proptest-regressions/ and
# tried first. FUZZ_CASES per property.
FUZZ_CASES ?= 20000
fuzz: deps
	PROPTEST_CASES=$(FUZZ_CASES) $(CARGO) test --release --workspace --test fuzz_inputs
	PROPTEST_CASES=$(FUZZ_CASES) $(CARGO) test --release --workspace --lib fuzz
