"""The web page end to end in real headless Chromium (Debian's ``chromium``, driven by Playwright) against the
embedded server: upload → rank → transport plan → distil → download, as a person would click through it."""
from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Our own names for the footwear classes: the page must show them against the teachers' names.
OUR_CLASSES = ["Sandal", "Sneaker", "Ankle boot"]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).is_file(), f"no Chromium at {CHROMIUM}: run scripts/setup.sh (apt-get install chromium)"
    with sync_playwright() as p:
        # --no-sandbox: the tests may run as root, where Chromium refuses its sandbox.
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


DESKTOP, PHONE = {"width": 1280, "height": 900}, {"width": 390, "height": 844}
DOCS = Path(__file__).resolve().parents[2] / "docs"


def new_page(browser, viewport):
    context = browser.new_context(viewport=viewport, accept_downloads=True)
    pg = context.new_page()
    pg.errors = []
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.on("console", lambda m: pg.errors.append(m.text) if m.type == "error" else None)
    pg.set_default_timeout(30_000)
    return pg


@pytest.fixture()
def page(browser):
    pg = new_page(browser, DESKTOP)
    yield pg
    pg.context.close()


@pytest.fixture()
def phone(browser):
    pg = new_page(browser, PHONE)
    yield pg
    pg.context.close()


def screenshot(pg, tmp_path, name: str) -> Path:
    """A full-page screenshot; with WEB_SCREENSHOT_DIR set (docs/ to refresh the README's), copied there."""
    shot = tmp_path / name
    pg.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 30_000
    if os.environ.get("WEB_SCREENSHOT_DIR"):
        shutil.copy(shot, Path(os.environ["WEB_SCREENSHOT_DIR"]) / name)
    return shot


OVERLAPS = """(sel) => {
  const boxes = [...document.querySelectorAll(sel)].map((e) => e.getBoundingClientRect());
  const hit = (a, b) => a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom;
  const out = [];
  for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) if (hit(boxes[i], boxes[j])) out.push([i, j]);
  return {n: boxes.length, overlaps: out, right: Math.max(...boxes.map((b) => b.right))};
}"""


def assert_legends_apart(pg):
    for svg in ("#loss-svg", "#acc-svg"):
        got = pg.evaluate(OVERLAPS, f"{svg} .legend-item, {svg} > text[font-weight]")
        assert got["n"] >= 3 and got["overlaps"] == [], (svg, got)
        width = pg.evaluate(f"document.querySelector('{svg}').getBoundingClientRect().right")
        assert got["right"] <= width + 1, (svg, got)


def ranking_columns(pg, metric: str) -> list[tuple[float, int]]:
    """(value, rank under that metric) of each row of the table, top to bottom."""
    cells = pg.query_selector_all(f"#ranking-table tbody td[data-metric={metric}]")
    out = []
    for c in cells:
        value, rank = c.inner_text().split("#")
        out.append((float(value.strip()), int(rank)))
    return out


