# Entry points: `make all|list|masks|render|manifests|report|evaluate|status DATASET=...` and `make test`;
# `make help` lists them. Every target but help builds its own .venv first.
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
COMMA := ,
SEGMENTER_USED := $(or $(SEGMENTER),$(if $(filter sample,$(DATASET)),selfie,yolo))

# Flags every stage takes, and the execution flags of the Dask stages (the CLI's _add_execution).
DATASET_FLAGS := --dataset "$(DATASET)" $(if $(SPLIT_ID),--split-id "$(SPLIT_ID)") $(if $(OUT),--out "$(OUT)")
EXEC_FLAGS := $(if $(WORKERS),--workers "$(WORKERS)") $(if $(SCHEDULER),--scheduler "$(SCHEDULER)") \
	$(if $(CLUSTER),--cluster "$(CLUSTER)") $(if $(CLUSTER_CONFIG),--cluster-config "$(CLUSTER_CONFIG)") \
	$(if $(JOBS),--jobs "$(JOBS)") $(if $(DASHBOARD),--dashboard "$(DASHBOARD)") \
	$(if $(MAX_TRIES),--max-tries "$(MAX_TRIES)") $(if $(filter 1 yes true,$(RETRY_FAILED)),--retry-failed) \
	$(if $(LIMIT),--limit "$(LIMIT)") $(if $(filter 1 yes true,$(OVERWRITE)),--overwrite)

# Which clips a dataset has: masks and its dry run, list.
LIST_FLAGS := $(DATASET_FLAGS) \
	$(if $(DATA_ROOT),--root "$(DATA_ROOT)") \
	$(if $(VIDEO_DIR),--videos "$(VIDEO_DIR)") \
	$(if $(CLASS_LIST),--class-list "$(CLASS_LIST)") \
	$(if $(filter 1 yes true,$(OFFICIAL_INDICES)),--official-indices) \
	$(if $(SPLITS),--splits "$(SPLITS)")

MASKS_FLAGS := $(LIST_FLAGS) \
	$(if $(SEGMENTER),--segmenter "$(SEGMENTER)") \
	$(if $(MODEL),--model "$(MODEL)") \
	$(if $(DEVICE),--device "$(DEVICE)") \
	$(if $(BATCH),--batch "$(BATCH)") \
	$(if $(DECODERS),--decoders "$(DECODERS)") \
	$(if $(THREADS),--threads "$(THREADS)") \
	$(if $(INFERENCE),--inference "$(INFERENCE)") \
	$(if $(REFINE),--refine "$(REFINE)") \
	$(if $(SAM_TYPE),--sam-type "$(SAM_TYPE)") \
	$(if $(SAM_CHECKPOINT),--sam-checkpoint "$(SAM_CHECKPOINT)") \
	$(if $(REFINE_EVERY),--refine-every "$(REFINE_EVERY)") \
	$(if $(SAM_PRECISION),--sam-precision "$(SAM_PRECISION)") \
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
	$(foreach file,$(subst $(COMMA), ,$(SWAP_PAIRS)),--swap-pairs "$(file)") \
	$(if $(SWAP_PAIRS_MODE),--swap-pairs-mode "$(SWAP_PAIRS_MODE)") \
	$(if $(SWAP_PAIRS_SEED),--swap-pairs-seed "$(SWAP_PAIRS_SEED)") \
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

# Zero-shot scores of every variant's listed clips: SCORER=open_clip:ARCH or xclip:NAME, SCORER_WEIGHTS=random|FILE|
# DIR|TAG. The sample's val split has three clips and no swap pair, so the sample is scored on train.
PREDICT_FLAGS := $(DATASET_FLAGS) \
	$(if $(MASKS),--masks "$(MASKS)") \
	--scorer "$(SCORER)" \
	$(if $(SCORER_WEIGHTS),--weights "$(SCORER_WEIGHTS)") \
	$(if $(VARIANTS),--variants "$(VARIANTS)") \
	$(if $(or $(SPLIT),$(filter sample,$(DATASET))),--split "$(or $(SPLIT),train)") \
	$(if $(FRAMES),--frames "$(FRAMES)") \
	$(if $(PROMPTS),--prompts "$(PROMPTS)") \
	$(if $(LABEL_SPACE),--label-space "$(LABEL_SPACE)") \
	$(if $(DEVICE),--device "$(DEVICE)") \
	$(if $(PRECISION),--precision "$(PRECISION)") \
	$(if $(PREDICT_BATCH),--batch "$(PREDICT_BATCH)") \
	$(if $(READERS),--readers "$(READERS)") \
	$(if $(BOOTSTRAP),--bootstrap "$(BOOTSTRAP)") \
	$(if $(MAX_TRIES),--max-tries "$(MAX_TRIES)") $(if $(filter 1 yes true,$(RETRY_FAILED)),--retry-failed) \
	$(if $(filter 1 yes true,$(OVERWRITE)),--overwrite)

