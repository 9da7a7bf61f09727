"""The HTML report: self-contained, escaped, every plot present, tolerant of missing and NaN values."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shutil
import struct
import threading
import zlib
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from drift_suite.outputs import plots as svgplot
from drift_suite.gate.compare import Check
from drift_suite.common.metrics import MIN_PAIRS_FOR_CI
from drift_suite.outputs.report import _window_segments, build_context, render_report
from report_example import example_report_data

BASE_ANCHORS = ["projection", "rotation", "accessibility", "layer-profile", "accessibility-heatmap"]
TRAJECTORY_ANCHORS = ["trajectory", "shift-vs-step", "reward-drift", "layer-step"]
XSS = "<script>alert(1)</script>"


def _render(tmp_path: Path, data: dict, name: str = "report.html") -> str:
    out = render_report(data, tmp_path / name)
    assert out.exists()
    return out.read_text(encoding="utf-8")


def _assert_self_contained(html: str) -> None:
    assert not re.search(r'(?:src|href)\s*=\s*["\']?\s*(?:https?:)?//', html, re.I), "external asset referenced"
    assert "<script" not in html.lower(), "the report needs no scripts"
    assert "<link" not in html.lower()


@pytest.mark.parametrize("with_trajectory", [True, False])
@pytest.mark.parametrize("failing", [True, False])
def test_render_example(tmp_path: Path, with_trajectory: bool, failing: bool) -> None:
    data = example_report_data(with_trajectory=with_trajectory, failing=failing)
    html = _render(tmp_path, data)
    _assert_self_contained(html)
    for anchor in BASE_ANCHORS:
        assert f'id="{anchor}"' in html
        assert f'<figure id="{anchor}"' in html and "No data for this plot" not in html
    for anchor in TRAJECTORY_ANCHORS:
        assert (f'id="{anchor}"' in html) == with_trajectory
    assert "Plot unavailable" not in html
    assert html.count("<svg") >= len(BASE_ANCHORS) + (len(TRAJECTORY_ANCHORS) if with_trajectory else 0)
    assert data["verdict"] == ("FAIL" if failing else "PASS")
    assert f'class="banner {data["verdict"]}"' in html
    assert "The four questions" in html and "Sample responses" in html and "Run info" in html
    n_failed = sum(not c["passed"] for c in data["checks"])
    assert f"{n_failed} / {len(data['checks'])}" in html


def test_failed_checks_listed_first(tmp_path: Path) -> None:
    ctx = build_context(example_report_data())
    assert ctx["failed_rows"] and all(not r["passed"] for r in ctx["failed_rows"])
    assert all(r["passed"] for r in ctx["passed_rows"])
    html = _render(tmp_path, example_report_data())
    first_fail, first_pass = html.find("pill fail\">FAIL"), html.find("pill pass\">PASS")
    assert 0 < first_fail < first_pass


def test_model_text_is_escaped(tmp_path: Path) -> None:
    data = example_report_data()
    data["samples"]["checkpoint"]["default"][0]["answer"] = f"Sure! {XSS} & more"
    data["samples"]["baseline"]["pirate"][0]["system"] = '"><img src=x onerror=alert(2)>'
    data["accessibility"]["roles"][0] = "<b>evil</b>"
    data["checkpoint"] = "<i>ckpt</i>"
    html = _render(tmp_path, data)
    assert XSS not in html and "<img src=x" not in html and "<b>evil</b>" not in html and "<i>ckpt</i>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;b&gt;evil&lt;/b&gt;" in html  # escaped inside the SVG bar labels too


def test_json_roundtrip(tmp_path: Path) -> None:
    """The data dict arrives as JSON from other code; infinities become floats again and must render."""
    data = json.loads(json.dumps(example_report_data()))
    data["checks"][0]["sigmas"] = float("inf")
    html = _render(tmp_path, data)
    assert "∞" in html


def test_nan_and_missing_values(tmp_path: Path) -> None:
    data = example_report_data()
    nan = float("nan")
    data["projection"]["checkpoint"][3] = nan
    data["projection"]["baseline"][5] = None
    data["rotation"]["deg"] = [nan] * len(data["rotation"]["deg"])
    data["accessibility"]["ratio"][2] = None
    data["accessibility"]["by_layer"][1][4] = nan
    data["checks"][0].update(value=nan, sigmas=nan, deviation=None)
    data["trajectory"]["spearman"] = {"rho": None, "ci": [nan, nan], "drift_metric": "x", "n": 1}
    data["trajectory"]["reward"] = [None] * 5
    data["trajectory"]["pca"]["steps_xy"][2] = [nan, None]
    data["timings"]["compare"] = nan
    html = _render(tmp_path, data)
    assert "–" in html
    assert "nan" not in html.lower().replace("nanoseconds", "")
    assert "Plot unavailable" not in html
    # A broken optional section degrades to a note instead of failing the report.
    data["layer_profile"] = {"shift_over_axis": "garbage", "rotation_deg": 5}
    data["trajectory"]["projection_shift"] = [[object()]]
    html = _render(tmp_path, data, "broken.html")
    assert "Sample responses" in html


def test_minimal_data(tmp_path: Path) -> None:
    html = _render(tmp_path, {})
    _assert_self_contained(html)
    assert "PASS" in html and "No checks were run" in html
    html = _render(tmp_path, {"verdict": "FAIL", "checks": [{"family": "rotation", "subject": "layer 3", "passed": False}],
                              "trajectory": None}, "min2.html")
    assert 'class="banner FAIL"' in html and "1 / 1" in html


def test_svgplot_helpers() -> None:
    assert svgplot.nice_ticks(0, 1) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert svgplot.nice_ticks(3, 3)  # degenerate range still gives ticks
    assert svgplot.fmt_num(float("nan")) == "–" and svgplot.fmt_num(None) == "–" and svgplot.fmt_num(-0.0) == "0"
    assert svgplot.diverging_color(5, 0, 1) == "#b2182b" and svgplot.diverging_color(0, 0, 1) == "#f7f7f7"
    label = "<x&y>"
    charts = [
        svgplot.line_chart([0, 1, 2], [svgplot.Series(label, [1, None, 3], flags=[True, False, False])], title=label),
        svgplot.bar_chart([label, "b"], [1.2, math.nan], tolerance=0.1, title=label),
        svgplot.heatmap([[1, math.nan]], [label], [0, 1], center=1.0, title=label),
        svgplot.trajectory_chart([[0, 0], [1, 1]], ["s0", label], [[0.5, 0.5]], [label], title=label),
        svgplot.dual_axis_chart([svgplot.Series(label, [1, 2])], [svgplot.Series("r", [3, 1])], note=label),
    ]
    for svg in charts:
        assert svg.startswith("<svg") and svg.endswith("</svg>")
        assert label not in svg and "&lt;x&amp;y&gt;" in svg
    assert charts[0].count("M") >= 2  # the None breaks the line into two segments


def _png_stats(path: Path) -> tuple[int, int, int]:
    """(width, height, distinct colours in a sample of rows) from a PNG, with plain zlib."""
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, ihdr = 8, b"", b""
    while pos < len(raw):
        length, kind = struct.unpack(">I4s", raw[pos:pos + 8])
        chunk = raw[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            ihdr = chunk
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", ihdr[:10])
    assert depth == 8 and colour in (2, 6)
    bpp = 3 if colour == 2 else 4
    data = zlib.decompress(idat)
    stride = width * bpp
    colours: set[bytes] = set()
    prev = bytearray(stride)
    for y in range(height):
        ftype = data[y * (stride + 1)]
        line = bytearray(data[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):  # undo PNG row filters so pixel values are real
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 255
            elif ftype == 2:
                line[i] = (line[i] + b) & 255
            elif ftype == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        if y % 97 == 0:
            colours.update(bytes(line[i:i + 3]) for i in range(0, stride, bpp * 7))
        prev = line
    return width, height, len(colours)


def _screenshot_module():
    spec = importlib.util.spec_from_file_location("screenshot_report",
                                                  Path(__file__).resolve().parents[1] / "scripts" / "screenshot_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


needs_chromium = pytest.mark.skipif(not any(shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")),
                                    reason="needs chromium (apt-get install -y chromium)")


@pytest.mark.slow
@needs_chromium
def test_screenshot(tmp_path: Path) -> None:
    module = _screenshot_module()
    png = tmp_path / "report.png"
    assert module.main(["-o", str(png), "--height", "2400"]) == 0
    assert png.stat().st_size > 20_000
    width, height, colours = _png_stats(png)
    assert (width, height) == (1280, 2400)
    assert colours > 20, "screenshot looks blank"


def test_data_flows_one_way_runner_to_report() -> None:
    """runner measures, report_data shapes its outcome, report renders: nothing upstream imports downstream."""
    import ast

    package = Path(__file__).resolve().parents[1] / "drift_suite"

    def imported(module: str) -> set[str]:
        tree = ast.parse((package / f"{module}.py").read_text(encoding="utf-8"))
        return {node.module.lstrip(".") for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}

    assert not [m for m in imported("gate/runner") if m.startswith("outputs")]
    assert "report" not in imported("outputs/report_data")
    assert not list(package.rglob("report_example.py")), "example data is test data, not part of the package"


@pytest.mark.parametrize("n,ci,claimed,text", [
    (4, [0.77, 1.0], False, "too few steps for an interval"),  # the degenerate n = 4 case: no interval shown
    (MIN_PAIRS_FOR_CI, [0.5, 1.0], True, "95% CI [0.5, 1]"),
    (MIN_PAIRS_FOR_CI + 3, [None, None], False, "no interval (degenerate bootstrap)"),
    (MIN_PAIRS_FOR_CI + 3, [-0.2, 0.9], False, "95% CI [-0.2, 0.9]"),
])
def test_reward_correlation_interval_only_with_support(n: int, ci: list, claimed: bool, text: str) -> None:
    data = example_report_data(with_trajectory=True)
    data["trajectory"]["spearman"] = {"rho": 0.77, "ci": ci, "n": n, "drift_metric": "shift"}
    context = build_context(data)
    question = next(q for q in context["questions"] if "reward" in q["q"].lower())
    assert ("drift tracks reward" in question["answer"]) is claimed
    assert text in question["answer"]
    plot = next(p for p in context["plots"] if p["id"] == "reward-drift")
    assert text in plot["caption"] and text in str(plot["svg"])
    if n < MIN_PAIRS_FOR_CI:
        assert "CI [" not in question["answer"] + plot["caption"] + str(plot["svg"])


def test_checkpoint_reward_is_drawn_over_its_window() -> None:
    """Plot (8): the reward paired with a checkpoint is the mean since the previous one, drawn over that window."""
    xs, ys = _window_segments([0, 50, 100, 150], [None, 0.2, None, 0.4])
    assert xs == [0, 50, None, 100, 150, None] and ys == [0.2, 0.2, None, 0.4, 0.4, None]
    svg = str(next(p for p in build_context(example_report_data())["plots"] if p["id"] == "reward-drift")["svg"])
    assert "mean reward since the previous checkpoint" in svg


def _projection_check(value: float, layer: int) -> dict:
    check = Check("projection", f"layer {layer}", value, 10.0, 1.0, 0.25, step=3)
    return check.to_dict() | {"message": check.message()}


def test_projection_direction_in_rows_and_summary(tmp_path: Path) -> None:
    data = {"checks": [_projection_check(8.0, 4), _projection_check(12.5, 6), _projection_check(10.2, 8)]}
    context = build_context(data)
    rows = {r["subject"]: r for r in context["failed_rows"] + context["passed_rows"]}
    assert rows["layer 4"]["direction"] == "toward the roles" and not rows["layer 4"]["passed"]
    assert rows["layer 6"]["direction"] == "toward the assistant" and not rows["layer 6"]["passed"]
    assert rows["layer 8"]["direction"] == "toward the assistant" and rows["layer 8"]["passed"]
    assert "drifted toward the roles:" in rows["layer 4"]["message"]
    assert "within tolerance (toward the assistant):" in rows["layer 8"]["message"]
    meaning = next(f["meaning"] for f in context["families"] if f["name"] == "projection")
    assert "toward the roles (less assistant-like) at 1 of 3 asserted layers (layer 4)" in meaning
    assert "toward the assistant (more assistant-like) at 1 of 3 asserted layers (layer 6)" in meaning
    html = _render(tmp_path, data)
    assert re.search(r"<td>layer 4</td>.*?<td>toward the roles</td>", html, re.S)


def _svg_texts(svg: str, cls: str) -> list[tuple[float, float, str, str, bool]]:
    """(x, y, anchor, text, bold) of every ``<text class=cls>`` in an SVG string."""
    out = []
    for m in re.finditer(rf'<text x="([-\d.]+)" y="([-\d.]+)" text-anchor="(\w+)" class="{cls}"[^>]*?( font-weight="600")?>([^<]*)</text>', svg):
        out.append((float(m[1]), float(m[2]), m[3], m[5], bool(m[4])))
    return out


def test_trajectory_labels_never_overlap_in_a_crowded_plot() -> None:
    """40 personas in a tight cloud and an 8-step path that barely moves: every label gets its own box, clear of
    every other label and every marker, or is listed under the plot; none is lost."""
    import random

    rng = random.Random(3)
    names = [f"persona_{i}" for i in range(40)]
    personas = [[rng.gauss(0, 1), rng.gauss(0, 0.6)] for _ in names]
    path = [[-0.1 + 0.02 * k, 0.01 * k] for k in range(8)]
    steps = [f"step {25 * k}" for k in range(8)]
    svg = svgplot.trajectory_chart(path, steps, personas, names, width=600, height=440)
    labels = _svg_texts(svg, "plab")
    boxes = [svgplot.text_box(x, y, text, 11.0, anchor, bold) for x, y, anchor, text, bold in labels]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), f"labels overlap: {a} {b}"
    markers = [(float(m[1]), float(m[2]), float(m[3])) for m in re.finditer(r'<circle cx="([-\d.]+)" cy="([-\d.]+)" r="([\d.]+)"', svg)]
    markers = [m for m in markers if m[1] > 40]  # not the legend's dot in the title row
    assert len(markers) == len(names) + len(path)
    for box in boxes:
        for cx, cy, r in markers:
            assert not box.overlaps(svgplot.Box(cx - r, cy - r, cx + r, cy + r)), f"label {box} covers a marker at {cx},{cy}"
    placed = {text for *_, text, _ in labels}
    listed = re.search(r"No room to label: ([^<(]*)", svg)
    unplaced = {t.strip() for t in listed[1].split(",")} if listed else set()
    assert placed | unplaced == set(names) | set(steps) and not placed & unplaced
    assert set(steps) <= placed, "the path's own labels go first"
    assert len(placed) > len(names) // 2, "placement gave up on most labels"


def test_one_colour_meaning_and_symmetric_scales_for_accessibility(tmp_path: Path) -> None:
    up, down = 1.3, 0.8
    bars = svgplot.bar_chart(["up", "down"], [up, down], tolerance=0.1, flags=[True, True],
                             above_label="more accessible", below_label="less accessible")
    fill = {m[2]: m[1] for m in re.finditer(r'fill="(#[0-9a-f]{6})" rx="2"[^>]*><title>(\w+):', bars)}
    # the heat map's colour for the same values has the same hue as the bar: red above 1, blue below
    assert fill["up"] == svgplot.ABOVE_COLOR == svgplot.diverging_color(up, 1.0, 0.3)
    assert fill["down"] == svgplot.BELOW_COLOR == svgplot.diverging_color(0.7, 1.0, 0.3)
    ticks = [float(t) for t in re.findall(r'text-anchor="middle" class="tick">([-\d.]+)</text>', bars)]
    assert ticks == [0.6, 0.8, 1.0, 1.2, 1.4]  # 1 ± 0.4: the 0.3 deviation (×1.05) rounded up, symmetric about 1
    heat = svgplot.heatmap([[1.0, 2.3], [-0.3, 1.1]], ["a", "b"], [0, 1], center=1.0,
                           below_text="less accessible", above_text="more accessible")
    legend = [float(t) for t in re.findall(r'text-anchor="middle" class="tick">([-\d.]+)</text>', heat)][-5:]
    assert legend == [-0.5, 0.25, 1.0, 1.75, 2.5]  # 1 ± 1.5: the 1.3 deviation rounded up, symmetric about 1
    html = _render(tmp_path, example_report_data())
    step = example_report_data()["step"]
    assert f"Persona accessibility at step {step}" in html and f"Accessibility by role and layer at step {step}" in html
    assert "less accessible" in html and "more accessible" in html


XSS_PAYLOADS = ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>", '<a href="javascript:alert(1)">click</a>',
                '"><svg onload=alert(1)>', "javascript:alert(1)"]


def _hostile_data(payloads: list[str]) -> dict:
    """The example data with ``payloads`` in every text that comes from a model, a persona file or the user."""
    data = example_report_data()
    hostile = " ".join(payloads)
    for side in ("baseline", "checkpoint"):
        for items in data["samples"][side].values():
            for item in items:
                item.update(answer=f"Sure! {hostile}", system=f"You are {hostile}", question=f"Why {hostile}?")
        data["samples"][side][f"evil {hostile}"] = [{"system": hostile, "question": hostile, "answer": hostile}]
    roles = [f"{role} {payloads[i % len(payloads)]}" for i, role in enumerate(data["accessibility"]["roles"])]
    data["accessibility"]["roles"] = data["persona_set"]["roles"] = roles
    data["trajectory"]["pca"]["persona_names"] = ["default", *roles]
    data["trajectory"]["checkpoints"] = [f"runs/{p}/checkpoint-1" for p in payloads]
    for check in data["checks"]:
        check["subject"] = f"{check['subject']} {hostile}"
        check["message"] = f"{check['message']} {hostile}"
    data.update(checkpoint=f"runs/{hostile}", baseline_dir=hostile, title=f"report {hostile}",
                update_command=f"pytest --checkpoint {hostile}", baseline_update=[hostile])
    data["model"]["model_id"] = hostile
    data["versions"][hostile] = hostile
    data["timings"][hostile] = 1.0
    data["persona_set"]["name"] = hostile
    data["layers"]["target"] = hostile
    return data


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))


def test_hostile_model_and_persona_text_renders_inert(tmp_path: Path) -> None:
    """Answers, persona texts and paths holding <script>, onerror= and javascript: come out as text, not markup."""
    html = _render(tmp_path, _hostile_data(XSS_PAYLOADS))
    parser = _Tags()
    parser.feed(html)
    tags = {tag for tag, _ in parser.tags}
    assert not tags & {"script", "img", "iframe", "object", "embed", "link", "base", "form"}, tags
    assert sum(tag == "svg" for tag, _ in parser.tags) == html.count('<svg xmlns="http://www.w3.org/2000/svg"'), "an svg came from data"
    for tag, attrs in parser.tags:
        for name, value in attrs:
            assert not name.startswith("on"), f"<{tag} {name}=...> came from data"
            if name in ("href", "src", "xlink:href", "action", "formaction", "style"):
                # the only links are the report's own anchors; data text may sit in title attributes, escaped
                assert (value or "").startswith("#") or name == "style", f"<{tag} {name}={value!r}>"
                assert "javascript:" not in (value or "").lower() and "url(" not in (value or "").lower()
    # the data did reach the page, as text
    assert html.count("&lt;script&gt;alert(1)&lt;/script&gt;") > 20
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "javascript:alert(1)" in html


class _CountingServer:
    """A local HTTP server that records every path requested of it: any request means a payload ran."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        paths = self.paths

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                paths.append(self.path)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "_CountingServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def _live_payloads(url: str, dialog: bool = True) -> list[str]:
    """Payloads that, if they ever run, open a dialog (with ``dialog``), mark the DOM and call ``url``.

    A dialog blocks headless Chromium's --dump-dom, so a dialog that opened shows as no DOM at all.
    """
    mark = ("alert(1);" if dialog else "") + "document.documentElement.setAttribute('data-pwned','{}')"
    return [
        f"<script>{mark.format('script')};fetch('{url}/script')</script>",
        f"<img src=\"{url}/img\" onerror=\"{mark.format('onerror')}\">",
        f"<img src=x onerror=\"{mark.format('onerror2')};new Image().src='{url}/onerror'\">",
        f"<svg onload=\"{mark.format('svg')};fetch('{url}/svg')\"></svg>",
        f"<a id=\"jsurl\" href=\"javascript:{mark.format('js')}\">click</a>",
        f"<iframe src=\"{url}/iframe\"></iframe>",
        f"<style>@import '{url}/css';</style>",
        f"\"><body onload=\"{mark.format('attr')};fetch('{url}/attr')\">",
    ]


