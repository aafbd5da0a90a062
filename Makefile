# Entry points: `make all|masks|render|manifests|report DATASET=...` and `make test`. Every target builds its own .venv first.
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

# Flags every stage takes, and the execution flags of the Dask stages (the CLI's _add_execution).
DATASET_FLAGS := --dataset "$(DATASET)" $(if $(SPLIT_ID),--split-id "$(SPLIT_ID)") $(if $(OUT),--out "$(OUT)")
EXEC_FLAGS := $(if $(WORKERS),--workers "$(WORKERS)") $(if $(SCHEDULER),--scheduler "$(SCHEDULER)") \
	$(if $(CLUSTER),--cluster "$(CLUSTER)") $(if $(CLUSTER_CONFIG),--cluster-config "$(CLUSTER_CONFIG)") \
	$(if $(JOBS),--jobs "$(JOBS)") $(if $(DASHBOARD),--dashboard "$(DASHBOARD)") \
	$(if $(MAX_TRIES),--max-tries "$(MAX_TRIES)") $(if $(filter 1 yes true,$(RETRY_FAILED)),--retry-failed) \
	$(if $(LIMIT),--limit "$(LIMIT)") $(if $(filter 1 yes true,$(OVERWRITE)),--overwrite)

MASKS_FLAGS := $(DATASET_FLAGS) \
	$(if $(DATA_ROOT),--root "$(DATA_ROOT)") \
	$(if $(VIDEO_DIR),--videos "$(VIDEO_DIR)") \
	$(if $(CLASS_LIST),--class-list "$(CLASS_LIST)") \
	$(if $(filter 1 yes true,$(OFFICIAL_INDICES)),--official-indices) \
	$(if $(SPLITS),--splits "$(SPLITS)") \
	$(if $(SEGMENTER),--segmenter "$(SEGMENTER)") \
	$(if $(MODEL),--model "$(MODEL)") \
	$(if $(DEVICE),--device "$(DEVICE)") \
	$(if $(BATCH),--batch "$(BATCH)") \
	$(if $(DECODERS),--decoders "$(DECODERS)") \
	$(if $(INFERENCE),--inference "$(INFERENCE)") \
	$(if $(REFINE),--refine "$(REFINE)") \
	$(if $(SAM_TYPE),--sam-type "$(SAM_TYPE)") \
	$(if $(SAM_CHECKPOINT),--sam-checkpoint "$(SAM_CHECKPOINT)") \
	$(if $(REFINE_EVERY),--refine-every "$(REFINE_EVERY)") \
	$(EXEC_FLAGS)

RENDER_FLAGS := $(DATASET_FLAGS) \
	$(if $(MASKS),--masks "$(MASKS)") \
	$(if $(VARIANTS),--variants "$(VARIANTS)") \
	$(if $(VARIANTS_FILE),--variants-file "$(VARIANTS_FILE)") \
	$(if $(FORMAT),--format "$(FORMAT)") \
	$(if $(SHORT_SIDE),--short-side "$(SHORT_SIDE)") \
	$(if $(SCUBA_IMAGES),--scuba-images "$(SCUBA_IMAGES)") \
	$(if $(BACKGROUNDS_PER_CLIP),--backgrounds-per-clip "$(BACKGROUNDS_PER_CLIP)") \
	$(if $(SWAP_SEEDS),--swap-seeds "$(SWAP_SEEDS)") \
	$(if $(SWAP_ALIGN),--swap-align "$(SWAP_ALIGN)") \
	$(if $(SWAP_RELATIONS),--swap-relations "$(SWAP_RELATIONS)") \
	$(if $(PAIR_COVERAGE),--pair-coverage "$(PAIR_COVERAGE)") \
	$(EXEC_FLAGS)

MANIFEST_FLAGS := $(DATASET_FLAGS) \
	$(if $(MASKS),--masks "$(MASKS)") \
	$(if $(VARIANTS),--variants "$(VARIANTS)") \
	$(if $(MIN_COVERAGE),--min-coverage "$(MIN_COVERAGE)") \
	$(if $(MIN_FRAMES_FRAC),--min-frames-frac "$(MIN_FRAMES_FRAC)")

EVALUATE_FLAGS := $(DATASET_FLAGS) \
	$(if $(MASKS),--masks "$(MASKS)") \
	$(if $(SPLIT),--split "$(SPLIT)") \
	$(if $(BOOTSTRAP),--bootstrap "$(BOOTSTRAP)")

.PHONY: all masks render manifests report evaluate bench test models venv clean-sample

masks: $(STAMP) $(if $(filter selfie,$(SEGMENTER_USED)),$(SELFIE_MODEL))
	$(PY) -m pipeline masks $(MASKS_FLAGS)

# FORMAT=mp4 (default), rawframes, or webdataset (one tar of mp4 + JSON samples per render shard).
render: $(STAMP)
	$(PY) -m pipeline render $(RENDER_FLAGS)

manifests: $(STAMP)
	$(PY) -m pipeline manifests $(MANIFEST_FLAGS)

report: $(STAMP)
	$(PY) -m pipeline report $(DATASET_FLAGS) $(if $(MASKS),--masks "$(MASKS)") $(if $(ALL_EVALUATIONS),--all-evaluations)

# Score a model: PREDICTIONS=DIR holds <variant>.pkl|csv (subfolders <train variant>/ for a grid).
evaluate: $(STAMP)
	$(if $(PREDICTIONS),,$(error PREDICTIONS=DIR is required: one predictions file per variant, <variant>.pkl or .csv))
	$(PY) -m pipeline evaluate $(EVALUATE_FLAGS) --predictions "$(PREDICTIONS)"

# masks -> render -> manifests -> report, one after the other (each step resumes where it stopped).
all: $(STAMP) $(if $(filter selfie,$(SEGMENTER_USED)),$(SELFIE_MODEL))
	$(MAKE) --no-print-directory masks
	$(MAKE) --no-print-directory render
	$(MAKE) --no-print-directory manifests
	$(MAKE) --no-print-directory report

# Masks and render throughput against the bare model forward and a bare decode + encode, as JSON (not a test).
# CUDA when present (32 clips x 300 frames), else CPU (4 x 60); MODEL defaults to yolo11n-seg.yaml (random weights).
bench: $(STAMP) $(SELFIE_MODEL)
	$(PY) -m pipeline.bench $(if $(DEVICE),--device "$(DEVICE)") $(if $(MODEL),--model "$(MODEL)") \
		$(if $(BATCH),--batch "$(BATCH)") $(if $(OUT),--out "$(OUT)")

# The SLURM tests start a single-node SLURM; as root on Debian, tests/install_slurm.sh installs it first
# (SLURM=no leaves it out, and those tests skip saying why).
test: $(STAMP) $(SELFIE_MODEL)
	$(if $(filter no,$(SLURM)),,bash tests/install_slurm.sh)
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
