"""``medimg demo``: every job the toolkit has so far, on the sample data, with real checks.

Generate the sample data when missing; scan each dataset folder (index + quarantine); apply the
bundled selection rules (brain MR sequences, frontal chest radiograph, the four mammography
views); convert the brain MR DICOM studies to NIfTI, checking voxel values and geometry against
the BraTS NIfTI files the same cases were generated from; score and rank synthetic QU-BraTS
teams; run the pneumonia and density pipelines with the demo weights; segment the brain MR
study with uncertainty; audit the pneumonia model's saliency maps; run the attention-gated model;
compare domain-expansion arms between two small generated institutions.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from medimg.untrusted import terminal_text

__all__ = ["percent", "run_demo", "small_sites"]

_DATASETS = {"cxr": "chest_xray", "mammo": "mammography", "brain/dicom": "brain_mr"}


def _ensure_data(data: Path, console: Console) -> None:
    if all((data / name).is_dir() for name in ("cxr", "mammo", "brain")):
        return
    from medimg.synth import DEMO_COUNTS, generate_sample_data

    console.print(f"[bold]Generating sample data[/bold] in {data} ...")
    generate_sample_data(data, seed=0, count=DEMO_COUNTS)


def run_demo(
    data: Path, out: Path, *, console: Console | None = None, quiet: bool = False, keep_pacs: bool = False
) -> bool:
    """Run the demo; print what it finds. Returns False when a check fails."""
    from medimg.dicom import scan_folder
    from medimg.dicom.selection import load_rules, select

    console = console or Console()
    data, out = Path(data), Path(out)
    _ensure_data(data, console)
    ok = True

    console.rule("[bold]1. Scan DICOM folders (headers only)")
    scans = {}
    summary = Table()
    for column in ("folder", "patients", "studies", "series", "images", "quarantined", "seconds"):
        summary.add_column(column)
    for folder in _DATASETS:
        start = time.perf_counter()
        result = scan_folder(data / folder)
        elapsed = time.perf_counter() - start
        scans[folder] = result
        n_series = sum(1 for _ in result.iter_series())
        summary.add_row(
            folder,
            str(len(result.patients)),
            str(len(result.studies)),
            str(n_series),
            str(result.num_files - len(result.quarantine)),
            str(len(result.quarantine)),
            f"{elapsed:.2f}",
        )
    console.print(summary)
    for folder, result in scans.items():
        for entry in result.quarantine[:3]:
            name, reason = terminal_text(Path(entry.path).name), terminal_text(entry.reason)
            console.print(f"  quarantine [dim]{terminal_text(folder)}[/dim]: {name}: {reason}")

    console.rule("[bold]2. Select series by rules")
    for folder, rule_name in _DATASETS.items():
        rules = load_rules(rule_name)
        table = Table(title=f"{rule_name} rules on {folder}")
        table.add_column("patient")
        for sel in rules.selections:
            table.add_column(sel.name)
        complete = 0
        for study in scans[folder].studies:
            chosen = select(study, rules)
            complete += chosen.complete
            cells = []
            for sel in rules.selections:
                items = chosen.picked.get(sel.name) or []
                if not items:
                    cells.append("[red]-[/red]" if sel.required else "-")
                    continue
                series, inst = items[0]
                cells.append(series.SeriesDescription or (inst.get("ViewPosition", "") if inst else ""))
            table.add_row(terminal_text(study.PatientID[:20]), *cells)
        console.print(table)
        console.print(f"  {complete}/{len(scans[folder].studies)} studies have every required selection")

    console.rule("[bold]3. Convert brain MR DICOM to NIfTI and check against the BraTS NIfTI")
    ok &= _check_brain_conversion(scans["brain/dicom"], data, out, console)

    console.rule("[bold]4. Score QU-BraTS uncertainty submissions and rank teams")
    ok &= _qubrats(data / "brain" / "nifti", out / "qubrats", console)

    console.rule("[bold]5. Run the pneumonia and density pipelines on DICOM folders (demo weights)")
    ok &= _pipelines(data, out, console)

    console.rule("[bold]6. Segment brain tumours from MR DICOM: labels, DICOM SEG, uncertainty, QU-BraTS score")
    ok &= _brats(data, out, console)

    console.rule("[bold]7. Audit the pneumonia model's saliency maps (eight methods, four criteria)")
    ok &= _saliency(data, out, console, quiet=quiet)

    console.rule("[bold]8. A model that explains itself: the trainable attention gate")
    ok &= _attention(data, out, console)

    console.rule("[bold]9. Expand the density model to a new institution (EWC + the old site's BN statistics)")
    ok &= _continual(out, console)

    console.rule("[bold]10. Train across three institutions without moving images (federated, Flower)")
    ok &= _federated(out, console)

    console.rule("[bold]11. From a PACS and back: Orthanc, DICOMweb, results as DICOM")
    from pipelines.demo_pacs import pacs_step

    ok &= pacs_step(data, out, console, keep=keep_pacs)
    return ok


#: Seed of the demo's three small institutions (8 exams each): with it every site's training,
#: validation and test split holds at least two density classes, so the kappas are defined.
SMALL_SITES_SEED = 11


def small_sites(out: Path) -> Path:
    """The demo's three small generated institutions (``OUT/continual/data/mammo/site_*``), made once."""
    from medimg.synth import generate_sample_data

    sites = out / "continual" / "data" / "mammo"
    if not (sites / "site_c").is_dir():
        generate_sample_data(out / "continual" / "data", seed=SMALL_SITES_SEED, only=["mammo"], count=8)
    return sites