def test_upload_rank_plan_distil_download(page, embedded_service, footwear_target, quick_repo, tmp_path):
    from hubscout.distill import load_student

    base = embedded_service.base_url
    # The footwear fixture as a user's own file: an .npz with their class names.
    ours = footwear_target
    ours.classes = list(OUR_CLASSES)
    upload = ours.save(tmp_path / "my-shoes.npz")

    page.goto(base + "/")
    assert page.is_hidden("#auth")  # no API key configured: no key field
    page.wait_for_selector("#demo-name option[value=footwear]", state="attached")
    assert page.is_visible("#step-rank.locked")

    page.set_input_files("#file", str(upload))
    page.click("#upload")
    card = page.wait_for_selector("#dataset-card:not([hidden])")
    assert "my-shoes" in card.inner_text() and "30 images" in card.inner_text()
    assert ", ".join(OUR_CLASSES) in card.inner_text()
    assert "label index order" in card.inner_text() and "0 Sandal · 1 Sneaker · 2 Ankle boot" in card.inner_text()

    page.click("#rank")
    page.wait_for_selector("#rank-progress[data-status=succeeded]", timeout=240_000)
    rows = page.query_selector_all("#ranking-table tbody tr")
    # The page's defaults are the server's: the same order as the library's ranking with its defaults.
    from hubscout.rank import rank

    expected = [e.teacher_id for e in rank(ours, quick_repo).entries]
    assert [r.get_attribute("data-teacher") for r in rows] == expected
    best = expected[0]
    headers = page.inner_text("#ranking-table thead")
    # One display name per metric, as the checkboxes say it.
    assert "OT relatedness (↓ better)" in headers and "LogME (↑ better)" in headers
    assert "LogME" in page.inner_text("#metrics")

    # Sortable by any metric; every score carries the teacher's rank under its metric, and the agreement note
    # says where the metrics agree.
    from hubscout.scores import DEFAULT_METRIC, METRICS

    first = ranking_columns(page, DEFAULT_METRIC)  # the table opens sorted by the server's default metric
    assert [r for _, r in first] == sorted(r for _, r in first)
    assert [v for v, _ in first] == sorted((v for v, _ in first), reverse=METRICS[DEFAULT_METRIC].direction == "higher")
    page.click("#ranking-table th button.sort[data-metric=ot]")
    page.wait_for_selector("#ranking-table[data-sort=ot]")
    ot = ranking_columns(page, "ot")
    assert [r for _, r in ot] == sorted(r for _, r in ot) and [v for v, _ in ot] == sorted(v for v, _ in ot)
    assert "τ =" in page.inner_text("#agreement") and "LogME" in page.inner_text("#agreement")
    page.click("#ranking-table th button.sort[data-metric=logme]")
    page.wait_for_selector("#ranking-table[data-sort=logme]")
    logme = ranking_columns(page, "logme")
    assert [r for _, r in logme] == sorted(r for _, r in logme)
    assert [v for v, _ in logme] == sorted((v for v, _ in logme), reverse=True)  # higher is better
    assert "LogME" in page.inner_text("#ranking-table thead th:first-child")
    # The same teachers, each keeping its OT rank in its OT cell.
    by_teacher = dict(zip([r.get_attribute("data-teacher") for r in page.query_selector_all("#ranking-table tbody tr")],
                          ranking_columns(page, "ot")))
    assert sorted(r for _, r in by_teacher.values()) == sorted(r for _, r in ot)
    page.click("#ranking-table th button.sort[data-metric=ot]")
    page.wait_for_selector("#ranking-table[data-sort=ot]")

    # The best teacher's plan opens by itself; the footwear teacher's: its classes down, ours across, each of
    # ours mostly its namesake.
    page.wait_for_selector(f"#step-plan[data-teacher={best}]")
    page.click(".plan-btn[data-teacher=fashion-footwear]")
    page.wait_for_selector("#step-plan[data-teacher=fashion-footwear]")
    teacher_labels = quick_repo.get("fashion-footwear").labels
    assert len(page.query_selector_all("#plan-svg rect.cell")) == len(teacher_labels) * 3
    assert [t.text_content() for t in page.query_selector_all("#plan-svg text.col-label")] == OUR_CLASSES
    assert [t.text_content() for t in page.query_selector_all("#plan-svg text.row-label")] == teacher_labels
    corr = page.inner_text("#correspondences")
    for ours_name, theirs in zip(OUR_CLASSES, ["sandal", "sneaker", "ankle-boot"]):
        assert f"{ours_name} ← {theirs}" in corr, corr
    near = page.inner_text("#matches")
    for ours_name, theirs in zip(OUR_CLASSES, ["sandal", "sneaker", "ankle-boot"]):
        assert f"{ours_name} ≈ {theirs} (cost " in near, near
    assert "Closest teacher classes" in page.inner_text("#step-plan") and "lower means closer" in page.inner_text(
        "#step-plan")
    assert page.is_hidden("#plan-note")

    # The ImageNet teacher: 1000 classes, the plan keeps the heaviest 60 and the page says so.
    page.click(".plan-btn[data-teacher=imagenet-efficientnet-lite0]")
    page.wait_for_selector("#step-plan[data-teacher=imagenet-efficientnet-lite0]")
    assert "1000 classes" in page.inner_text("#plan-note")
    assert len(page.query_selector_all("#plan-svg rect.cell")) == 25 * 3
    page.click("#plan-more")
    assert len(page.query_selector_all("#plan-svg rect.cell")) == 60 * 3

    assert page.query_selector("#archs option[value=nano]") is not None  # sizes from /v1/info
    page.fill("#student-arch", "nano")
    page.fill("#epochs", "3")  # epochs mean epochs: no min steps to clear
    assert best in page.inner_text("#distil-teachers")  # the best teacher, ticked by default
    page.click("#distil")
    page.wait_for_selector("#distil-progress[data-status=succeeded]", timeout=180_000)
    page.wait_for_selector("#curves[data-epochs='3']")
    assert len(page.query_selector_all("#loss-svg polyline.series")) == 3  # total, CE, OT
    assert len(page.query_selector_all("#acc-svg polyline.series")) == 2  # train, validation
    card = page.inner_text("#student-card")
    assert "validation accuracy" in card and "CE-only control" in card and "the teachers added" in card
    assert "Size nano" in card and "ran 3 epochs" in card
    assert "validation accuracy" in page.inner_text("#student-card")
    assert "0 Sandal · 1 Sneaker · 2 Ankle boot" in page.inner_text("#student-card")
    assert_legends_apart(page)
    note = page.inner_text("#loss-note")
    assert "λ·τ²" in note and "add up to the total" in note
    assert "λ·τ²·OT term" in page.text_content("#loss-svg")
    assert "computed" in page.inner_text("#distil-progress") and "in the queue" in page.inner_text("#distil-progress")

    screenshot(page, tmp_path, "web.png")

    with page.expect_download() as dl:
        page.click("#download")
    archive = tmp_path / "student.zip"
    dl.value.save_as(archive)
    with zipfile.ZipFile(archive) as zf:
        assert {"model.safetensors", "config.json", "labels.json", "metrics.json"} <= set(zf.namelist())
        zf.extractall(tmp_path / "student")
    student = load_student(tmp_path / "student")
    assert student.classes == OUR_CLASSES
    assert student.predict(ours.images[:4]).shape == (4,)

    # What the page drew is what the service holds: the job's curves are the student's.
    state = dict(x.split("=") for x in page.evaluate("location.hash").lstrip("#").split("&"))
    job = httpx.get(f"{base}/v1/jobs/{state['distil']}").json()
    metrics = json.loads(zipfile.ZipFile(archive).read("metrics.json"))
    assert job["curves"]["epoch"] == [1, 2, 3]
    assert np.allclose(job["curves"]["loss"], metrics["curves"]["loss"])
    assert page.errors == []

    # A reload comes back to the same dataset, ranking and student from the URL.
    page.reload()
    page.wait_for_selector("#student-card:not([hidden])", timeout=60_000)
    assert len(page.query_selector_all("#ranking-table tbody tr")) == len(quick_repo)


