"""A real Flower deployment on loopback: SuperLink + two SuperNodes run ``deploy/flower`` for two rounds."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from medimg.models import load_checkpoint
from medimg.synth import generate_sample_data

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_superlink_and_two_supernodes_complete_two_rounds(tmp_path: Path) -> None:
    pytest.importorskip("flwr")
    from flower_loopback import run_loopback

    generate_sample_data(tmp_path / "data", seed=5, only=["mammo"], count=4)
    mammo = tmp_path / "data" / "mammo"
    out = tmp_path / "server_out"
    result = run_loopback(
        REPO / "deploy" / "flower",
        tmp_path / "flower",
        [f"data-dir='{mammo / 'site_a'}' partition-id=0", f"data-dir='{mammo / 'site_c'}' partition-id=1"],
        {"rounds": 2, "num_sites": 2, "batch_size": 8, "out": str(out)},
    )
    logs = Path(str(result["logs"]))
    detail = "\n".join(p.read_text()[-2000:] for p in sorted(logs.glob("*.log")))
    assert result["status"] == "finished:completed", detail
    _, meta = load_checkpoint(out / "federated.pt", pipeline="density")
    assert meta["training"]["federated"]["rounds"] == 2
    rounds = list(csv.DictReader((out / "rounds.csv").open()))
    assert [r["round"] for r in rounds if r["site"] == "(weighted mean)"] == ["1", "2"]
    assert {r["site"] for r in rounds} == {"site0", "site1", "(weighted mean)"}
