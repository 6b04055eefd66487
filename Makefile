# Each target sets up .venv itself; a second run skips the install (stamp file).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.medimg-installed
TORCH_VERSION := 2.13.0

.PHONY: venv demo test browser dcm2niix orthanc dcmtk bench lint docs clean demo-weights demo-weights-saliency demo-weights-continual demo-weights-brats quality saliency-quality attention-quality continual-quality continual-quality-large federated-quality

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet -e ".[test,codecs,pdf,federated,cluster,docs]"
	touch $(STAMP)

demo: $(STAMP) orthanc
	$(VENV)/bin/medimg demo

test: $(STAMP) browser dcm2niix orthanc dcmtk
	$(PY) -m pytest -n 2 -q

# Debian tools the tests use: $(1) checks for the tool, $(2) are the packages apt installs (as root);
# where they cannot be installed the tests that need them are skipped, saying why.
define apt_tool
	@$(1) >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		(apt-get install -y -q $(2) >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && \
		apt-get install -y -q $(2) >/dev/null 2>&1)); } || \
		echo "$(2) not installed: $(3)"
endef

# Headless Chromium for the saliency report's browser test.
browser:
	$(call apt_tool,command -v chromium,chromium,the report's browser test will be skipped)

# dcm2niix, the peer the conversion tests compare with where its reference output is not shipped.
dcm2niix:
	$(call apt_tool,command -v dcm2niix,dcm2niix,the tests that run it live will be skipped)

# Orthanc with its DICOMweb plugin: the PACS of the demo's last step and of the integration tests.
orthanc:
	$(call apt_tool,test -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so,orthanc orthanc-dicomweb,the PACS tests and demo step will be skipped)

# dcmtk: dsr2xml reads the SR objects back.
dcmtk:
	$(call apt_tool,command -v dsr2xml,dcmtk,the SR validation tests will be skipped)

# The documentation site (docs/, mkdocs.yml) into build/site; --strict: a broken link or a
# docstring mkdocstrings cannot read fails the build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# Benchmarks run as modules from the repository root, so that they import the test helpers as
# tests.helpers.* (no sys.path edits); each prints ratios against a reference timed in the same run.
bench: $(STAMP)
	$(PY) -m tests.benchmarks.bench_scan
	$(PY) -m tests.benchmarks.bench_qubrats
	$(PY) -m tests.benchmarks.bench_pipelines
	$(PY) -m tests.benchmarks.bench_brats
	$(PY) -m tests.benchmarks.bench_saliency
	$(PY) -m tests.benchmarks.bench_fisher
	$(PY) -m tests.benchmarks.bench_xrai
	$(PY) -m tests.benchmarks.bench_evaluation

# Demo weights: compact models trained on generated data (seed 100). Valid for the synthetic
# phantoms only; `make quality` measures them on fresh data (seed 200) they never saw.
DEMO_NOTE := demo weights trained on medimg synthetic phantoms (seed 100) - not valid for real images
MEDIMG := $(VENV)/bin/medimg
demo-weights: $(STAMP)
	$(MEDIMG) sample-data build/demo-train --seed 100 --only cxr --only mammo --count cxr=400,mammo=50
	$(MEDIMG) train pneumonia build/demo-train/cxr -o build/demo-runs/pneumonia --architecture compact \
		--epochs 20 --note "$(DEMO_NOTE)" -q
	$(MEDIMG) train density build/demo-train/mammo -o build/demo-runs/density --architecture compact \
		--epochs 30 --note "$(DEMO_NOTE)" -q
	mkdir -p sample_data/weights
	cp build/demo-runs/pneumonia/best.pt sample_data/weights/pneumonia.pt
	cp build/demo-runs/density/best.pt sample_data/weights/density.pt
	$(MAKE) demo-weights-saliency
	$(MAKE) demo-weights-continual
	$(MAKE) demo-weights-brats

# A density model trained at one institution only (site_a), for the continual-learning demo.
demo-weights-continual: $(STAMP)
	test -d build/demo-train/mammo || $(MEDIMG) sample-data build/demo-train --seed 100 --only mammo --count mammo=50
	$(MEDIMG) train density build/demo-train/mammo/site_a -o build/demo-runs/density-site_a --architecture compact \
		--epochs 30 --note "$(DEMO_NOTE)" -q
	cp build/demo-runs/density-site_a/best.pt sample_data/weights/density_site_a.pt

# The saliency audit's replicates (same net, seeds 1 and 2) and second architecture for the pneumonia
# model, and the attention-gated pneumonia model (10% of the positives' boxes supervise its map).
demo-weights-saliency: $(STAMP)
	test -d build/demo-train/cxr || $(MEDIMG) sample-data build/demo-train --seed 100 --only cxr --count cxr=400
	for s in 1 2; do $(MEDIMG) train pneumonia build/demo-train/cxr -o build/demo-runs/pneumonia-seed$$s \
		--architecture compact --epochs 20 --seed $$s --note "$(DEMO_NOTE)" -q; done
	$(MEDIMG) train pneumonia build/demo-train/cxr -o build/demo-runs/pneumonia-resnet --architecture resnet-compact \
		--epochs 20 --note "$(DEMO_NOTE)" -q
	$(MEDIMG) train pneumonia build/demo-train/cxr -o build/demo-runs/pneumonia-attention-0.1 --architecture compact \
		--epochs 20 --attention --box-fraction 0.1 --note "$(DEMO_NOTE)" -q
	cp build/demo-runs/pneumonia-seed1/best.pt sample_data/weights/pneumonia_replica.pt
	cp build/demo-runs/pneumonia-seed2/best.pt sample_data/weights/pneumonia_replica2.pt
	cp build/demo-runs/pneumonia-resnet/best.pt sample_data/weights/pneumonia_resnet.pt
	cp build/demo-runs/pneumonia-attention-0.1/best.pt sample_data/weights/pneumonia_attention.pt

demo-weights-brats: $(STAMP)
	$(MEDIMG) sample-data build/demo-train-brain --seed 100 --only brain --count 24
	$(MEDIMG) train brats build/demo-train-brain/brain/nifti -o build/demo-runs/brats --architecture segresnet-compact \
		--epochs 40 --batch-size 2 --image-size 48x48x48 --lr 2e-3 --loss dicece --note "$(DEMO_NOTE)" -q
	mkdir -p sample_data/weights
	cp build/demo-runs/brats/best.pt sample_data/weights/brats.pt

quality: $(STAMP)
	$(MEDIMG) sample-data build/quality --seed 200 --only cxr --only mammo --count cxr=200,mammo=25
	$(MEDIMG) evaluate pneumonia build/quality/cxr --weights sample_data/weights/pneumonia.pt -o build/quality/pneumonia
	$(MEDIMG) evaluate density build/quality/mammo --weights sample_data/weights/density.pt -o build/quality/density
	$(MEDIMG) sample-data build/quality --seed 200 --only brain --count 5
	$(MEDIMG) evaluate brats build/quality/brain/nifti --weights sample_data/weights/brats.pt -o build/quality/brats
	$(PY) -m tests.benchmarks.bench_mammo_laterality --seeds 25

# Domain expansion (issue 8) on fresh generated institutions (seed 300; the learning rate and
# lambdas were chosen on the demo-training institutions, seed 100), as quoted in docs/results/index.md (about
# 35 minutes on one core).
CQ := build/continual-quality
CQM := $(CQ)/data/mammo
continual-quality: $(STAMP)
	test -d $(CQM) || $(MEDIMG) sample-data $(CQ)/data --seed 300 --only mammo --count mammo=50
	# Scenario 1: one institution (site A) to another (site C, then site B).
	$(MEDIMG) train density $(CQM)/site_a -o $(CQ)/site_a-model --architecture compact --epochs 30 -q
	$(MEDIMG) continual compare density --old $(CQM)/site_a --new $(CQM)/site_c \
		--weights $(CQ)/site_a-model/best.pt --arms old-only,finetune,finetune-gbn,ewc,ewc-gbn,lwf,joint \
		--lambdas 1000,10000,100000 --seeds 0,1,2 --epochs 10 --lr 3e-4 -o $(CQ)/a_to_c
	$(MEDIMG) continual compare density --old $(CQM)/site_a --new $(CQM)/site_b \
		--weights $(CQ)/site_a-model/best.pt --arms old-only,finetune,finetune-gbn,ewc,ewc-gbn,lwf,joint \
		--lambdas 1000,10000,100000 --seeds 0,1,2 --epochs 10 --lr 3e-4 -o $(CQ)/a_to_b
	# Scenario 2: a two-institution model (sites B + C, their pooled BN statistics) to site A.
	mkdir -p $(CQ)/data/sites_bc && ln -sfn ../mammo/site_b $(CQ)/data/sites_bc/site_b && \
		ln -sfn ../mammo/site_c $(CQ)/data/sites_bc/site_c
	$(MEDIMG) train density $(CQ)/data/sites_bc -o $(CQ)/sites_bc-model --architecture compact --epochs 30 -q
	$(MEDIMG) continual compare density --old $(CQ)/data/sites_bc --new $(CQM)/site_a \
		--weights $(CQ)/sites_bc-model/best.pt --arms old-only,finetune,finetune-gbn,ewc,ewc-gbn,lwf,joint \
		--lambdas 1000,10000,100000 --seeds 0,1,2 --epochs 10 --lr 3e-4 -o $(CQ)/bc_to_a

# Federated training (issues 9 and 15) on the same three generated institutions as continual-quality
# (seed 300): FedBN and FedAvg with leave-one-out held-out federations, 3 seeds each, bootstrap
# intervals, as quoted in docs/results/index.md (about 50 minutes per BN policy on one core; a rerun resumes).
FQ := build/federated-quality
FQ_SITES := --site $(CQM)/site_a --site $(CQM)/site_b --site $(CQM)/site_c
federated-quality: $(STAMP)
	test -d $(CQM) || $(MEDIMG) sample-data $(CQ)/data --seed 300 --only mammo --count mammo=50
	$(MEDIMG) federated simulate density $(FQ_SITES) --rounds 40 --bn-policy local --leave-one-out \
		--seeds 0,1,2 --engine inprocess -o $(FQ)/fedbn
	$(MEDIMG) federated simulate density $(FQ_SITES) --rounds 40 --bn-policy average --leave-one-out \
		--seeds 0,1,2 --engine inprocess -o $(FQ)/fedavg

# Domain expansion on five times larger generated sites (1,000 images each), as quoted in the
# docs/results/index.md (about 35 minutes on one core).
CQL := build/continual-quality-big
continual-quality-large: $(STAMP)
	test -d $(CQL)/data/mammo || $(MEDIMG) sample-data $(CQL)/data --seed 300 --only mammo --count mammo=250
	$(MEDIMG) train density $(CQL)/data/mammo/site_a -o $(CQL)/site_a-model --architecture compact --epochs 20 -q
	$(MEDIMG) continual compare density --old $(CQL)/data/mammo/site_a --new $(CQL)/data/mammo/site_b \
		--weights $(CQL)/site_a-model/best.pt --arms old-only,finetune,finetune-gbn,ewc-gbn \
		--lambdas 1000,10000,100000 --seeds 0,1,2 --epochs 10 --lr 3e-4 -o $(CQL)/a_to_b
	$(MEDIMG) continual compare density --old $(CQL)/data/mammo/site_a --new $(CQL)/data/mammo/site_c \
		--weights $(CQL)/site_a-model/best.pt --arms old-only,finetune,finetune-gbn,ewc-gbn \
		--lambdas 1000,10000,100000 --epochs 10 --lr 3e-4 -o $(CQL)/a_to_c

# The saliency audit of the pneumonia demo model on 50 fresh positives (seed 200), preset paper (three
# replicates, the prior from the training boxes), then preset calibrated on the same maps (the cache is
# copied: only the scores are recomputed); as quoted in docs/results/index.md.
SQ_MODELS := --weights sample_data/weights/pneumonia.pt --replica sample_data/weights/pneumonia_replica.pt \
	--replica sample_data/weights/pneumonia_replica2.pt --other-arch sample_data/weights/pneumonia_resnet.pt
saliency-quality: $(STAMP)
	test -d build/quality/cxr || $(MEDIMG) sample-data build/quality --seed 200 --only cxr --count 200
	test -d build/demo-train/cxr || $(MEDIMG) sample-data build/demo-train --seed 100 --only cxr --count 400
	$(MEDIMG) saliency audit pneumonia build/quality/cxr $(SQ_MODELS) --prior-data build/demo-train/cxr \
		--max-images 50 -o build/audit-quality -q
	mkdir -p build/audit-quality-calibrated && cp -r build/audit-quality/cache build/audit-quality-calibrated/
	$(MEDIMG) saliency audit pneumonia build/quality/cxr $(SQ_MODELS) --prior-data build/demo-train/cxr \
		--preset calibrated --max-images 50 -o build/audit-quality-calibrated -q

# The trainable-attention comparison on the same 50 positives (about 20 minutes on 2 cores).
ATT_RUNS := build/demo-runs/pneumonia-attention
attention-quality: $(STAMP)
	test -d build/quality/cxr || $(MEDIMG) sample-data build/quality --seed 200 --only cxr --count 200
	test -d build/demo-train/cxr || $(MEDIMG) sample-data build/demo-train --seed 100 --only cxr --count 400
	for f in 0 0.1 1.0; do $(MEDIMG) train pneumonia build/demo-train/cxr -o $(ATT_RUNS)-$$f --architecture compact \
		--epochs 20 --attention --box-fraction $$f --note "$(DEMO_NOTE)" -q; done
	for f in 0 0.1 1.0; do $(MEDIMG) evaluate pneumonia build/quality/cxr --weights $(ATT_RUNS)-$$f/best.pt \
		-o build/quality/pneumonia-attention-$$f; done
	$(MEDIMG) saliency audit pneumonia build/quality/cxr --weights $(ATT_RUNS)-0/best.pt \
		--criteria localization --max-images 50 --train-localizer --localizer-epochs 15 \
		--train-data build/demo-train/cxr --variant "0% boxes=$(ATT_RUNS)-0/best.pt" \
		--variant "10% boxes=$(ATT_RUNS)-0.1/best.pt" --variant "100% boxes=$(ATT_RUNS)-1.0/best.pt" \
		-o build/audit-attention -q
	$(MEDIMG) saliency audit pneumonia build/quality/cxr --weights $(ATT_RUNS)-0/best.pt \
		--criteria localization,randomization --methods attention,gradcam --max-images 50 \
		--localizer build/audit-attention/localizers/localizer_seed0.pt \
		--localizer build/audit-attention/localizers/localizer_seed1.pt -o build/audit-attention-rand -q

# Lint: ruff's rules and formatting on everything, mypy on the public API (the files listed under
# [tool.mypy] in pyproject.toml).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) build *.egg-info
