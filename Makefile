# Entry points: `make masks DATASET=...` and `make test`. Every target builds its own .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Keep ultralytics and matplotlib from writing to the home folder or probing the network.
export YOLO_OFFLINE ?= 1
export YOLO_CONFIG_DIR ?= $(CURDIR)/.cache/ultralytics
export MPLCONFIGDIR ?= $(CURDIR)/.cache/matplotlib

SELFIE_MODEL := models/selfie_segmentation.tflite

DATASET ?= sample
SEGMENTER_USED := $(or $(SEGMENTER),$(if $(filter sample,$(DATASET)),selfie,yolo))

MASKS_FLAGS := --dataset "$(DATASET)" \
	$(if $(DATA_ROOT),--root "$(DATA_ROOT)") \
	$(if $(OUT),--out "$(OUT)") \
	$(if $(SEGMENTER),--segmenter "$(SEGMENTER)") \
	$(if $(MODEL),--model "$(MODEL)") \
	$(if $(DEVICE),--device "$(DEVICE)") \
	$(if $(BATCH),--batch "$(BATCH)") \
	$(if $(WORKERS),--workers "$(WORKERS)") \
	$(if $(SCHEDULER),--scheduler "$(SCHEDULER)") \
	$(if $(LIMIT),--limit "$(LIMIT)") \
	$(if $(filter 1 yes true,$(OVERWRITE)),--overwrite)

.PHONY: masks test models venv clean-sample

masks: $(STAMP) $(if $(filter selfie,$(SEGMENTER_USED)),$(SELFIE_MODEL))
	$(PY) -m pipeline masks $(MASKS_FLAGS)

test: $(STAMP) $(SELFIE_MODEL)
	$(PY) -m pytest -q

models: $(SELFIE_MODEL)

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[test]'
	touch $@

$(SELFIE_MODEL): | $(STAMP)
	$(PY) -m pipeline fetch-models --dest $(dir $@)

clean-sample:
	rm -rf data/sample