.PHONY: all list masks render manifests report evaluate predict benchmark status bench bench-scale bench-predict test models venv clean-sample help

masks: $(STAMP) $(if $(filter selfie,$(SEGMENTER_USED)),$(SELFIE_MODEL)) ## decode and segment DATASET into mask shards (masks/DATASET/RUN)
	$(PY) -m pipeline masks $(MASKS_FLAGS)

# What masks would process, read from the listing alone: clips and shards per split, classes, duplicates,
# conflicts, missing files. Writes nothing (the sample is listed once masks has generated it).
list: $(STAMP) ## dry run of masks: counts per split, classes, conflicts, missing files, shards; writes nothing
	$(PY) -m pipeline list $(LIST_FLAGS)

# FORMAT=mp4 (default), rawframes, or webdataset (one tar of mp4 + JSON samples per render shard).
render: $(STAMP) ## render the VARIANTS of every clip from the mask cache (renders/DATASET/RUN/VARIANT)
	$(PY) -m pipeline render $(RENDER_FLAGS)

manifests: $(STAMP) ## mmaction2 / PySlowFast / WebDataset lists and manifest.parquet of the rendered variants
	$(PY) -m pipeline manifests $(MANIFEST_FLAGS)

report: $(STAMP) ## the offline HTML report (reports/DATASET/RUN/index.html)
	$(PY) -m pipeline report $(DATASET_FLAGS) $(if $(MASKS),--masks "$(MASKS)") $(if $(ALL_EVALUATIONS),--all-evaluations)

# Where a run stands (in progress or finished), from any machine that sees OUT: the masks run (MASKS=, or the one
# that changed last) and its renders. Reads only: no lock is taken, nothing is written.
status: $(STAMP) ## shards done / claimed / failed, clips by status, frames/s, ETA, top errors; writes nothing
	$(PY) -m pipeline status $(DATASET_FLAGS) $(if $(MASKS),--masks "$(MASKS)")

# Score a model: PREDICTIONS=DIR holds <variant>.pkl|csv (subfolders <train variant>/ for a grid).
evaluate: $(STAMP) ## score a model's PREDICTIONS=DIR on the variants (BOR, HOR, SCUBA, SCUFO, ...)
	$(if $(PREDICTIONS),,$(error PREDICTIONS=DIR is required: one predictions file per variant, <variant>.pkl or .csv))
	$(PY) -m pipeline evaluate $(EVALUATE_FLAGS) --predictions "$(PREDICTIONS)"

predict: $(STAMP) ## zero-shot scores of every variant (SCORER=open_clip:ViT-B-32 SCORER_WEIGHTS=...), then evaluate
	$(if $(SCORER),,$(error SCORER= is required: open_clip:<arch> or xclip:<name or folder>))
	$(PY) -m pipeline predict $(PREDICT_FLAGS) --evaluate

# Every static-bias protocol for one zero-shot model in one command: masks, the protocol variants (lazy: composed
# when scored, no pixels written; FORMAT=mp4 renders them), manifests, predict, evaluate and the report.
benchmark: $(STAMP) $(if $(filter selfie,$(SEGMENTER_USED)),$(SELFIE_MODEL)) ## masks -> variants -> predict -> evaluate -> report for SCORER=
	$(if $(SCORER),,$(error SCORER= is required: open_clip:<arch> or xclip:<name or folder>))
	$(MAKE) --no-print-directory masks
	$(MAKE) --no-print-directory render FORMAT=$(or $(FORMAT),lazy)
	$(MAKE) --no-print-directory manifests
	$(MAKE) --no-print-directory predict

# masks -> render -> manifests -> report, one after the other (each step resumes where it stopped).
all: $(STAMP) $(if $(filter selfie,$(SEGMENTER_USED)),$(SELFIE_MODEL)) ## masks, render, manifests, report, one after the other
	$(MAKE) --no-print-directory masks
	$(MAKE) --no-print-directory render
	$(MAKE) --no-print-directory manifests
	$(MAKE) --no-print-directory report

# Masks and render throughput against the bare model forward and a bare decode + encode, as JSON (not a test), at
# 340x256 and 1280x720 (SIZES=), max_det 100, every class. CUDA when present (the stage in one Dask GPU worker, up
# to 32 clips x 300 frames, MINUTES=7), else CPU (in process, 4 x 60, MINUTES=3); MODEL defaults to
# yolo11n-seg.yaml (random weights). The JSON is also written to OUT/bench.json (OUT default: bench, emptied first).
bench: $(STAMP) $(SELFIE_MODEL) ## masks and render throughput against the bare model and codec, as JSON
	$(PY) -m pipeline.bench $(if $(DEVICE),--device "$(DEVICE)") $(if $(MODEL),--model "$(MODEL)") \
		$(if $(BATCH),--batch "$(BATCH)") $(if $(MINUTES),--minutes "$(MINUTES)") $(if $(SIZES),--sizes "$(SIZES)") \
		$(if $(OUT),--out "$(OUT)")

