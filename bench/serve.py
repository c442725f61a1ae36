"""``vlmplug serve`` under load: requests/s and p50/p95 latency at 1, 4 and 16 concurrent clients.

The bench starts the real server in a subprocess (the ``serve`` command, on a free loopback port) on a
saved model -- RUN_DIR, or by default the tiny test model trained for 30 steps (about 30 s on 2
cores) -- and drives it with the ``openai`` client from threads, each client sending its next request
as soon as its last one is answered. A request is one chat completion with one 32 px PNG as a data URL
and a question (greedy, ``max_tokens`` 8), like the tests' conversations. ``--warmup`` untimed rounds
over the conversations come first (a prompt's first runs are slow while kernel caches fill). Every
answer is checked against the server's own answer to the same request at concurrency 1
(``mismatches``: must be 0).

    python bench/serve.py [RUN_DIR] [--levels 1 4 16] [--requests 64] [--out bench/results/serve.json]

Run it on an idle machine: the server and the clients share its cores.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (30, 60, 220), "yellow": (230, 220, 40)}
QUESTIONS = ["What color is the shape?", "Which shape is in the image?", "How many shapes are there?"]


def train_tiny(out: Path) -> Path:
    """The tests' ``saved_run`` model: the tiny recipe trained 30 steps; its run directory."""
    from vlmplug.testing import run_recipe

    return Path(run_recipe(steps=30, output_dir=out, eval_before_training=False, learning_rate=1e-2).run_dir)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(run_dir: Path, port: int, log: Path) -> subprocess.Popen:
    """``vlmplug serve RUN_DIR --port PORT`` in a subprocess (its output to ``log``); returns once
    ``/health`` answers."""
    code = "import sys; from vlmplug.serve_cli import serve; serve(sys.argv[1:])"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(run_dir), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not answer /health within 120 s")


def requests_pool() -> list[Any]:
    """The conversations the clients send (12: four colours x three questions)."""
    from PIL import Image

    pool = []
    for rgb in COLOURS.values():
        buf = io.BytesIO()
        Image.new("RGB", (32, 32), rgb).save(buf, format="PNG")
        url = f"data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}"
        for q in QUESTIONS:
            parts = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": q}]
            pool.append([{"role": "user", "content": parts}])
    return pool


def answer(api: Any, model: str, messages: Any) -> str:
    out = api.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0)
    return str(out.choices[0].message.content)


def run_level(base_url: str, model: str, pool: list, expected: list[str], clients: int, total: int) -> dict[str, Any]:
    """``total`` requests from ``clients`` threads: throughput, latency percentiles, mismatches."""
    import openai

    latencies: list[float] = []
    mismatches = errors = 0
    lock = threading.Lock()
    counter = iter(range(total))

    def client() -> None:
        nonlocal mismatches, errors
        api = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=300)
        while True:
            with lock:
                k = next(counter, None)
            if k is None:
                return
            t = time.perf_counter()
            try:
                text = answer(api, model, pool[k % len(pool)])
            except openai.OpenAIError:
                with lock:
                    errors += 1
                continue
            took = time.perf_counter() - t
            with lock:
                latencies.append(took)
                mismatches += text != expected[k % len(pool)]

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    seconds = time.perf_counter() - t0
    cuts = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else latencies * 99
    return {
        "concurrency": clients,
        "requests": total,
        "seconds": round(seconds, 2),
        "requests_per_s": round(len(latencies) / seconds, 2),
        "latency_ms": {
            "p50": round(cuts[49] * 1000, 1),
            "p95": round(cuts[94] * 1000, 1),
            "mean": round(statistics.fmean(latencies) * 1000, 1),
            "max": round(max(latencies) * 1000, 1),
        },
        "errors": errors,
        "mismatches": mismatches,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?", help="a run directory or saved model (default: train the tiny model)")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16], help="concurrent clients")
    parser.add_argument("--requests", type=int, default=64, help="requests per level")
    parser.add_argument("--warmup", type=int, default=4, help="untimed rounds over the conversations first")
    parser.add_argument("--out", default="bench/results/serve.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vlmplug-bench-serve-") as tmp:
        if args.run_dir:
            run_dir, model_desc = Path(args.run_dir), args.run_dir
        else:
            t0 = time.perf_counter()
            run_dir = train_tiny(Path(tmp) / "run")
            print(f"trained the tiny model in {time.perf_counter() - t0:.1f}s")
            model_desc = (
                "vlmplug.testing.TINY_RECIPE trained 30 steps (tiny CLIP 32 px, tiny Llama), as tests' saved_run"
            )
        port = free_port()
        t0 = time.perf_counter()
        proc = start_server(run_dir, port, Path(tmp) / "server.log")
        startup = round(time.perf_counter() - t0, 2)
        print(f"server up in {startup}s (model load included)")
        try:
            base_url = f"http://127.0.0.1:{port}/v1"
            import openai

            api = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
            name = api.models.list().data[0].id
            pool = requests_pool()
            for _ in range(args.warmup):  # the first runs of each prompt shape are slow (kernel caches)
                for m in pool:
                    answer(api, name, m)
            expected = [answer(api, name, m) for m in pool]
            levels = []
            for clients in args.levels:
                row = run_level(base_url, name, pool, expected, clients, args.requests)
                levels.append(row)
                lat = row["latency_ms"]
                print(
                    f"{clients:>3} clients: {row['requests_per_s']} req/s, p50 {lat['p50']} ms, p95 {lat['p95']} ms "
                    f"({row['errors']} errors, {row['mismatches']} mismatches)"
                )
        finally:
            proc.terminate()
            proc.wait(30)
    result = {
        "model": model_desc,
        "machine": {
            "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
        },
        "workload": "one chat completion per request: a 32x32 PNG data URL + a question, greedy, max_tokens 8; "
        "12 distinct conversations in turn; the openai client in threads, the server in a subprocess; "
        f"{args.warmup} untimed rounds over the 12 conversations first",
        "server_startup_s": startup,
        "levels": levels,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
