# kvmctl: `make demo` and `make test` on a fresh Debian 12 machine, as root.
CARGO ?= cargo
BIN := target/release/kvmctl

.PHONY: all deps build guest demo test stress lint bench clean man install

all: build

deps:
	scripts/deps.sh

build: deps
	$(CARGO) build --release --locked

guest: deps
	images/build.sh

demo: build guest
	scripts/demo.sh $(BIN)

# Every test: unit, golden, CLI integration, and the root/namespace/qemu tiers. The binary
# the tests run has the fault points (src/fault.rs); `make build` and `make demo` do not.
test: deps guest lint
	$(CARGO) test --release --locked --features fault-injection --no-fail-fast -- --test-threads=4

# Random kill rounds at the fault points (tests/faults.rs); KVMCTL_STRESS_ROUNDS, KVMCTL_STRESS_SEED.
stress: deps guest
	$(CARGO) test --release --locked --features fault-injection --test faults -- --ignored --nocapture stress_random_fault_points

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --release --locked --all-targets --all-features -- -D warnings

bench: deps build
	scripts/deps.sh --bench
	python3 bench/run.py $(BIN)

# One man page per command (clap_mangen), into target/man.
man: build
	rm -rf target/man
	$(BIN) __man target/man

# The binary, man pages, shell completions and the systemd unit, under $(DESTDIR)$(PREFIX).
PREFIX ?= /usr/local
install: build man
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/kvmctl
	install -d $(DESTDIR)$(PREFIX)/share/man/man1
	install -m 0644 target/man/*.1 $(DESTDIR)$(PREFIX)/share/man/man1/
	install -d $(DESTDIR)$(PREFIX)/share/bash-completion/completions $(DESTDIR)$(PREFIX)/share/zsh/site-functions \
	  $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d
	$(BIN) completion bash > $(DESTDIR)$(PREFIX)/share/bash-completion/completions/kvmctl
	$(BIN) completion zsh > $(DESTDIR)$(PREFIX)/share/zsh/site-functions/_kvmctl
	$(BIN) completion fish > $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/kvmctl.fish
	install -d $(DESTDIR)/etc/systemd/system
	sed 's|/usr/local/bin/kvmctl|$(PREFIX)/bin/kvmctl|g' templates/kvmctl.service > $(DESTDIR)/etc/systemd/system/kvmctl.service
	sed 's|/usr/local/bin/kvmctl|$(PREFIX)/bin/kvmctl|g' templates/kvmctl-guests.service > $(DESTDIR)/etc/systemd/system/kvmctl-guests.service

clean:
	$(CARGO) clean
	rm -rf images/out bench/out
