"""What a sweep looks like in MLflow's UI, checked in a real browser.

Runs a small quickstart sweep (or takes an existing sweep directory), starts ``mlflow
server`` on 127.0.0.1 on a free port with that sweep's store, opens the address of the
sweep's runs view (``mllm4wtal.sweep.mlflow_view.sweep_runs_url``, what the sweep prints) in
headless Chromium (``/usr/bin/chromium``, driven over the DevTools protocol) and checks the
rendered page: the runs table, not the GenAI overview; the trials by their readable names;
the sweep's score as the first metric column, best first; and, through the server, the
summary among the parent run's artifacts. Optionally writes a screenshot.

    .venv/bin/python jobs/ui/check_mlflow_ui.py                  # a small sweep, then the UI
    .venv/bin/python jobs/ui/check_mlflow_ui.py --sweep-dir sweeps/quickstart \\
        --screenshot docs/img/mlflow_runs.png
    .venv/bin/python jobs/ui/check_mlflow_ui.py --set data.synthetic.train_videos=16 ...

Exit status 0: every check passed; 1: one line per failed check; 2: something could not run
(no Chromium, the sweep or the server failed), one line. Every process it starts (sweep,
server, browser) is stopped by its process id.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import mlflow
from mllm4wtal.report.summary import FILES
from mllm4wtal.sweep import runner
from mllm4wtal.sweep.mlflow_tags import EXPERIMENT_KIND_TAG, KIND_TRAINING, PARENT_TAG
from mllm4wtal.sweep.mlflow_view import RUN_NAME_COLUMN, metric_column, sweep_runs_url, ui_base
from mllm4wtal.sweep.tracker import PARENT_RUN_FILE

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "jobs" / "cluster"))
import services  # noqa: E402  (jobs/cluster/services.py: the MLflow server, processes)
from services import started, tail  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync")
WIDTH, HEIGHT = 1600, 900
#: the sweep's shape: short trials, ASHA's rung at iteration 2 of 8
SMALL_SWEEP = ("--set", "train.iterations=8", "--set", "train.eval_interval=2",
               "--space-set", "trials.num_samples=6", "--space-set", "scheduler.grace_period=2",
               "--space-set", "scheduler.reduction_factor=2",
               "--space-set", "scheduler.max_t=8")
#: the assistant panel takes a third of the page; closed for the screenshot only
ASSISTANT_CLOSED = {"mlflow.assistant.panelOpen_v1": "false",
                    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true"}

# the runs table (ag-grid): columns in the order they are drawn, cells by row
PROBE = r"""(() => {
  const heads = [...document.querySelectorAll('.ag-header-cell[col-id]')]
    .map(e => [e.getAttribute('col-id'), e.getBoundingClientRect().left])
    .sort((a, b) => a[1] - b[1]).map(c => c[0]);
  const rows = {};
  for (const cell of document.querySelectorAll('.ag-row .ag-cell[col-id]')) {
    const i = cell.closest('.ag-row').getAttribute('row-index');
    (rows[i] = rows[i] || {})[cell.getAttribute('col-id')] = cell.innerText.trim();
  }
  const order = Object.keys(rows).map(Number).sort((a, b) => a - b);
  return JSON.stringify({href: location.href, columns: heads,
    heading: [...document.querySelectorAll('h2')].map(e => e.innerText.trim()),
    rows: order.map(i => rows[i])});
})()"""


class CheckError(Exception):
    """Something the check needs could not run (one line)."""


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    try:
        services.wait_http(url, proc, log, timeout)
    except services.ServiceError as e:
        raise CheckError(str(e)) from None


def run_small_sweep(workdir: Path, sets: list[str], timeout: int) -> Path:
    """``mllm4wtal sweep search_spaces/quickstart.yaml`` made small; its experiment dir."""
    cli = Path(sys.executable).with_name("mllm4wtal")
    cmd = [str(cli), "sweep", str(ROOT / "search_spaces" / "quickstart.yaml"),
           "--storage", str(workdir), *SMALL_SWEEP, *sets]
    log = workdir / "sweep.log"
    with started(cmd, log) as proc:
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise CheckError(f"the sweep took over {timeout} s: {tail(log)}") from None
    if code != 0:
        raise CheckError(f"the sweep failed (exit {code}): {tail(log)}")
    return workdir / "quickstart"


class Page:
    """One Chromium tab over the DevTools protocol (aiohttp's websocket client)."""

    def __init__(self, ws: Any) -> None:
        self.ws, self.next_id = ws, 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        while True:
            msg = await self.ws.receive_json(timeout=60)
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise CheckError(f"Chromium: {method}: {msg['error']}")
                return msg.get("result", {})

    async def evaluate(self, expression: str) -> Any:
        out = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return out.get("result", {}).get("value")

    async def open(self, url: str) -> None:
        await self.call("Page.navigate", url=url)

    async def table(self, ready: Any, timeout: float) -> dict[str, Any]:
        """The probe's snapshot once ``ready(snapshot)`` holds (else the last one)."""
        end, snap = time.monotonic() + timeout, {}
        while time.monotonic() < end:
            raw = await self.evaluate(PROBE)
            snap = json.loads(raw) if raw else {}
            if snap and ready(snap):
                await asyncio.sleep(1.0)  # let late cells paint
                return json.loads(await self.evaluate(PROBE))
            await asyncio.sleep(0.5)
        return snap


def run_name_of(cell: str) -> str:
    """The Run Name cell shows a colour chip's label, then the name."""
    return cell.strip().splitlines()[-1].strip() if cell.strip() else ""


def number(cell: str | None) -> float | None:
    try:
        return float(cell) if cell not in (None, "", "-") else None
    except ValueError:
        return None


def check_page(snap: dict[str, Any], expect: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(passed, failed) checks of the runs page against what the store holds."""
    ok, bad = [], []

    def check(cond: bool, good: str, fail: str) -> None:
        (ok if cond else bad).append(good if cond else fail)

    check("Runs" in snap.get("heading", []) and RUN_NAME_COLUMN in snap.get("columns", []),
          "the page is the runs table",
          f"not the runs table: headings {snap.get('heading')}, columns {snap.get('columns')}")
    shown = [run_name_of(r.get(RUN_NAME_COLUMN, "")) for r in snap.get("rows", [])]
    missing = sorted(set(expect["names"]) - set(shown))
    check(not missing, f"{len(expect['names'])} trials by readable name",
          f"run names not shown: {missing[:3]} (shown: {shown[:3]})")
    unreadable = [n for n in expect["trial_names"] if not re.match(r"trial \d+: \S+=\S+", n)]
    check(not unreadable, "trial names read `trial <n>: <param>=<value> ...`",
          f"unreadable trial names: {unreadable[:3]}")
    score = metric_column(expect["score_key"])
    data_cols = [c for c in snap.get("columns", []) if c.startswith(("metrics.", "params.",
                                                                     "tags."))]
    check(bool(data_cols) and data_cols[0] == score, f"first metric column: {score}",
          f"first data columns {data_cols[:3]}, not {score}")
    values = [number(r.get(score)) for r in snap.get("rows", [])]
    values = [v for v in values if v is not None and math.isfinite(v)]
    ranked = sorted(values, reverse=expect["mode"] == "max")
    check(len(values) >= len(expect["trial_names"]) and values == ranked,
          f"rows best first by {expect['score_key']} ({expect['mode']})",
          f"score cells {values} not best first ({expect['mode']})")
    return ok, bad


async def browse(base: str, url: str, plain: str, expect: dict[str, Any],
                 screenshot: Path | None, timeout: float) -> dict[str, Any]:
    profile = Path(tempfile.mkdtemp(prefix="chromium-profile-"))
    log = profile.parent / f"{profile.name}.log"
    cmd = [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
           "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
           f"--window-size={WIDTH},{HEIGHT}", "about:blank"]
    try:
        with started(cmd, log) as proc:
            port_file, end = profile / "DevToolsActivePort", time.monotonic() + 60
            while not port_file.exists() or not port_file.read_text().strip():
                if proc.poll() is not None or time.monotonic() > end:
                    raise CheckError(f"Chromium did not start: {tail(log)}")
                await asyncio.sleep(0.2)
            port = port_file.read_text().split()[0]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list") as r:
                tab = next(t for t in json.load(r) if t["type"] == "page")
            async with aiohttp.ClientSession() as http, http.ws_connect(
                    tab["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                page = Page(ws)
                await page.call("Emulation.setDeviceMetricsOverride", width=WIDTH,
                                height=HEIGHT, deviceScaleFactor=1, mobile=False)
                score = expect["score_key"]

                def ready(s: dict[str, Any]) -> bool:
                    rows = [r for r in s.get("rows", []) if number(
                        r.get(f"metrics.`{score}`")) is not None]
                    return len(rows) >= len(expect["trial_names"])
                # a fresh browser opens the sweep's address, as a person pasting it would
                await page.open(url)
                snap = await page.table(ready, timeout)
                # the plain address of the experiment, for the record
                await page.open("about:blank")
                await page.open(plain)
                first = await page.table(lambda s: bool(s.get("heading")), timeout)
                result = {"address": url, "page": snap,
                          "plain_address": plain, "plain_heading": first.get("heading")}
                if screenshot is not None:
                    items = "".join(f"localStorage.setItem({json.dumps(k)},{json.dumps(v)});"
                                    for k, v in ASSISTANT_CLOSED.items())
                    await page.evaluate(items)
                    await page.open("about:blank")
                    await page.open(url)
                    await page.table(ready, timeout)
                    shot = await page.call("Page.captureScreenshot", format="png")
                    screenshot.parent.mkdir(parents=True, exist_ok=True)
                    screenshot.write_bytes(base64.b64decode(shot["data"]))
                return result
    finally:
        shutil.rmtree(profile, ignore_errors=True)
        log.unlink(missing_ok=True)


def expected(sweep_dir: Path) -> dict[str, Any]:
    """What the page must show, read from the sweep's store (not through the UI)."""
    space = runner.reload(sweep_dir)
    record = json.loads((sweep_dir / PARENT_RUN_FILE).read_text())
    client = mlflow.MlflowClient(tracking_uri=record["tracking_uri"])
    parent = client.get_run(record["run_id"])
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'",
                                  max_results=1000)
    trial_names = [r.info.run_name for r in children]
    return {"tracking_uri": record["tracking_uri"], "parent_run_id": parent.info.run_id,
            "experiment_id": parent.info.experiment_id,
            "score_key": f"{space.score}/{space.metric}", "mode": space.mode,
            "trial_names": trial_names, "names": [parent.info.run_name, *trial_names]}


def check_store(base: str, expect: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Through the server: the experiment's kind and the summary on the parent run."""
    client = mlflow.MlflowClient(tracking_uri=base)
    ok, bad = [], []
    kind = client.get_experiment(expect["experiment_id"]).tags.get(EXPERIMENT_KIND_TAG)
    (ok if kind == KIND_TRAINING else bad).append(
        f"experiment kind {kind!r}" + ("" if kind == KIND_TRAINING else
                                        f", not {KIND_TRAINING!r}"))
    arts = {a.path for a in client.list_artifacts(expect["parent_run_id"])}
    missing = sorted(set(FILES) - arts)
    (bad if missing else ok).append(f"summary missing on the parent run: {missing}" if missing
                                    else f"the parent run holds the summary ({len(FILES)} "
                                         "files)")
    return ok, bad


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sweep-dir", type=Path, help="an existing sweep's experiment directory "
                   "(default: run a small quickstart sweep first)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="passed to the small sweep as --set, repeatable")
    p.add_argument("--workdir", type=Path, help="where the small sweep goes (default: a "
                   "temporary folder, removed at the end)")
    p.add_argument("--screenshot", type=Path, help="write a PNG of the runs page here")
    p.add_argument("--force", action="store_true", help="overwrite an existing screenshot")
    p.add_argument("--report", type=Path, help="write what was seen and checked as JSON")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds for the server and for each page (default 120)")
    args = p.parse_args(argv)
    if args.screenshot is not None and args.screenshot.exists() and not args.force:
        print(f"check_mlflow_ui: error: {args.screenshot} exists; pass --force to overwrite "
              "it", file=sys.stderr)
        return 2
    tmp = None
    try:
        if not CHROMIUM.exists():
            raise CheckError(f"{CHROMIUM} is not installed (Debian: apt-get install chromium)")
        sweep_dir = args.sweep_dir
        if sweep_dir is None:
            workdir = args.workdir or Path(tmp := tempfile.mkdtemp(prefix="mlflow-ui-"))
            workdir.mkdir(parents=True, exist_ok=True)
            sweep_dir = run_small_sweep(workdir.resolve(), [
                x for s in args.sets for x in ("--set", s)], timeout=900)
        expect = expected(sweep_dir.resolve())
        result = serve_and_check(expect, args)
    except CheckError as e:
        print(f"check_mlflow_ui: error: {e}", file=sys.stderr)
        return 2
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.report is not None:
        args.report.write_text(json.dumps(result, indent=1) + "\n")
    for line in result["passed"]:
        print(f"ok: {line}")
    for line in result["failed"]:
        print(f"FAILED: {line}")
    print(f"opened {result['address']}")
    return 1 if result["failed"] else 0


def serve_and_check(expect: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mlflow-server-") as logs:
        server = services.MlflowServer(expect["tracking_uri"], logs)
        base = ui_base(expect["tracking_uri"], server.port)
        try:
            server.start(timeout=args.timeout)
        except services.ServiceError as e:
            raise CheckError(str(e)) from None
        try:
            return check_served(expect, args, server.port, base)
        finally:
            server.stop()


def check_served(expect: dict[str, Any], args: argparse.Namespace, port: int, base: str
                 ) -> dict[str, Any]:
    """The page and the store as the running server shows them."""
    url = sweep_runs_url(expect["tracking_uri"], expect["parent_run_id"], port)
    plain = f"{base}/#/experiments/{expect['experiment_id']}"
    seen = asyncio.run(browse(base, url, plain, expect, args.screenshot, args.timeout))
    passed, failed = check_page(seen["page"], expect)
    more_ok, more_bad = check_store(base, expect)
    return {**seen, "expected": expect, "passed": passed + more_ok,
            "failed": failed + more_bad}


if __name__ == "__main__":
    sys.exit(main())
