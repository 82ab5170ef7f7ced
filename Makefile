# ldm-minimal: two commands do all the set-up (see README.md).
#   make demo   creates .venv if missing, installs, runs the main job (pictures under outputs/)
#   make test   same set-up, then the whole test suite (unit tests and every notebook)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test install clean-outputs exercises benchmark

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	@# lpips depends on torchvision. Where torchvision cannot be imported next to this torch build (a
	@# CPU-only torch wheel without a matching torchvision, as on our CI), its broken import also breaks
	@# transformers, torchmetrics and diffusers; ldm_minimal reads lpips's weight files and never needs
	@# torchvision, so we remove it there and say so.
	@$(PY) -c "import torchvision" >/dev/null 2>&1 || { \
	  echo "note: torchvision is installed but cannot be imported with this torch; uninstalling it (not needed by ldm_minimal)"; \
	  $(PY) -m pip uninstall --quiet -y torchvision; }
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m ldm_minimal demo --overwrite

# unit tests, then every notebook of solutions/ and notebooks/ executed by nbval (2 workers, one torch thread each)
test: $(STAMP)
	LDM_COURSE_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadfile --nbval-lax --nbval-current-env \
	  --nbval-cell-timeout=900 tests solutions notebooks

clean-outputs:
	rm -rf outputs

# the student notebooks (notebooks/) from the complete ones (solutions/); never replaces a learner's edits
exercises: $(STAMP)
	$(PY) -m ldm_minimal course build

# issue 7: ours against diffusers (docs/results/peer.json), the course's own costs (docs/results/course_costs.json),
# then docs/performance.md from them; run it on a quiet machine (about 20 minutes on 2 cores)
benchmark: $(STAMP)
	$(PY) benchmarks/peer.py --threads 1 --overwrite
	$(PY) benchmarks/layout.py
	$(PY) benchmarks/layout.py --threads 2 --out docs/results/layout_2threads.json
	$(PY) benchmarks/course_cost.py
	$(PY) benchmarks/performance_page.py
