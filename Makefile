# Set-up and everyday commands. Each target creates .venv when it is missing.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HEADLESS := QT_QPA_PLATFORM=offscreen TF_CPP_MIN_LOG_LEVEL=2

.PHONY: demo test canvas bench clean distclean

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[test,pyqt6,cluster,detection]'
	touch $(STAMP)

demo: $(STAMP)
	$(HEADLESS) $(BIN)/deepimage demo --out build/demo

test: $(STAMP)
	$(HEADLESS) $(BIN)/python -m pytest tests -q -p no:cacheprovider --durations=25

canvas: $(STAMP)
	$(BIN)/python -m Orange.canvas

bench: $(STAMP)
	$(HEADLESS) $(BIN)/python bench/run_all.py

clean:
	rm -rf build

distclean: clean
	rm -rf $(VENV) *.egg-info