def _marked(dom: str) -> set[str]:
    """Which payloads ran: the values of any data-pwned attribute in the DOM (as text, payloads do not count)."""
    parser = _Tags()
    parser.feed(dom)
    return {value or "" for _, attrs in parser.tags for name, value in attrs if name == "data-pwned"}


@pytest.mark.slow
@needs_chromium
def test_hostile_text_is_inert_in_chromium(tmp_path: Path) -> None:
    """Headless Chromium loads a report full of live payloads: no script runs (the DOM stays unmarked, no dialog
    code ran), no request leaves the page, no javascript: link exists. A control page with the same payloads
    unescaped shows that this harness does see them run."""
    module = _screenshot_module()
    with _CountingServer() as server:
        control = tmp_path / "control.html"
        control.write_text("<!DOCTYPE html><html><head><title>control</title></head><body>"
                           + "".join(_live_payloads(server.url, dialog=False)) + "</body></html>", encoding="utf-8")
        control_dom = module.dump_dom(control, timeout=60)
        assert control_dom and _marked(control_dom) and server.paths, "the harness cannot see payloads run"
        server.paths.clear()
        report = render_report(_hostile_data(_live_payloads(server.url)), tmp_path / "report.html")
        dom = module.dump_dom(report, timeout=60)
    assert dom and "Sample responses" in dom, "no DOM: chromium hung on a dialog or did not load the report"
    assert not _marked(dom), "a payload ran"
    assert server.paths == [], f"the page made requests: {server.paths}"
    parser = _Tags()
    parser.feed(dom)
    assert not {tag for tag, _ in parser.tags} & {"script", "img", "iframe"}
    assert not any(name == "href" and "javascript:" in (value or "") for _, attrs in parser.tags for name, value in attrs)
    assert "&lt;script&gt;alert(1);document" in dom  # the payload is on the page, as text


