"""The audit end to end on a planted-lesion problem: CSVs, pass/fail matrix, cache, known answers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from saliency_toy import lesion_data, train

from medimg.models import build_network, gradcam_layer
from saliency.audit import CRITERIA, AuditConfig, AuditData, AuditModel, run_audit
from saliency.controls import CONTROLS


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def toy() -> dict:
    images, labels, masks = lesion_data(96, seed=0)
    torch.manual_seed(0)
    trained = train(build_network("compact", spatial_dims=2, in_channels=1, out_channels=2), images, labels, seed=0)
    torch.manual_seed(1)
    replica = train(build_network("compact", spatial_dims=2, in_channels=1, out_channels=2), images, labels, seed=1)
    torch.manual_seed(4)
    replica2 = train(build_network("compact", spatial_dims=2, in_channels=1, out_channels=2), images, labels, seed=2)
    torch.manual_seed(2)
    other = train(build_network("resnet-compact", spatial_dims=2, in_channels=1, out_channels=2), images, labels)
    torch.manual_seed(3)
    untrained = build_network("compact", spatial_dims=2, in_channels=1, out_channels=2).eval()
    test_images, test_labels, test_masks = lesion_data(24, seed=7)
    positives = np.flatnonzero(test_labels)
    data = AuditData(
        ids=[f"img{i:02d}" for i in positives],
        images=test_images[positives],
        masks=test_masks[positives],
        labels=test_labels[positives],
        description="planted lesions",
    )
    models = [
        AuditModel("trained", trained, "compact", gradcam_layer("compact"), "toy"),
        AuditModel("untrained", untrained, "compact", gradcam_layer("compact"), "random"),
        AuditModel("replica1", replica, "compact", gradcam_layer("compact"), "toy seed 1"),
        AuditModel("replica2", replica2, "compact", gradcam_layer("compact"), "toy seed 2"),
        AuditModel("other", other, "resnet-compact", gradcam_layer("resnet-compact"), "toy resnet"),
    ]
    return {"data": data, "models": models}


@pytest.mark.slow
def test_audit_writes_every_table_and_the_matrix_and_resumes_from_its_cache(toy: dict, tmp_path: Path) -> None:
    config = AuditConfig(methods=("gradient", "gradcam", "guided_backprop"), examples=2)
    result = run_audit(toy["data"], toy["models"], config, tmp_path, progress=False)
    for name in (
        "report.html",
        "summary.csv",
        "localization.csv",
        "randomization.csv",
        "repeatability.csv",
        "reproducibility.csv",
        "settings.json",
    ):
        assert (tmp_path / name).is_file(), name
    assert set(result.matrix) == {"gradient", "gradcam", "guided_backprop", *CONTROLS}
    assert all(set(row) == set(CRITERIA) for row in result.matrix.values())
    n = len(toy["data"].ids)
    loc = _read(tmp_path / "localization.csv")
    sources = {r["source"] for r in loc}
    assert sources == {"trained", "untrained", "prior"}
    assert sum(r["source"] == "trained" for r in loc) == 5 * n  # three methods, two controls
    rand = _read(tmp_path / "randomization.csv")
    stages = {(r["model"], r["stage"]) for r in rand if int(r["stage_index"]) > 0}
    assert {("trained", "logits"), ("replica1", "logits"), ("replica2", "logits")} <= stages
    assert not any(stage == "stem" for _, stage in stages)  # the paper never randomizes the stem
    assert len(_read(tmp_path / "repeatability.csv")) == 3 * 5 * n  # three replicate pairs
    summary = _read(tmp_path / "summary.csv")
    assert {r["criterion"] for r in summary} == set(CRITERIA)
    html = (tmp_path / "report.html").read_text()
    assert "Pass/fail matrix" in html and html.count("<img") >= 5

    # A rerun computes no map again: everything comes from OUT/cache.
    before = {p.name for p in (tmp_path / "cache").iterdir()}
    again = run_audit(toy["data"], toy["models"], config, tmp_path, progress=False)
    assert {p.name for p in (tmp_path / "cache").iterdir()} == before
    assert again.matrix == result.matrix
    settings = json.loads((tmp_path / "settings.json").read_text())
    assert settings["cache"]["computed"] == 0 and settings["cache"]["loaded"] > 0


def test_trained_gradcam_beats_the_untrained_model_on_planted_lesions(toy: dict, tmp_path: Path) -> None:
    config = AuditConfig(methods=("gradcam",), criteria=("localization",))
    run_audit(toy["data"], toy["models"][:2], config, tmp_path, progress=False)
    loc = _read(tmp_path / "localization.csv")
    ap = {
        s: np.nanmean([float(r["average_precision"]) for r in loc if r["source"] == s])
        for s in ("trained", "untrained", "prior")
    }
    assert ap["trained"] > ap["untrained"] + 0.2, ap
    assert ap["trained"] > ap["prior"], ap
    (row,) = [r for r in _read(tmp_path / "summary.csv") if r["baseline"] == "untrained model"]
    assert float(row["p_holm"]) < 0.01


def test_missing_models_skip_their_criteria_with_a_note(toy: dict, tmp_path: Path) -> None:
    data = toy["data"]
    bare = AuditData(ids=data.ids, images=data.images)  # no masks
    result = run_audit(bare, toy["models"][:1], AuditConfig(methods=("gradient",)), tmp_path, progress=False)
    assert set(result.matrix["gradient"]) == {"randomization"}
    text = " ".join(result.notes)
    assert "Localization skipped" in text and "Repeatability skipped" in text and "Reproducibility skipped" in text


def test_degenerate_maps_are_counted_not_dropped(tmp_path: Path) -> None:
    class Constant(torch.nn.Module):
        """Logits that do not depend on the input: every gradient map is all zero."""

        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(1, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.ones(x.shape[0], 1)) + 0 * x.sum()

    images, _, _ = lesion_data(6, seed=3, size=32)
    masks = np.zeros((6, 32, 32), dtype=bool)
    masks[:, 5:15, 8:20] = True
    data = AuditData(ids=[str(i) for i in range(6)], images=images, masks=masks)
    model = Constant().eval()
    result = run_audit(
        data,
        [AuditModel("trained", model, "constant")],
        AuditConfig(methods=("gradient",), criteria=("localization",)),
        tmp_path,
        progress=False,
    )
    rows = _read(tmp_path / "localization.csv")
    trained = [r for r in rows if r["source"] == "trained" and r["method"] == "gradient"]
    assert len(trained) == 6 and all(r["degenerate"] == "True" for r in trained)
    (summary,) = [r for r in result.summary if r["criterion"] == "localization" and r["method"] == "gradient"]
    # n: finite scores; no finite score at all: the criterion could not be scored (n/a), not a pass or a fail
    assert summary["n_degenerate"] == 6 and summary["n"] == 0 and summary["passed"] is None


def test_bad_inputs_are_refused(toy: dict, tmp_path: Path) -> None:
    data = toy["data"]
    with pytest.raises(ValueError, match="trained"):
        run_audit(data, toy["models"][1:2], AuditConfig(), tmp_path, progress=False)
    with pytest.raises(ValueError, match="unknown saliency method"):
        run_audit(data, toy["models"][:1], AuditConfig(methods=("lime",)), tmp_path, progress=False)
    with pytest.raises(ValueError, match="unknown criteria"):
        run_audit(data, toy["models"][:1], AuditConfig(criteria=("beauty",)), tmp_path, progress=False)


def test_volumes_run_every_method_but_xrai_and_say_so(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.normal(0, 0.3, (3, 1, 16, 32, 32)).astype(np.float32))
    masks = np.zeros((3, 16, 32, 32), dtype=bool)
    masks[:, 4:10, 8:20, 8:20] = True
    images[torch.from_numpy(masks[:, None])] += 1.5
    torch.manual_seed(0)
    model = build_network("compact", spatial_dims=3, in_channels=1, out_channels=2).eval()
    data = AuditData(ids=["a", "b", "c"], images=images, masks=masks)
    result = run_audit(
        data,
        [AuditModel("trained", model, "compact", gradcam_layer("compact"))],
        AuditConfig(methods=("gradient", "guided_backprop", "xrai"), criteria=("localization", "randomization")),
        tmp_path,
        progress=False,
    )
    assert set(result.matrix) == {"gradient", "guided_backprop", *CONTROLS}
    assert any("XRAI skipped" in note and "2-D" in note for note in result.notes)
    assert "XRAI skipped" in (tmp_path / "report.html").read_text()
    rand = _read(tmp_path / "randomization.csv")
    assert {r["method"] for r in rand} == {"gradient", "guided_backprop", *CONTROLS}


def test_report_pdf_when_weasyprint_works(toy: dict, tmp_path: Path) -> None:
    try:
        import weasyprint  # noqa: F401
    except (ImportError, OSError) as exc:
        pytest.skip(f"the pdf extra (weasyprint) is not usable here: {exc}")
    result = run_audit(
        toy["data"], toy["models"][:1], AuditConfig(methods=("gradcam",), criteria=("randomization",)), tmp_path,
        progress=False,
    )  # fmt: skip
    pdf = tmp_path / "report.pdf"
    assert result.files["report.pdf"] == pdf and pdf.read_bytes()[:5] == b"%PDF-"


def test_controls_fail_randomization_and_expose_a_criterion_they_pass(toy: dict, tmp_path: Path) -> None:
    """The controls ignore the weights: SSIM 1 at every state, so they fail randomization; and being
    perfectly repeatable they pass repeatability, which is then marked not discriminating."""
    config = AuditConfig(methods=("gradcam",), criteria=("randomization", "repeatability"))
    result = run_audit(toy["data"], toy["models"], config, tmp_path, progress=False)
    rand = _read(tmp_path / "randomization.csv")
    for control in CONTROLS:
        assert result.matrix[control] == {"randomization": False, "repeatability": True}
        states = [float(r["ssim"]) for r in rand if r["method"] == control and int(r["stage_index"]) > 0]
        assert states and np.allclose(states, 1.0)
    assert result.non_discriminating == {"repeatability": list(CONTROLS)}
    marks = {(r["criterion"], r["discriminating"]) for r in result.summary if r["method"] == "gradcam"}
    assert marks == {("randomization", True), ("repeatability", False)}
    assert result.notes[0].startswith("Repeatability is NOT DISCRIMINATING")
    html = (tmp_path / "report.html").read_text()
    assert html.index("NOT DISCRIMINATING") < html.index("Pass/fail matrix")
    assert "Repeatability (not discriminating)" in html


def test_each_preset_judges_its_own_statistic(toy: dict, tmp_path: Path) -> None:
    """paper: trapezoid AUPRC, SSIM range 2, the fixed 0.5 line; calibrated: average precision with a
    test, SSIM range 1, the line recomputed from the method's own pairs (not 0.5)."""
    from saliency.audit_rows import calibration_pairs
    from saliency.protocol import calibrate_line

    models = [m for m in toy["models"] if m.name in ("trained", "untrained", "replica1")]
    criteria = ("localization", "randomization", "repeatability")
    for preset in ("paper", "calibrated"):
        out = tmp_path / preset
        config = AuditConfig(
            methods=("gradcam",), criteria=criteria, preset=preset, include_stem=preset == "calibrated"
        )
        result = run_audit(toy["data"], models, config, out, progress=False)
        rows = {(r["method"], r["criterion"], r["baseline"].split(" (")[0]): r for r in result.summary}
        loc = [r for r in _read(out / "localization.csv") if r["source"] == "trained" and r["method"] == "gradcam"]
        statistic = "trapezoid" if preset == "paper" else "average_precision"
        assert rows[("gradcam", "localization", "average-mask prior")]["value"] == pytest.approx(
            np.nanmean([float(r[statistic]) for r in loc])
        )
        rand = _read(out / "randomization.csv")
        assert any(r["stage"] == "stem" for r in rand) == (preset == "calibrated")
        repeat = next(r for r in result.summary if r["criterion"] == "repeatability" and r["method"] == "gradcam")
        pairs = {"repeatability": [{**r, "ssim": float(r["ssim"])} for r in _read(out / "repeatability.csv")]}
        if preset == "paper":
            assert repeat["baseline_value"] == 0.5 and all(r["ssim_range2"] == "" for r in rand)
        else:
            staged = [{**r, "stage_index": int(r["stage_index"])} for r in rand]
            line = calibrate_line(*calibration_pairs("gradcam", staged, pairs))["value"]
            assert repeat["baseline_value"] == pytest.approx(line) and line < 0.5
            randomized = next(
                r for r in result.summary if r["criterion"] == "randomization" and r["method"] == "gradcam"
            )
            assert np.isfinite(randomized["p_holm"]) and "last state" in randomized["statistic"]
        settings = json.loads((out / "settings.json").read_text())
        assert settings["protocol"]["name"] == preset
        assert settings["protocol"]["data_range"] == (2.0 if preset == "paper" else 1.0)


