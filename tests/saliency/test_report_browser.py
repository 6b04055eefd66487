"""The audit report opens in a real browser: headless Chromium renders it, every figure loads.

Needs the Debian package ``chromium`` (``make test`` installs it when it can); skipped with the
reason when no Chromium binary is on PATH.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from saliency_toy import lesion_data, train

from medimg.models import build_network, gradcam_layer
from saliency.audit import AuditConfig, AuditData, AuditModel, run_audit

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium on PATH (Debian package 'chromium'; `make test` installs it when it can)"
)
_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--disable-dev-shm-usage"]
_PROBE = """<script>
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const ok = imgs.filter((i) => i.complete && i.naturalWidth > 0).length;
  document.title = "LOADED " + ok + " OF " + imgs.length;
});
</script></body>"""


def _chromium(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    assert CHROMIUM is not None
    return subprocess.run([CHROMIUM, *_FLAGS, *args], capture_output=True, text=True, timeout=timeout, check=False)


def test_report_renders_in_headless_chromium_with_every_figure(tmp_path: Path) -> None:
    images, labels, masks = lesion_data(48, seed=0, size=32)
    torch.manual_seed(0)
    model = train(build_network("compact", spatial_dims=2, in_channels=1, out_channels=2), images, labels, steps=20)
    positives = np.flatnonzero(labels)[:6]
    data = AuditData(
        ids=[str(i) for i in positives], images=images[positives], masks=masks[positives], description="toy"
    )
    torch.manual_seed(1)
    untrained = build_network("compact", spatial_dims=2, in_channels=1, out_channels=2).eval()
    run_audit(
        data,
        [
            AuditModel("trained", model, "compact", gradcam_layer("compact")),
            AuditModel("untrained", untrained, "compact", gradcam_layer("compact")),
        ],
        AuditConfig(methods=("gradient", "gradcam"), criteria=("localization", "randomization"), examples=2),
        tmp_path / "audit",
        progress=False,
    )
    report = tmp_path / "audit" / "report.html"
    html = report.read_text()
    n_images = html.count("<img")
    assert n_images >= 4

    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("</body>", _PROBE, 1))
    dom = _chromium("--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    title = re.search(r"<title>(.*?)</title>", dom.stdout)
    assert title is not None, dom.stdout[:500]
    assert title.group(1) == f"LOADED {n_images} OF {n_images}", title.group(1)

    shot = tmp_path / "shot.png"
    result = _chromium("--window-size=1200,1600", f"--screenshot={shot}", report.as_uri())
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (1600, 1200)
    assert pixels.std() > 10, "the screenshot is blank"
    assert (pixels < 128).mean() > 0.01, "no dark content (text, figures) rendered"