@pytest.mark.slow
@needs_chromium
def test_trajectory_labels_do_not_overlap_as_chromium_renders_them(tmp_path: Path) -> None:
    """The fast test trusts estimated text widths; here Chromium's own getBBox() measures every label: each
    rendered box lies inside its estimate, so no two labels overlap on screen either."""
    import random

    rng = random.Random(5)
    names = [f"persona_{i}_{'x' * (i % 7)}" for i in range(40)]
    crowded = svgplot.trajectory_chart([[0.02 * k, 0.01 * k] for k in range(8)], [f"step {25 * k}" for k in range(8)],
                                       [[rng.gauss(0, 1), rng.gauss(0, 0.6)] for _ in names], names, width=600, height=440)
    example = str(next(p for p in build_context(example_report_data())["plots"] if p["id"] == "trajectory")["svg"])
    probe = """<script>
    const out = [];
    for (const svg of document.querySelectorAll('svg')) {
      const labels = [...svg.querySelectorAll('text.plab')];
      for (const t of labels) {
        const b = t.getBBox();
        const x = +t.getAttribute('x'), y = +t.getAttribute('y'), a = t.getAttribute('text-anchor');
        out.push([t.textContent, b.x, b.y, b.width, b.height, x, y, a]);
      }
    }
    document.body.setAttribute('data-boxes', JSON.stringify(out));
    </script>"""
    page = tmp_path / "labels.html"
    page.write_text(f"<!DOCTYPE html><html><body>{crowded}{example}{probe}</body></html>", encoding="utf-8")
    dom = _screenshot_module().dump_dom(page, timeout=60)
    match = re.search(r'data-boxes="([^"]*)"', dom or "")
    assert match, "chromium gave no boxes"
    import html as html_lib

    boxes = json.loads(html_lib.unescape(match[1]))
    assert len(boxes) > 40
    for text, bx, by, bw, bh, x, y, anchor in boxes:
        estimate = svgplot.text_box(x, y, text, 11.0, anchor, text.startswith("step"))
        # Chromium's box spans the font's full ascent..descent; the estimate only has to hold the glyphs' width.
        assert estimate.x0 <= bx and bx + bw <= estimate.x1, f"{text!r}: rendered {bw:.1f}px wide, estimated {estimate.x1 - estimate.x0:.1f}px"