def _site_a_weights(console: Console) -> Path | None:
    """The shipped site-A density model (``density_site_a.pt``), or None (and a message) without it."""
    from pipelines.runner import default_weights

    plain = default_weights("density")
    weights = plain.with_name("density_site_a.pt") if plain is not None else None
    if weights is None or not weights.is_file():
        console.print("[red]no site-A density weights[/red] (make demo-weights-continual writes them)")
        return None
    return weights


def _federated(out: Path, console: Console) -> bool:
    """A short ``medimg federated simulate --leave-one-out`` over three small generated institutions,
    refining the site-A density model (FedBN) with the two other sites; each held-out federation is
    scored on the institution it never saw, with averaged and with test-time BN."""
    from pipelines.federated import simulate_federation
    from pipelines.federated_eval import summary_lines

    weights = _site_a_weights(console)
    if weights is None:
        return False
    sites = small_sites(out)
    # The engine-free loop (the same client and server functions Flower runs) spares four Ray start-ups
    # (the federation of all sites and the three held-out ones) and keeps the demo short.
    summary = simulate_federation(
        "density", [sites / "site_a", sites / "site_b", sites / "site_c"], out / "federated", rounds=2,
        batch_size=8, lr=3e-4, bn_policy="local", weights=weights, engine="inprocess", seeds=(0,),
        leave_one_out=True, n_boot=200,
    )  # fmt: skip
    names = summary["sites"]
    table = Table(
        title="medimg federated simulate density --leave-one-out --engine inprocess (FedBN from density_site_a.pt, "
        "3 sites x 8 exams, 2 rounds, 1 seed; linear kappa on each test site)"
    )
    for column in ("model", "BN statistics", *names):
        table.add_column(column)
    for label, row in summary["matrix"].items():
        model, bn = label.rsplit(" [", 1)
        table.add_row(model, bn.rstrip("]"), *("" if n not in row else f"{row[n]:.3f}" for n in names))
    console.print(table)
    for line in summary_lines(summary):
        console.print(line, highlight=False, markup=False)
    console.print(
        f"  heldout_<site>: the federation of the two other sites, scored on the site it never trained on (the "
        "starting model learned institution A from other patients, so heldout_site_a is not a new-institution "
        f"score). Outputs: "
        f"{out / 'federated'} (seed0/, cross_site.csv, summary.json, report.html). Tiny sites, 2 rounds, 1 seed: "
        "this shows the mechanics; docs/results/index.md has the measured table."
    )
    held = {label for label in summary["matrix"] if label.startswith("heldout_")}
    return (out / "federated" / "report.html").is_file() and len(held) == 2 * len(names)


