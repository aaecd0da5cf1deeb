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


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    pg = context.new_page()
    pg.errors = []
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.on("console", lambda m: pg.errors.append(m.text) if m.type == "error" else None)
    pg.set_default_timeout(30_000)
    yield pg
    context.close()


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

    page.click("#rank")
    page.wait_for_selector("#rank-progress[data-status=succeeded]", timeout=240_000)
    rows = page.query_selector_all("#ranking-table tbody tr")
    assert [r.get_attribute("data-teacher") for r in rows][0] == "fashion-footwear"
    assert len(rows) == len(quick_repo)
    headers = page.inner_text("#ranking-table thead")
    assert "OT (↓ BETTER)" in headers.upper() and "LOGME" in headers.upper()

    # The best teacher's plan opens by itself: its classes down, ours across, each of ours mostly its namesake.
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
        assert f"{ours_name} ≈ {theirs}" in near, near
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
    assert "fashion-footwear" in page.inner_text("#distil-teachers")  # the best teacher, ticked by default
    page.click("#distil")
    page.wait_for_selector("#distil-progress[data-status=succeeded]", timeout=180_000)
    page.wait_for_selector("#curves[data-epochs='3']")
    assert len(page.query_selector_all("#loss-svg polyline.series")) == 3  # total, CE, OT
    assert len(page.query_selector_all("#acc-svg polyline.series")) == 2  # train, validation
    card = page.inner_text("#student-card")
    assert "validation accuracy" in card and "CE-only control" in card and "the teachers added" in card
    assert "Size nano" in card and "ran 3 epochs" in card

    shot = tmp_path / "page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 50_000
    if os.environ.get("WEB_SCREENSHOT_DIR"):  # to refresh docs/web.png
        shutil.copy(shot, Path(os.environ["WEB_SCREENSHOT_DIR"]) / "web.png")

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
    ran = [r.get_attribute("data-teacher") for r in page.query_selector_all("#ranking-table tbody tr")]
    assert ran[0] == "fashion-footwear" and len(ran) < len(quick_repo)
    note = page.wait_for_selector("#rank-skipped:not([hidden])").inner_text()
    skipped = [t for t in quick_repo.ids() if t not in ran]
    assert f"{len(skipped)} of {len(quick_repo)} teachers were not ranked" in note
    assert all(t in note for t in skipped) and "Rank them too" in note

    page.click("#rank-all")
    page.wait_for_function(f"document.querySelectorAll('#ranking-table tbody tr').length == {len(quick_repo)}",
                           timeout=240_000)
    assert page.is_hidden("#rank-skipped")
    rows = [r.get_attribute("data-teacher") for r in page.query_selector_all("#ranking-table tbody tr")]
    assert rows[0] == "fashion-footwear" and sorted(rows) == sorted(quick_repo.ids())
    assert not page.errors, page.errors