def test_a_demo_target_and_the_api_key_header(page, embedded_service):
    seen: list[dict] = []
    page.on("request", lambda r: seen.append({"url": r.url, **r.headers}) if "/v1/" in r.url else None)
    page.add_init_script("localStorage.setItem('hubscout.apiKey', 'k-123')")
    page.goto(embedded_service.base_url + "/")
    page.wait_for_selector("#demo-name option[value=animals-farm]", state="attached")
    assert page.is_visible("#auth")  # a stored key is shown, so it can be changed or cleared
    page.select_option("#demo-name", "animals-farm")
    page.fill("#demo-shots", "3")
    page.click("#demo-create")
    card = page.wait_for_selector("#dataset-card:not([hidden])")
    assert "animals-farm-3shot-s0" in card.inner_text() and "cow, horse, sheep" in card.inner_text()
    assert seen and all(r.get("authorization") == "Bearer k-123" for r in seen)

    # A problem from the API is shown, not swallowed.
    page.fill("#demo-shots", "100000")
    page.click("#demo-create")
    page.wait_for_selector("#error:not([hidden])")
    assert "more than" in page.inner_text("#error-text") or "only" in page.inner_text("#error-text")
    assert not [e for e in page.errors if "422" not in e]


def test_a_shortlisted_ranking_lists_the_skipped_teachers_and_ranks_them_on_request(page, shortlisting_service,
                                                                                  footwear_target, quick_repo,
                                                                                  tmp_path):
    upload = footwear_target.save(tmp_path / "shoes.npz")
    page.goto(shortlisting_service.base_url + "/")
    page.set_input_files("#file", str(upload))
    page.click("#upload")
    page.wait_for_selector("#dataset-card:not([hidden])")
    page.click("#rank")
    page.wait_for_selector("#rank-progress[data-status=succeeded]", timeout=240_000)
    from hubscout.rank import rank

    exhaustive = [e.teacher_id for e in rank(footwear_target, quick_repo).entries]  # the library, its defaults
    ran = [r.get_attribute("data-teacher") for r in page.query_selector_all("#ranking-table tbody tr")]
    assert ran == [t for t in exhaustive if t in ran] and len(ran) < len(quick_repo)
    # The specifications find the teacher the default ranking (H-score) puts first without running the others.
    assert ran[0] == exhaustive[0]
    note = page.wait_for_selector("#rank-skipped:not([hidden])").inner_text()
    skipped = [t for t in quick_repo.ids() if t not in ran]
    assert f"{len(skipped)} of {len(quick_repo)} teachers were not ranked" in note
    assert all(t in note for t in skipped) and "Rank them too" in note

    page.click("#rank-all")
    page.wait_for_function(f"document.querySelectorAll('#ranking-table tbody tr').length == {len(quick_repo)}",
                           timeout=240_000)
    assert page.is_hidden("#rank-skipped")
    rows = [r.get_attribute("data-teacher") for r in page.query_selector_all("#ranking-table tbody tr")]
    assert rows == exhaustive
    assert not page.errors, page.errors