def test_holm_corrects_over_the_methods_and_leaves_the_controls_out(toy: dict, tmp_path: Path) -> None:
    """Controls are checks of the criterion, not members of the methods' multiple-comparison family."""
    from saliency.criteria import holm

    config = AuditConfig(methods=("gradient", "gradcam"), criteria=("localization",), preset="calibrated")
    result = run_audit(toy["data"], toy["models"][:2], config, tmp_path, progress=False)
    rows = {r["method"]: r for r in result.summary if r["baseline"] == "average-mask prior"}
    methods = ["gradient", "gradcam"]
    expected = holm([rows[m]["p_value"] for m in methods])
    assert [rows[m]["p_holm"] for m in methods] == pytest.approx(list(expected))
    for control in CONTROLS:
        assert rows[control]["p_holm"] == rows[control]["p_value"]


def test_maps_computed_up_front_by_an_executor_give_the_same_audit(toy: dict, tmp_path: Path) -> None:
    """A map executor (a Ray cluster in pipelines.ray_maps; here, in this process) computes every map
    set the audit reads, randomized states included; the tables equal those of an audit computing
    each map when needed, and nothing is computed twice."""
    from saliency.audit_maps import compute_map_job

    calls: list[int] = []

    def executor(jobs, images, settings):  # noqa: ANN001, ANN202 - the MapExecutor signature
        calls.append(len(jobs))
        return [compute_map_job(job, images, settings) for job in jobs]

    config = AuditConfig(methods=("gradient", "gradcam"), criteria=("localization", "randomization"))
    models = toy["models"][:3]
    plain = run_audit(toy["data"], models, config, tmp_path / "plain", progress=False)
    ahead = run_audit(toy["data"], models, config, tmp_path / "ahead", progress=False, map_executor=executor)
    for name in ("summary.csv", "localization.csv", "randomization.csv"):
        assert _read(tmp_path / "plain" / name) == _read(tmp_path / "ahead" / name), name
    assert sum(calls) == ahead.settings["cache"]["computed"] == plain.settings["cache"]["computed"]
    assert len(calls) == 3  # the models' maps, then the randomized states of trained and of replica1
    again = run_audit(toy["data"], models, config, tmp_path / "ahead", progress=False, map_executor=executor)
    assert again.settings["cache"]["computed"] == 0 and len(calls) == 3  # all cached: the executor is not called
