"""Load test of `zoo serve`: N concurrent clients, a fixed count of requests each level,
p50/p99 latency and throughput per model, with and without --max-batch, and a check that
every response is what its own seed gives alone. With --screenshot, the web page is also
used in headless Chromium (pick VAR, pick a digit, sample; as tests/serve/test_page.py does)
and saved as a PNG.

    python benchmarks/bench_serve.py                               # a tiny random-weight VAR export
    python benchmarks/bench_serve.py --d16                         # and a d16 row (random weights)
    python benchmarks/bench_serve.py exports/var exports/quantart --options '{"n": 1}'
    python benchmarks/bench_serve.py --clients 1 4 8 --requests 48 --workers 2
    python benchmarks/bench_serve.py --screenshot benchmarks/results/serve_page.png

A live `zoo serve` subprocess on a free port of 127.0.0.1 answers httpx clients. Request i
carries seed i. Each level sends the same seeds from N clients at once and compares each
response's images and extras with the reference of its seed: the answers of one client to an
unbatched server, where every request is sampled alone (the 1-client unbatched level when it
is measured, else a pass of its own).

--d16 adds VAR d16 (random weights in the official layout, imported like the published
checkpoint and exported in fp32 by benchmarks/bench_var_latency.py's `prepare`, cached in
--d16-cache): batch-1 requests (one class, n 1) of about 10 s each on two cores, so only
--d16-requests per level. Writes benchmarks/results/serve.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
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


def start_server(
    export_dirs: list[Path], workers: int, log: Path, max_batch: int, extra: tuple[str, ...] = ()
) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "zoo", "serve", *map(str, export_dirs), "--port", str(port)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with open(log, "w") as output:
        process = subprocess.Popen(
            [*command, "--workers", str(workers), "--max-batch", str(max_batch), *extra],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600  # d16: 1.7 GB of graphs to load
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"zoo serve exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.3)
    process.kill()
    sys.exit("zoo serve did not answer in 600 s")


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

    async with httpx.AsyncClient(timeout=3600) as http:  # d16: 8 queued requests of ~1 min under load
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


@dataclass
class Case:
    """One row group of the table: what is served and what every request asks."""

    label: str
    export_dirs: list[Path]
    options: dict
    requests: int
    clients: list[int]
    servers_together: bool = True  # False: one server at a time (each d16 server holds GBs of weights and arenas)
    serve_args: tuple[str, ...] = ()  # more `zoo serve` flags (a later --workers wins)


def load_average() -> str:
    return ", ".join(f"{value:.1f}" for value in os.getloadavg())


def measure(
    case: Case, args: argparse.Namespace, work: Path, screenshot: Path | None
) -> tuple[list[list[object]], list[str]]:
    """The table rows of one case and its batched/unbatched ratios. One server per --max-batch
    value; unless the case is too large for two at once, all are up together and each level
    runs on each in turn, --repeats times (A B A B ...), so that a batched and an unbatched
    figure are taken seconds apart on a shared machine and their ratio is taken pair by pair."""
    seeds = list(range(case.requests))
    settings = sorted(set(args.max_batch) | {0})  # unbatched first: its 1-client level is the reference
    repeats = args.repeats if case.servers_together else 1
    runs: dict[tuple[str, int, int], list[tuple[float, list[float], int]]] = {}  # (rate, latencies, equal)
    references: dict[str, dict] = {}  # model -> seed -> fingerprint, each seed alone on an unbatched server
    for together in [settings] if case.servers_together else [[value] for value in settings]:
        servers = {}
        try:
            for max_batch in together:
                log = work / f"serve-{max_batch}.log"
                servers[max_batch] = start_server(case.export_dirs, args.workers, log, max_batch, case.serve_args)
            url = next(iter(servers.values()))[1]
            models = [model["name"] for model in httpx.get(f"{url}/v1/models").json()["models"]]
            if screenshot and 0 in servers:
                save_screenshot(servers[0][1], screenshot)
            for model in models:
                if model not in references and not (1 in case.clients and 0 in args.max_batch):
                    _, references[model] = asyncio.run(run_level(servers[0][1], model, case.options, seeds, clients=1))
                for clients in sorted(case.clients):
                    for _ in range(repeats):
                        for max_batch in [value for value in together if value in args.max_batch]:
                            start = time.perf_counter()
                            url = servers[max_batch][1]
                            latencies, answers = asyncio.run(run_level(url, model, case.options, seeds, clients))
                            wall = time.perf_counter() - start
                            reference = references.setdefault(model, answers)  # the first level: 1 client, unbatched
                            matching = sum(answers[seed] == reference[seed] for seed in seeds)
                            runs.setdefault((model, max_batch, clients), []).append(
                                (len(latencies) / wall, latencies, matching)
                            )
                            print(
                                model, max_batch, clients, f"{len(latencies) / wall:.2f}/s", load_average(), flush=True
                            )
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait(timeout=60)
    rows: list[list[object]] = []
    ratios: list[str] = []
    for (model, max_batch, clients), measured in sorted(runs.items()):
        rates = [rate for rate, _, _ in measured]
        latencies = np.array([latency for _, run, _ in measured for latency in run]) * 1000
        p50, p99 = np.percentile(latencies, [50, 99])
        label = case.label if len({key[0] for key in runs}) == 1 else f"{case.label} {model}"
        equal = sum(matching for _, _, matching in measured)
        rows.append(
            [
                label,
                max_batch or "off",
                clients,
                f"{len(measured)} x {len(seeds)}",
                f"{p50:.0f}",
                f"{p99:.0f}",
                f"{statistics.median(rates):.3g}",
                f"{equal}/{len(measured) * len(seeds)}",
            ]
        )
        unbatched = runs.get((model, 0, clients))
        if max_batch != 0 and unbatched:
            pairs = [rate / base for (rate, _, _), (base, _, _) in zip(measured, unbatched, strict=True)]
            ratios.append(
                f"{label}, {clients} clients: batched (--max-batch {max_batch}) / unbatched requests/s = "
                f"{statistics.median(pairs):.2f} (median of {len(pairs)} pairs: "
                + ", ".join(f"{pair:.2f}" for pair in pairs)
                + ")"
            )
    return rows, ratios


def d16_case(cache: Path, requests: int, clients: list[int]) -> Case:
    """VAR d16 with random weights in the official layout, as bench_var_latency.py makes it."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_var_latency import ZOO_OPTIONS, prepare

    export_dir = prepare(cache)[3]
    options = {name: value for name, value in ZOO_OPTIONS.items() if name != "seed"}
    # One worker (its sessions use both cores) and a 5,500 MB request budget: groups of up to four
    # requests (about 1,370 MB each by the loop's estimate), so that one merged call stays within
    # the memory this shared machine has free.
    serve_args = ("--workers", "1", "--max-request-mb", "5500")
    return Case("var d16", [export_dir], options, requests, clients, servers_together=False, serve_args=serve_args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export_dirs", nargs="*", type=Path, help="default: a tiny random-weight VAR export")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument(
        "--max-batch", type=int, nargs="+", default=[0, 8], help="zoo serve --max-batch values (0: unbatched)"
    )
    parser.add_argument("--requests", type=int, default=48, help="requests per level (seeds 0..requests-1)")
    parser.add_argument("--workers", type=int, default=2, help="zoo serve --workers")
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[0],
        help="zoo serve --threads (onnxruntime intra-op threads per session) of the first model, one case each "
        "(0: zoo serve's default, the CPUs it may use over --workers)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs of each level on each server, in turn")
    parser.add_argument("--options", default='{"classes": [3], "n": 1}', help="sample options of every request")
    parser.add_argument("--d16", action="store_true", help="also a VAR d16 export (random weights, batch-1 requests)")
    parser.add_argument("--d16-requests", type=int, default=16, help="requests per level for d16 (about 10 s each)")
    parser.add_argument("--d16-clients", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--d16-cache", type=Path, default=Path("/tmp/var_latency"), help="bench_var_latency.py --cache")
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
    label = "var tiny" if not args.export_dirs else "export"
    cases = [
        Case(
            f"{label}, --threads {threads}" if threads else label,
            export_dirs,
            options,
            args.requests,
            args.clients,
            serve_args=("--threads", str(threads)) if threads else (),
        )
        for threads in args.threads
    ]
    if args.d16:
        cases.append(d16_case(args.d16_cache, args.d16_requests, args.d16_clients))

    report = Report(
        args.out,
        "# zoo serve under load",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores (shared with other jobs), Python {platform.python_version()}; "
        f"`zoo serve --workers {args.workers}` on the CPU provider; "
        + "; ".join(
            f"{case.label}: {case.requests} requests per level, each `{json.dumps(case.options)}`" for case in cases
        )
        + ", with its own seed; latency from request to parsed JSON response (base64 PNGs), measured by the clients; "
        f"each level runs {args.repeats} times on each server in turn (requests/s: the median; p50/p99: of "
        "all its requests).\n\n"
        f"Command: `python benchmarks/bench_serve.py {' '.join(sys.argv[1:])}`",
    )
    rows, ratios, loads = [], [], [f"{load_average()} at the start"]
    with tempfile.TemporaryDirectory() as work:
        for case in cases:
            case_rows, case_ratios = measure(case, args, Path(work), args.screenshot if case is cases[0] else None)
            rows += case_rows
            ratios += case_ratios
            loads.append(f"{load_average()} after {case.label}")
    header = ["model", "--max-batch", "clients", "runs x requests", "p50 ms", "p99 ms", "requests/s (median)"]
    report.add(table([*header, "responses equal to their seed alone"], rows))
    report.add("\n".join(f"- {line}" for line in ratios))
    report.add(f"Load average (1, 5, 15 min) of the {os.cpu_count()} cores: {'; '.join(loads)}.")
    report.add(
        "Without --max-batch, requests are sampled one per worker thread; past --workers, requests wait "
        "for a free worker. With --max-batch 8 (--max-wait-ms 10), requests of equal options but seed are "
        "merged into one loop call of up to 8 rows (zoo.runtime.serve.batching: a lone request runs at once, "
        "a group fills while every worker is busy); every row draws from its own (seed, row) generator, "
        "and the 'equal' column compares each response with its seed sampled alone on an unbatched server."
    )
    report.write()


if __name__ == "__main__":
    main()