# The machinery at Kinetics scale: a Kinetics-400-shaped listing of CLIPS clips (default 260139; a few real tiny
# clips, the rest absent), planning, engine overhead (on the first OVERHEAD_CLIPS, default 20000), the no-op rerun,
# manifests, report and status timed from the CLI; one JSON, also in OUT/bench_scale.json (OUT default: bench-scale,
# emptied first; another non-empty folder is refused). Tens of minutes at full size on 2 cores.
bench-scale: $(STAMP) $(SELFIE_MODEL) ## planning and engine overhead at Kinetics scale (CLIPS=260139), as JSON
	$(PY) -m pipeline.bench scale $(if $(CLIPS),--clips "$(CLIPS)") \
		$(if $(OVERHEAD_CLIPS),--overhead-clips "$(OVERHEAD_CLIPS)") $(if $(WORKERS),--workers "$(WORKERS)") \
		$(if $(OUT),--out "$(OUT)")

# The predict stage against the bare model forward, and composing on the fly against reading the mp4 render, as
# JSON (OUT default: bench-predict, emptied first). SCORER default open_clip:ViT-B-32 with random weights.
bench-predict: $(STAMP) $(SELFIE_MODEL) ## zero-shot predict throughput against the bare model forward, as JSON
	$(PY) -m pipeline.bench predict $(if $(SCORER),--scorer "$(SCORER)") \
		$(if $(SCORER_WEIGHTS),--weights "$(SCORER_WEIGHTS)") $(if $(DEVICE),--device "$(DEVICE)") \
		$(if $(CLIPS),--clips "$(CLIPS)") $(if $(PREDICT_BATCH),--batch "$(PREDICT_BATCH)") $(if $(OUT),--out "$(OUT)")

# The SLURM tests start a single-node SLURM; as root on Debian, tests/install_slurm.sh installs it first
# (SLURM=no leaves it out, and those tests skip saying why).
test: $(STAMP) $(SELFIE_MODEL) ## the test suite (SLURM=no leaves the SLURM install out)
	$(if $(filter no,$(SLURM)),,bash tests/install_slurm.sh)
	$(PY) -m pytest -q

models: $(SELFIE_MODEL) ## extract the selfie model from the mediapipe wheel into models/

venv: $(STAMP) ## build .venv

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[test]'
	touch $@

$(SELFIE_MODEL): | $(STAMP)
	$(PY) -m pipeline fetch-models --dest $(dir $@)

clean-sample: ## remove the generated sample dataset (data/sample)
	rm -rf data/sample

# The targets (their `## ` comments) and the main variables; needs nothing built.
help: ## this list
	@echo "Targets (make TARGET VAR=value ...):"
	@awk -F ':.*## ' '/^[a-z-]+:.*## / {printf "  %-13s %s\n", $$1, $$2}' $(firstword $(MAKEFILE_LIST))
	@echo "Main variables (all of them: README.md, 'Real datasets'; every flag: .venv/bin/python -m pipeline CMD --help):"
	@echo "  DATASET=sample|kinetics400|...|folder|list  DATA_ROOT=  SPLIT_ID=  VIDEO_DIR=  CLASS_LIST=  OFFICIAL_INDICES=1"
	@echo "  OUT=.  SPLITS=train,val  LIMIT=N  OVERWRITE=1  RETRY_FAILED=1  MAX_TRIES=3"
	@echo "  masks:     SEGMENTER=yolo|selfie  MODEL=  DEVICE=cpu|cuda  BATCH=16  DECODERS=  THREADS=  REFINE=sam  SAM_CHECKPOINT=  SAM_PRECISION="
	@echo "  render:    VARIANTS=bg,...  VARIANTS_FILE=  FORMAT=mp4|rawframes|webdataset  SHORT_SIDE=  SCUBA_IMAGES="
	@echo "  later:     MASKS=<run>  MIN_COVERAGE=  MIN_FRAMES_FRAC=  PREDICTIONS=DIR  SPLIT=val  ALL_EVALUATIONS=1"
	@echo "  status:    MASKS=<run> (default: the run that changed last, one in progress included)"
	@echo "  benches:   bench: DEVICE=  MODEL=  BATCH=  OUT=bench   bench-scale: CLIPS=260139  OVERHEAD_CLIPS=20000  OUT=bench-scale"
	@echo "  where:     WORKERS=2  SCHEDULER=tcp://host:8786  CLUSTER=slurm|pbs|sge  CLUSTER_CONFIG=  JOBS=  DASHBOARD=:8787"
