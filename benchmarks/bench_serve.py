"""Load test of `zoo serve`: N concurrent clients, a fixed count of requests each level,
p50/p99 latency and throughput per model, and a check that every response is what its
own seed gives alone. With --screenshot, the web page is also used in headless Chromium
(pick VAR, pick a digit, sample; as tests/serve/test_page.py does) and saved as a PNG.

    python benchmarks/bench_serve.py                               # a tiny random-weight VAR export
    python benchmarks/bench_serve.py exports/var exports/quantart --options '{"n": 1}'
    python benchmarks/bench_serve.py --clients 1 4 8 --requests 48 --workers 2
    python benchmarks/bench_serve.py --screenshot benchmarks/results/serve_page.png

A live `zoo serve` subprocess on a free port of 127.0.0.1 answers httpx clients. Request i
carries seed i; first every seed is asked once, alone (the reference), then each level
sends the same seeds from N clients at once and compares each response's images and
extras with the reference of its seed. Writes benchmarks/results/serve.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "plugins"), str(ROOT / "exporters")]

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from report import Report, table

TINY_EXPORT = ROOT / "benchmarks" / ".work" / "serve" / "var"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(export_dirs: list[Path], workers: int, log: Path, max_batch: int = 0) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "zoo", "serve", *map(str, export_dirs), "--port", str(port)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with open(log, "w") as output:
        process = subprocess.Popen(
            [*command, "--workers", str(workers), "--max-batch", str(max_batch)],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"zoo serve exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.3)
    process.kill()
    sys.exit("zoo serve did not answer in 120 s")


def fingerprint(body: dict) -> str:
    """What must not depend on concurrency: the images and extras, not the timing."""
    return json.dumps({"images": body["images"], "texts": body["texts"], "extras": body["extras"]}, sort_keys=True)


async def run_level(url: str, model: str, options: dict, seeds: list[int], clients: int) -> tuple[list[float], dict]:
    """Send one request per seed from `clients` concurrent clients -> latencies (s), seed -> fingerprint."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for seed in seeds:
        queue.put_nowait(seed)
    latencies: list[float] = []
    answers: dict[int, str] = {}

    async def client(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            seed = queue.get_nowait()
            start = time.perf_counter()
            response = await http.post(f"{url}/v1/models/{model}/sample", json={**options, "seed": seed})
            latencies.append(time.perf_counter() - start)
            response.raise_for_status()
            answers[seed] = fingerprint(response.json())

    async with httpx.AsyncClient(timeout=600) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return latencies, answers


def save_screenshot(url: str, path: Path) -> None:
    """The page after sampling the digit 3 (two images) in headless Chromium, as a PNG at `path`."""
    from playwright.sync_api import sync_playwright

    from tests.serve.conftest import CHROMIUM, CHROMIUM_ARGS, sample_digit_on_page

    path.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 900, "height": 900})
        sample_digit_on_page(page, url, digit=3, n=2)
        page.screenshot(path=str(path), full_page=True)
        browser.close()
    print(f"screenshot: {path}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export_dirs", nargs="*", type=Path, help="default: a tiny random-weight VAR export")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument(
        "--max-batch", type=int, nargs="+", default=[0, 8], help="zoo serve --max-batch values (0: unbatched)"
    )
    parser.add_argument("--requests", type=int, default=48, help="requests per level (seeds 0..requests-1)")
    parser.add_argument("--workers", type=int, default=2, help="zoo serve --workers")
    parser.add_argument("--options", default='{"classes": [3], "n": 4}', help="sample options of every request")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve.md")
    parser.add_argument(
        "--screenshot",
        type=Path,
        help="also sample a digit on the web page in headless Chromium and save the page here "
        "(benchmarks/results/serve_page.png); needs playwright and /usr/bin/chromium",
    )
    args = parser.parse_args()
    options = json.loads(args.options)

    export_dirs = args.export_dirs
    if not export_dirs:
        if not (TINY_EXPORT / "manifest.json").is_file():
            from tests.serve.conftest import make_var_export

            print(f"exporting a tiny VAR to {TINY_EXPORT} ...", flush=True)
            make_var_export(TINY_EXPORT)
        export_dirs = [TINY_EXPORT]

    report = Report(
        args.out,
        "# zoo serve under load",
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared with other jobs), "
        f"Python {platform.python_version()}; `zoo serve --workers {args.workers}` on the CPU provider; "
        f"{args.requests} requests per level, each `{json.dumps(options)}` with its own seed; latency from "
        "request to parsed JSON response (base64 PNGs), measured by the clients.",
    )
    seeds = list(range(args.requests))
    rows = []
    references: dict[str, dict] = {}  # model -> seed -> fingerprint, each seed alone on an unbatched server
    with tempfile.TemporaryDirectory() as work:
        for max_batch in [0, *[value for value in args.max_batch if value != 0]]:
            process, url = start_server(export_dirs, args.workers, Path(work) / "serve.log", max_batch)
            try:
                models = [model["name"] for model in httpx.get(f"{url}/v1/models").json()["models"]]
                for model in models:
                    if model not in references:
                        _, references[model] = asyncio.run(run_level(url, model, options, seeds, clients=1))
                    reference = references[model]
                    if max_batch not in args.max_batch:
                        continue
                    for clients in args.clients:
                        start = time.perf_counter()
                        latencies, answers = asyncio.run(run_level(url, model, options, seeds, clients))
                        wall = time.perf_counter() - start
                        matching = sum(answers[seed] == reference[seed] for seed in seeds)
                        p50, p99 = np.percentile(np.array(latencies) * 1000, [50, 99])
                        rows.append(
                            [
                                model,
                                max_batch or "off",
                                clients,
                                len(latencies),
                                f"{p50:.0f}",
                                f"{p99:.0f}",
                                f"{len(latencies) / wall:.1f}",
                                f"{matching}/{len(seeds)}",
                            ]
                        )
                        print(rows[-1], flush=True)
                if args.screenshot and max_batch == 0:
                    save_screenshot(url, args.screenshot)
            finally:
                process.terminate()
                process.wait(timeout=30)
    report.add(
        table(
            [
                "model",
                "--max-batch",
                "clients",
                "requests",
                "p50 ms",
                "p99 ms",
                "requests/s",
                "responses equal to their seed alone",
            ],
            rows,
        )
    )
    report.add(
        "Without --max-batch, requests are sampled one per worker thread; past --workers, requests wait "
        "for a free worker. With --max-batch 8 (--max-wait-ms 10), requests of equal options but seed are "
        "merged into one loop call of up to 8 rows; every row draws from its own (seed, row) generator, "
        "and the last column compares each response with its seed sampled alone on an unbatched server."
    )
    report.write()


if __name__ == "__main__":
    main()