def _continual(out: Path, console: Console) -> bool:
    """A short ``medimg continual compare`` between two small generated institutions."""
    import csv

    from pipelines.continual_expansion import compare_arms

    weights = _site_a_weights(console)
    if weights is None:
        return False
    sites = small_sites(out)
    rows = compare_arms(
        "density", sites / "site_a", sites / "site_c", weights, out / "continual",
        arms=("old-only", "finetune", "ewc-gbn"), lambdas=(3000.0,), epochs=2, batch_size=8,
    )  # fmt: skip
    table = Table(title="medimg continual compare density (site_a -> site_c, 8 exams per site, 2 epochs)")
    for column in ("arm", "lambda", "old kappa before -> after", "new kappa before -> after", "forgetting"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["arm"], "" if row["lambda"] is None else f"{row['lambda']:g}",
            f"{row['old_kappa_before']:.3f} -> {row['old_kappa_after']:.3f}",
            f"{row['new_kappa_before']:.3f} -> {row['new_kappa_after']:.3f}", f"{row['forgetting']:.3f}",
        )  # fmt: skip
    console.print(table)
    with open(out / "continual" / "arms.csv", newline="") as fh:
        ok = len(list(csv.DictReader(fh))) == len(rows)
    console.print(
        f"  outputs: {out / 'continual'} (arms.csv, summary.csv, report.html, fisher.pt, runs/). Tiny sites and 2 "
        "epochs: this shows the mechanics, not the method's merit."
    )
    return ok


def _saliency(data: Path, out: Path, console: Console, *, quiet: bool) -> bool:
    """``medimg saliency audit pneumonia`` (preset ``paper``) on the sample CXR positives with the demo weights."""
    from pipelines.runner import default_weights
    from pipelines.saliency_audit import audit_pipeline
    from saliency.audit_report import pass_matrix_rows

    weights = default_weights("pneumonia")
    if weights is None:
        console.print("[red]no demo weights for pneumonia[/red] (make demo-weights writes sample_data/weights/)")
        return False
    extra = {role: weights.with_name(name) for role, name in _SALIENCY_MODELS.items()}
    result = audit_pipeline(
        "pneumonia",
        data / "cxr",
        weights,
        out / "saliency",
        replicas=[extra[r] for r in ("replica1", "replica2") if extra[r].is_file()],
        other_arch=extra["other"] if extra["other"].is_file() else None,
        variants={"attention model": extra["attention"]} if extra["attention"].is_file() else None,
        progress=not quiet,
    )
    rows = pass_matrix_rows(result.matrix, result.criteria, result.non_discriminating)
    table = Table(
        title="medimg saliency audit pneumonia sample_data/cxr (preset paper; pass/fail; rules in the report)"
    )
    for column in rows[0] if rows else []:
        table.add_column(column)
    for row in rows:
        table.add_row(*row.values())
    console.print(table)
    for note in result.notes:
        console.print(f"  note: {note}")
    console.print(
        f"  outputs: {out / 'saliency'} (report.html, summary.csv, localization.csv, randomization.csv, "
        "repeatability.csv, reproducibility.csv). A handful of images: the verdicts show the mechanics, "
        "not the model's trustworthiness. The two controls ignore the model: they must fail randomization."
    )
    controls_fail = all(result.matrix[c].get("randomization") is False for c in ("edge_control", "image_control"))
    if not controls_fail:
        console.print("[red]a model-blind control passed randomization: the criterion cannot fail here[/red]")
    return bool(rows) and controls_fail