def test_at_390_px_everything_fits_or_scrolls_in_its_box(phone, embedded_service, tmp_path):
    pg = phone
    pg.goto(embedded_service.base_url + "/")
    pg.wait_for_selector("#demo-name option[value=footwear]", state="attached")
    file_box = pg.query_selector("#file").bounding_box()
    assert file_box["x"] >= 0 and file_box["x"] + file_box["width"] <= PHONE["width"]
    pg.select_option("#demo-name", "footwear")
    pg.fill("#demo-shots", "4")
    pg.click("#demo-create")
    pg.wait_for_selector("#dataset-card:not([hidden])")
    pg.click("#rank")
    pg.wait_for_selector("#rank-progress[data-status=succeeded]", timeout=240_000)
    # The page itself never scrolls sideways; the wide table scrolls inside its own box, to its last column.
    assert pg.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    box = pg.evaluate("(() => { const s = document.querySelector('#ranking-scroll'); "
                      "return {sw: s.scrollWidth, cw: s.clientWidth, ox: getComputedStyle(s).overflowX}; })()")
    assert box["ox"] == "auto" and box["sw"] > box["cw"], box
    pg.evaluate("document.querySelector('#ranking-scroll').scrollLeft = 10000")
    last = pg.query_selector("#ranking-table tbody tr:first-child input.pick").bounding_box()
    assert 0 <= last["x"] and last["x"] + last["width"] <= PHONE["width"]
    pg.fill("#student-arch", "test_resnet")
    pg.fill("#epochs", "2")
    pg.fill("#min-steps", "0")
    pg.click("#distil")
    pg.wait_for_selector("#distil-progress[data-status=succeeded]", timeout=180_000)
    pg.wait_for_selector("#curves[data-epochs='2']")
    assert_legends_apart(pg)
    assert pg.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    screenshot(pg, tmp_path, "web-390.png")
    assert pg.errors == []


