"""The report as a browser shows it: every image loads and nothing runs off the page (headless Chromium; Debian's
`chromium` package — `apt-get install chromium` — skipped with that reason where it is absent)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

CHECK = """<script>
window.addEventListener('load', () => {
  const images = Array.from(document.images);
  const broken = images.filter(i => !(i.complete && i.naturalWidth > 0)).length;
  const wide = Array.from(document.querySelectorAll('img, table, pre, p, h1, h2'))
    .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1).length;
  const out = document.createElement('pre');
  out.id = 'render-check';
  out.textContent = JSON.stringify({images: images.length, broken: broken, wide: wide,
    overflow: document.documentElement.scrollWidth > window.innerWidth});
  document.body.appendChild(out);
});
</script></body>"""


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("headless Chromium not installed (Debian: apt-get install chromium)")


@pytest.fixture(params=["run report", "prediction report"])
def report_page(request, tiny_demo, tiny_plates, tmp_path_factory):
    """The run's report, and the report `predict` writes for the new treatments."""
    out, _ = tiny_demo
    if request.param == "run report":
        return out / "run" / "report" / "index.html"
    from tests.conftest import run_cli

    predicted = tmp_path_factory.mktemp("predicted") / "p"
    run_cli("predict", out / "run", "--load-data", tiny_plates / "load_data.csv", "--out", predicted, "--no-progress")
    return predicted / "report" / "index.html"


def test_report_renders_in_a_browser_with_every_image_and_nothing_overflowing(report_page, tmp_path):
    browser = _chromium()
    page = report_page.read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", CHECK))
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,1600",
         "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    found = re.search(r'<pre id="render-check">(.*?)</pre>', result.stdout)
    assert found, f"the page did not finish loading in Chromium: {result.stderr[-500:]}"
    state = json.loads(found.group(1).replace("&quot;", '"'))
    assert state["images"] >= 3 and state["broken"] == 0
    assert state["wide"] == 0 and not state["overflow"]