def _attention(data: Path, out: Path, console: Console) -> bool:
    """The pneumonia pipeline with the attention-gated demo model: attention maps instead of Grad-CAM."""
    import csv

    from pipelines import get_pipeline
    from pipelines.runner import default_weights, run_pipeline

    plain = default_weights("pneumonia")
    weights = plain.with_name(_SALIENCY_MODELS["attention"]) if plain is not None else None
    if weights is None or not weights.is_file():
        console.print("[red]no attention demo weights[/red] (make demo-weights-saliency writes them)")
        return False
    summary = run_pipeline(
        get_pipeline("pneumonia"), data / "cxr", out / "pneumonia-attention", weights=weights, overwrite=True
    )
    table = Table(title=f"medimg run pneumonia {data / 'cxr'} --weights {weights.name}")
    for column in ("PatientID", "probability", "predicted", "n_boxes", "heatmap", "overlay"):
        table.add_column(column)
    for row in summary.rows[:8]:
        table.add_row(
            str(row["PatientID"])[:18], f"{row['probability']:.3f}", row["predicted"], str(row["n_boxes"]),
            row["heatmap"], str(row.get("overlay", ""))[:24],
        )  # fmt: skip
    console.print(table)
    with open(out / "saliency" / "localization.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    ap: dict[str, list[float]] = {}
    for row in rows:
        key = "attention model" if row["source"] == "variant:attention model" else f"{row['method']} ({row['source']})"
        ap.setdefault(key, []).append(float(row["average_precision"]))
    shown = ("attention model", "gradcam (trained)", "xrai (trained)", "prior (prior)")
    console.print(
        "  localization on the same images (mean average precision): "
        + ", ".join(f"{k} {np.nanmean(ap[k]):.3f}" for k in shown if k in ap)
    )
    return not summary.failed


#: Demo weights beside pneumonia.pt used by the saliency audit (repeatability, reproducibility,
#: and the attention-gated model compared with the post-hoc maps).
_SALIENCY_MODELS = {
    "replica1": "pneumonia_replica.pt",
    "replica2": "pneumonia_replica2.pt",
    "other": "pneumonia_resnet.pt",
    "attention": "pneumonia_attention.pt",
}


def _brats(data: Path, out: Path, console: Console) -> bool:
    """The brats pipeline on the sample MR DICOM study, with TTA uncertainty, scored by QU-BraTS."""
    import nibabel as nib

    from pipelines import get_pipeline
    from pipelines.brats import labels_to_channels
    from pipelines.runner import default_weights, run_pipeline
    from uncertainty.scoring import score_submission

    weights = default_weights("brats")
    if weights is None:
        console.print("[red]no demo weights for brats[/red] (make demo-weights-brats writes sample_data/weights/)")
        return False
    pipeline = get_pipeline("brats").configure(uncertainty="tta", samples=4)
    summary = run_pipeline(pipeline, data / "brain" / "dicom", out / "brats", weights=weights, overwrite=True)
    scores = score_submission(out / "brats", data / "brain" / "nifti", workers=1)
    table = Table(title="medimg run brats sample_data/brain/dicom --uncertainty tta (weights: phantoms only)")
    for column in ("case", "WT mL", "TC mL", "ET mL", "Dice WT/TC/ET", "QU-BraTS WT/TC/ET", "SEG"):
        table.add_column(column)
    by_case = {c.case_id: c for c in scores.cases}
    for row in summary.rows:
        case_id = row["case_id"]
        folder = out / "brats" / summary.folders[row["StudyInstanceUID"]]
        labels = np.asarray(nib.load(folder / row["labels_file"]).dataobj)
        truth = np.asarray(nib.load(data / "brain" / "nifti" / case_id / f"{case_id}_seg.nii.gz").dataobj)
        dice = []
        for p, t in zip(labels_to_channels(labels), labels_to_channels(truth), strict=True):
            total = p.sum() + t.sum()
            dice.append(1.0 if total == 0 else 2 * (p & t).sum() / total)
        tc, wt, et = dice
        quality = by_case.get(case_id)
        qubrats = "/".join(f"{quality[r].score:.3f}" for r in ("WT", "TC", "ET")) if quality else "-"
        table.add_row(
            case_id,
            f"{row['WT_ml']:.1f}",
            f"{row['TC_ml']:.1f}",
            f"{row['ET_ml']:.1f}",
            f"{wt:.3f}/{tc:.3f}/{et:.3f}",
            qubrats,
            str(row.get("seg_file", "")),
        )
    console.print(table)
    console.print(
        f"  outputs: {out / 'brats'} (per case: labels NIfTI, uncertainty maps, DICOM SEG; results.csv, "
        "report.html). The folder is a QU-BraTS submission: medimg uncertainty score OUT --truth TRUTH"
    )
    return not summary.failed and scores.ok


def _pipelines(data: Path, out: Path, console: Console) -> bool:
    """Both 2-D pipelines with the demo weights shipped in sample_data/weights/."""
    from pipelines import get_pipeline
    from pipelines.run_report import summarize_errors
    from pipelines.runner import default_weights, run_pipeline

    ok = True
    for name, folder in (("pneumonia", data / "cxr"), ("density", data / "mammo")):
        pipeline = get_pipeline(name)
        weights = default_weights(name)
        if weights is None:
            console.print(f"[red]no demo weights for {name}[/red] (make demo-weights writes sample_data/weights/)")
            ok = False
            continue
        summary = run_pipeline(pipeline, folder, out / name, weights=weights, overwrite=True)
        table = Table(title=f"medimg run {name} {folder}  (weights: synthetic phantoms only)")
        columns = ["PatientID", "selection", *[c for c in pipeline.result_columns if c not in ("overlay",)]]
        for column in columns:
            table.add_column(column)
        for row in summary.rows[:8]:
            cells = (f"{row[c]:.3f}" if isinstance(row.get(c), float) else str(row.get(c, ""))[:18] for c in columns)
            table.add_row(*cells)
        console.print(table)
        skipped = ", ".join(f"{k} ({v})" for k, v in summarize_errors(summary.errors).items()) or "nothing"
        console.print(f"  {summary.counts['images']} image(s); skipped/failed: {skipped}")
        extra = "submission.csv" if name == "pneumonia" else "exams.csv"
        console.print(f"  outputs: {out / name} (results.csv, {extra}, errors.csv, run.json, report.html)")
        ok &= not summary.failed
    return ok


#: Brain cases the QU-BraTS step ranks over: with fewer than 6, a sign-flip test over cases
#: cannot reach p < 0.05 (its smallest p-value is about 2 / 2**cases).
QUBRATS_CASES = 6


def _qubrats_truth(truth: Path, out: Path) -> Path:
    """``truth`` when it holds :data:`QUBRATS_CASES` cases, else that many generated once under ``out``."""
    if sum(1 for p in truth.iterdir() if p.is_dir()) >= QUBRATS_CASES:
        return truth
    from medimg.synth import generate_sample_data

    data = out / "data"
    if sum(1 for p in (data / "brain" / "nifti").glob("*/*_seg.nii.gz")) < QUBRATS_CASES:
        generate_sample_data(data, seed=0, only=["brain"], count=QUBRATS_CASES)
    return data / "brain" / "nifti"


def _qubrats(truth: Path, out: Path, console: Console) -> bool:
    """Three synthetic teams (calibrated, overconfident, random maps) scored and ranked, with the
    pairwise permutation tests over cases."""
    from medimg.synth.submissions import TEAM_STYLES, generate_submission
    from uncertainty.leaderboard import build_leaderboard
    from uncertainty.ranking import pairwise_rows

    truth = _qubrats_truth(truth, out)
    for style in TEAM_STYLES:
        generate_submission(truth, out / "teams" / style, style=style, seed=0)
    board = build_leaderboard(out / "teams", truth, out / "ranking", permutations=2000)
    ranking = board.ranking
    assert ranking is not None
    table = Table(
        title=f"QU-BraTS ranking of three synthetic teams over {len(ranking.case_ids)} cases "
        "(same segmentation, different maps)"
    )
    for column in ("#", "team", "mean rank", "WT score", "TC score", "ET score", "failed"):
        table.add_column(column)
    for row in ranking.table:
        table.add_row(
            str(row["position"]),
            row["team"],
            f"{row['mean_rank']:.2f}",
            *(f"{row[f'mean_score_{r}']:.4f}" for r in ("WT", "TC", "ET")),
            str(row["pairs_missing"]),
        )
    console.print(table)
    matrix = Table(title="Pairwise p-values: sign-flip permutation test over cases (2000 permutations, seed 0)")
    for column in ("team", *ranking.teams):
        matrix.add_column(column)
    for row in pairwise_rows(ranking):
        matrix.add_row(row["team"], *("-" if row[t] is None else f"{row[t]:.4f}" for t in ranking.teams))
    console.print(matrix)
    console.print(
        "An all-zero map never filters anything, so its FTP/FTN AUCs are 0 and its score is (DSC_AUC + 2) / 3: "
        "it usually beats an informative map. That is a property of the QU-BraTS metric, not of medimg "
        "(docs/methods/qubrats.md)."
    )
    console.print(
        f"Per-case scores, curves, p-value heat map and report: {out / 'ranking'} (ranking.csv, "
        "pairwise_p_values.csv, scores.csv, report.html). Same as: medimg uncertainty rank TEAMS --truth TRUTH "
        "-o OUT; from the scores alone: medimg uncertainty rank --from-scores OUT/scores.csv -o OUT2"
    )
    return not board.errors


def _check_brain_conversion(scan, data: Path, out: Path, console: Console) -> bool:  # type: ignore[no-untyped-def]
    import nibabel as nib

    from medimg.dicom.convert import convert_folder
    from medimg.dicom.selection import load_rules

    result = convert_folder(scan, out / "brain_nifti", rules=load_rules("brain_mr"), overwrite=True)
    table = Table()
    for column in ("case", "sequence", "shape", "max |voxel diff|", "max |affine diff| (mm)", "ok"):
        table.add_column(column)
    ok = result.ok
    for record in result.written:
        case = record["PatientID"]
        sequence = Path(record["output"]).name.split(".")[0]
        truth = data / "brain" / "nifti" / case / f"{case}_{sequence}.nii.gz"
        if not truth.exists():
            continue
        # convert stores dcm2niix's voxel order: compare both in the closest canonical orientation
        ref, got = nib.as_closest_canonical(nib.load(truth)), nib.as_closest_canonical(nib.load(record["output"]))
        diff = float(np.abs(np.asarray(ref.dataobj, np.float64) - np.asarray(got.dataobj, np.float64)).max())
        affine_diff = float(np.abs(ref.affine - got.affine).max())
        good = diff < 1e-3 and affine_diff < 1e-3
        ok &= good
        table.add_row(
            case,
            sequence,
            "x".join(map(str, got.shape)),
            f"{diff:.3g}",
            f"{affine_diff:.3g}",
            "[green]yes[/green]" if good else "[red]NO[/red]",
        )
    console.print(table)
    for failure in result.failures:
        console.print(f"[red]failed:[/red] {failure['source']}: {failure['error']}")
    console.print(f"NIfTI written under {out / 'brain_nifti'}")
    return ok


def percent(value: float) -> str:
    """``+12.3%``, or ``n/a`` for NaN (e.g. a zero baseline)."""
    return "n/a" if value != value else f"{value:+.1%}"