def test_a_new_hash_in_an_open_tab_shows_that_state(page, embedded_service):
    base = embedded_service.base_url
    with httpx.Client(base_url=base, timeout=60) as c:
        a = c.post("/v1/datasets/demo", json={"name": "animals-farm", "shots": 2}).json()
        b = c.post("/v1/datasets/demo", json={"name": "mnist-odd", "shots": 2}).json()
    page.goto(f"{base}/#ds={a['id']}")
    page.wait_for_function(f"document.body.dataset.loaded === '#ds={a['id']}'")
    assert "animals-farm-2shot-s0" in page.inner_text("#dataset-card")
    page.evaluate(f"location.hash = 'ds={b['id']}'")  # as a pasted link or history navigation would
    page.wait_for_function(f"document.body.dataset.loaded === '#ds={b['id']}'")
    assert "mnist-odd-2shot-s0" in page.inner_text("#dataset-card")
    assert page.is_hidden("#ranking-table")
    page.go_back()
    page.wait_for_function(f"document.body.dataset.loaded === '#ds={a['id']}'")
    assert "animals-farm-2shot-s0" in page.inner_text("#dataset-card")
    assert page.errors == []


def test_a_queued_ranking_shows_its_place_and_then_its_real_time(page, embedded_service):
    base = embedded_service.base_url
    with httpx.Client(base_url=base, timeout=60) as c:
        ds = c.post("/v1/datasets/demo", json={"name": "footwear", "shots": 3, "seed": 11}).json()
        blocker = c.post("/v1/distillations", json={"dataset_id": ds["id"], "teacher_ids": ["fashion-footwear"],
                                                    "student_arch": "test_resnet", "epochs": 200,
                                                    "min_steps": 0}).json()
        page.goto(f"{base}/#ds={ds['id']}")
        page.wait_for_selector("#dataset-card:not([hidden])")
        page.click("#rank")
        # Once the worker has taken the distillation, the ranking is next, behind it.
        page.wait_for_function("(() => { const t = document.querySelector('#rank-progress .msg').textContent; "
                               "return t.includes('position 1') && t.includes('running now: distillation'); })()",
                               timeout=120_000)
        assert page.get_attribute("#rank-progress", "data-status") == "queued"
        c.delete(f"/v1/jobs/{blocker['id']}")
    page.wait_for_selector("#rank-progress[data-status=succeeded]", timeout=240_000)
    done = page.inner_text("#rank-progress .msg")
    assert "in the queue, computed" in done, done
    assert "waited" in page.inner_text("#rank-note")


def test_api_docs_render_with_the_internet_cut_off(page, embedded_service):
    base = embedded_service.base_url
    outside = []

    def only_local(route):
        if route.request.url.startswith(base):
            route.continue_()
        else:
            outside.append((route.request.resource_type, route.request.url))
            route.abort()

    page.route("**/*", only_local)
    page.goto(base + "/docs")
    page.wait_for_selector(".swagger-ui .info .title", timeout=30_000)
    assert "hubscout" in page.inner_text(".swagger-ui .info .title")
    page.wait_for_selector(".opblock-tag", timeout=30_000)
    page.goto(base + "/redoc")
    page.wait_for_selector("h1", timeout=30_000)
    assert "hubscout" in page.inner_text("h1")
    # Nothing either page needs comes from outside; ReDoc's "powered by" logo is the one image it asks for there.
    assert [u for kind, u in outside if kind != "image"] == [], outside