def _probe_run_dir(tmp_path: Path, stop: bool = True, sigma: bool = True) -> Path:
    """A run dir as `drift-suite train --drift_every 2 --drift_stop 3` leaves it: train_log.jsonl and the manifest."""
    run = tmp_path / "run"
    run.mkdir()
    lines = []
    for step in range(1, 7):
        entry = {"step": step, "reward": -0.1 + 0.05 * step, "loss": 0.0}
        if step % 2 == 0:
            entry |= {"drift/projection": -0.07 * step, "drift/rotation_deg": 2.0 * step}
            if sigma:
                entry |= {"drift/projection_sigma": -0.75 * step, "drift/rotation_rms": 0.25 * step}
        lines.append(json.dumps(entry))
    (run / "train_log.jsonl").write_text("\n".join(lines) + "\n{\"step\": 7, \"rew")  # a partial last line is skipped
    manifest = {"model": "m", "arguments": {"drift_stop": 3.0, "drift_every": 2}}
    if stop:
        manifest["drift_stop"] = {"step": 6, "metric": "projection", "value_sigma": -4.5, "threshold_sigma": 3.0,
                                  "patience": 1, "last_checkpoint_within_budget": "run/checkpoint-4"}
    (run / "run_manifest.json").write_text(json.dumps(manifest))
    return run


def _gate_outcome(failing_steps: set[int], warned_steps: frozenset[int] = frozenset()):
    """Per step one projection check: beyond its threshold toward the roles (fails) at ``failing_steps``,
    toward the assistant under a toward_roles-only gate (a warning) at ``warned_steps``, else within it."""
    from types import SimpleNamespace

    def result(step: int):
        value = -1.0 if step in failing_steps else 1.0 if step in warned_steps else 0.1
        check = Check("projection", "layer 3", value, 0.0, 0.5, 0.1, step=step, failing_side="toward_roles")
        return SimpleNamespace(step=step, comparison=SimpleNamespace(checks=[check]))

    return SimpleNamespace(steps=[result(2), result(4), result(6)])


def test_live_probe_trajectory_and_stop_from_run_dir(tmp_path: Path) -> None:
    from drift_suite.outputs.report_data import live_probe

    probe = live_probe(_probe_run_dir(tmp_path), _gate_outcome({6}, warned_steps=frozenset({4})))
    assert probe["steps"] == [2, 4, 6]
    assert probe["projection_sigma"] == [-1.5, -3.0, -4.5] and probe["rotation_rms"] == [0.5, 1.0, 1.5]
    assert probe["stop"]["step"] == 6 and probe["threshold_sigma"] == 3.0
    assert [g["passed"] for g in probe["gate"]] == [True, True, False]
    data = example_report_data(with_trajectory=True, failing=True) | {"live_probe": probe}
    html = _render(tmp_path, data)
    _assert_self_contained(html)
    assert '<figure id="live-probe"' in html and 'id="live-probe-table"' in html
    assert "Training stopped at step 6 by --drift_stop: the probe&#39;s projection read -4.5 σ, beyond 3 σ" in html
    assert "Last checkpoint within budget: run/checkpoint-4." in html
    assert "stopped at step 6" in html and "--drift_stop 3 σ" in html  # the stop line and the threshold in the plot
    assert "6 (stop)" in html and "FAIL 1/1" in html and "-4.5" in html
    context = build_context(data)
    rows = context["live_probe"]["rows"]
    assert [r["step"] for r in rows] == [2, 4, 6] and [r["gate"] for r in rows] == ["PASS", "PASS, 1 warning", "FAIL 1/1"]
    assert [r["stopped"] for r in rows] == [False, False, True]


def test_live_probe_without_stop_or_sigma(tmp_path: Path) -> None:
    from drift_suite.outputs.report_data import live_probe

    probe = live_probe(_probe_run_dir(tmp_path, stop=False, sigma=False))
    assert probe["stop"] is None and probe["projection_sigma"] == [None, None, None]
    html = _render(tmp_path, example_report_data() | {"live_probe": probe})
    assert '<figure id="live-probe"' in html and "Stopped early" not in html and "stopped at step" not in html
    assert "shift toward the roles (axis lengths)" in html  # raw units when the run logged no σ
    (tmp_path / "run" / "train_log.jsonl").write_text(json.dumps({"step": 1, "reward": 0.1}) + "\n")
    assert live_probe(tmp_path / "run") is None  # a run without --drift_every: no section
    assert 'id="live-probe' not in _render(tmp_path, example_report_data() | {"live_probe": None}, "plain.html")
