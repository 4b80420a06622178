"""`stn-serve bench serve`'s verdicts and report: ratios against the targets, the printed tables
and the JSON file. Serving side: never imports torch."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from stn_serve.bench.serve_load import (
    BARE_AIO,
    BARE_SYNC,
    STN_SERVE,
    STN_SERVE_NO_BATCHING,
    InProcess,
    Served,
)

#: Request sizes the targets are set for: single images, and many images a request.
SINGLE_IMAGE, MANY_IMAGES = 1, 64
TARGET_SERVED_VS_IN_PROCESS = 0.9  # MANY_IMAGES a request, top concurrency
TARGET_BATCHING_GAIN = 3.0
TARGET_P99_OVERHEAD_MS = 1.0  # SINGLE_IMAGE, concurrency 1
TARGET_CPU_VS_BARE = 2.0  # SINGLE_IMAGE, top concurrency, one process
TARGET_RATE_VS_BARE = 0.6  # SINGLE_IMAGE, top concurrency, the same number of processes


@dataclass(frozen=True)
class Machine:
    """How busy the machine was: CPU cores, and the 1/5/15-minute load averages at the start
    and at the end of the run."""

    cpus: int
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]


@dataclass(frozen=True)
class Ratio:
    """One figure, judged against its target where it has one.

    value: nan when an input had no successful request; met: None then, or without a target.
    target: the target as text (">= 0.8", "<= 2.0 ms"; "" for none); unit: "x" or " ms".
    ceiling: the most the ratio could be if serving cost nothing (nan where none follows).
    """

    value: float
    target: str
    met: bool | None
    unit: str
    ceiling: float = math.nan


def judged(
    value: float,
    target: float | None,
    unit: str,
    measured: bool,
    ceiling=math.nan,
    at_most: bool = False,
) -> Ratio:
    """`value` judged against `target` (None: no target): at most it with `at_most`, else at
    least."""
    if target is None:
        return Ratio(value if measured else math.nan, "", None, unit, ceiling)
    text = f"{'<=' if at_most else '>='} {target}{unit.strip() and ' ' + unit.strip()}"
    if not measured:
        return Ratio(math.nan, text, None, unit, ceiling)
    return Ratio(value, text, value <= target if at_most else value >= target, unit, ceiling)


def _rows(served: list[Served], size: int) -> dict[tuple[str, int], dict[int, Served]]:
    """(setting, processes) -> concurrency -> row, for one request size."""
    found: dict[tuple[str, int], dict[int, Served]] = {}
    for row in served:
        if row.images_per_request == size:
            found.setdefault((row.setting, row.processes), {})[row.concurrency] = row
    return found


def compute_ratios(in_process: list[InProcess], served: list[Served]) -> dict[str, Ratio]:
    """The ratios of each request size measured, by name.

    The batching gain's ceiling: with batching off each request runs as one batch of its own
    images, so even free serving gains at most in-process best / in-process at that batch size.
    """
    best = max(in_process, key=lambda r: r.images_per_s)
    by_batch = {r.batch_size: r for r in in_process}
    ratios: dict[str, Ratio] = {}
    for size in sorted({r.images_per_request for r in served}):
        rows = _rows(served, size)
        on = rows[(STN_SERVE, 1)]
        top = max(on)
        single = size == SINGLE_IMAGE
        label = f"{size} img/req:"
        ratios[f"{label} served c{top} / in-process best (batch {best.batch_size})"] = judged(
            on[top].images_per_s / best.images_per_s,
            TARGET_SERVED_VS_IN_PROCESS if size == MANY_IMAGES else None,
            "x",
            on[top].requests > 0,
        )
        off = rows[(STN_SERVE_NO_BATCHING, 1)][top]
        own = by_batch.get(size)
        ratios[f"{label} batching on / off at c{top}"] = judged(
            on[top].images_per_s / max(off.images_per_s, 1e-9),
            TARGET_BATCHING_GAIN,
            "x",
            on[top].requests > 0 and off.requests > 0,
            best.images_per_s / own.images_per_s if own else math.nan,
        )
        if single and 1 in on and 1 in by_batch:
            ratios[f"{label} p99 c1 - in-process single-image p50"] = judged(
                on[1].p99_ms - by_batch[1].p50_ms,
                TARGET_P99_OVERHEAD_MS,
                " ms",
                on[1].requests > 0,
                at_most=True,
            )
        for bare in (BARE_SYNC, BARE_AIO):
            baseline = rows[(bare, 1)][top]
            target = single and bare == BARE_SYNC
            measured = on[top].requests > 0 and baseline.requests > 0
            ratios[f"{label} server CPU per request / {bare}'s, c{top}"] = judged(
                on[top].server_cpu_us / max(baseline.server_cpu_us, 1e-9),
                TARGET_CPU_VS_BARE if target else None,
                "x",
                measured,
                at_most=True,
            )
            ratios[f"{label} served / {bare} requests/s, c{top}, 1 process"] = judged(
                on[top].requests_per_s / max(baseline.requests_per_s, 1e-9),
                TARGET_RATE_VS_BARE if target else None,
                "x",
                measured,
            )
        for (setting, processes), by_concurrency in rows.items():
            if setting != STN_SERVE or processes == 1:
                continue
            mine, baseline = by_concurrency[top], rows[(BARE_SYNC, processes)][top]
            ratios[f"{label} served / {BARE_SYNC} requests/s, c{top}, {processes} processes"] = (
                judged(
                    mine.requests_per_s / max(baseline.requests_per_s, 1e-9),
                    TARGET_RATE_VS_BARE if single else None,
                    "x",
                    mine.requests > 0 and baseline.requests > 0,
                )
            )
    return ratios


def print_report(
    model,
    provider: str,
    machine: Machine,
    in_process: list[InProcess],
    served: list[Served],
    setup: str,
    ratios: dict[str, Ratio],
) -> None:
    """The tables and verdicts; `setup` describes the servers measured."""
    c, h, w = model.spec.input_shape
    print(
        f"stn-serve bench serve: model {model.name} v{model.version} ({c}x{h}x{w}, "
        f"{model.spec.transform or 'no'} transform) on {provider}, {machine.cpus} CPU cores; "
        f"load average {'/'.join(f'{x:.1f}' for x in machine.load_before)} at the start, "
        f"{'/'.join(f'{x:.1f}' for x in machine.load_after)} at the end (1/5/15 min)"
    )
    print(
        "in-process: OnnxModel.predict called from one thread, no gRPC, ONNX Runtime's default "
        "threads"
    )
    print(f"{'batch':>6} {'images/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
    for row in in_process:
        print(
            f"{row.batch_size:>6} {row.images_per_s:>10.0f} {row.p50_ms:>8.3f} {row.p99_ms:>8.3f}"
        )
    print(
        "served: each server in processes of its own on 127.0.0.1; load from a separate "
        "process, raw float32 images in pre-serialised requests (img/req of them), responses "
        f"not parsed; latency = send to answer received. {setup}. {BARE_SYNC} / {BARE_AIO} = a "
        "gRPC Python server (thread pool / asyncio) answering a canned response of the same "
        "size without parsing the request. server cpu: all of the server's processes"
    )
    print(
        f"{'setting':<24} {'procs':>5} {'img/req':>7} {'conc':>5} {'requests':>9} "
        f"{'images/s':>10} {'req/s':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
        f"{'mean batch':>10} {'server cpu us/req':>18} {'client cpu us/req':>18} {'errors':>7}"
    )
    for row in served:
        print(
            f"{row.setting:<24} {row.processes:>5} {row.images_per_request:>7} "
            f"{row.concurrency:>5} {row.requests:>9} {row.images_per_s:>10.0f} "
            f"{row.requests_per_s:>8.0f} {row.p50_ms:>8.3f} {row.p90_ms:>8.3f} "
            f"{row.p99_ms:>8.3f} {row.mean_batch:>10.1f} {row.server_cpu_us:>18.0f} "
            f"{row.client_cpu_us:>18.0f} {row.errors:>7}"
        )
    for row in served:
        if row.errors:
            print(
                f"  errors ({row.setting}, {row.processes} process(es), {row.images_per_request} "
                f"img/req, concurrency {row.concurrency}): {row.first_error}"
            )
    print(
        "ratios (target; met?). ceiling: the most the ratio could be if serving cost nothing, "
        "from the in-process figures above"
    )
    for name, ratio in ratios.items():
        if not ratio.target:
            verdict = "no target"
        else:
            met = "n/a" if ratio.met is None else ("yes" if ratio.met else "NO")
            verdict = f"{ratio.target}; {met}"
        bound = "" if math.isnan(ratio.ceiling) else f"; ceiling {ratio.ceiling:.2f}{ratio.unit}"
        print(f"  {name:<72} {ratio.value:>8.2f}{ratio.unit} ({verdict}{bound})")


def _no_nan(value):
    return None if isinstance(value, float) and math.isnan(value) else value


def _table(items) -> list[dict]:
    return [{key: _no_nan(value) for key, value in asdict(row).items()} for row in items]


def write_json(
    path: Path,
    model,
    provider: str,
    machine: Machine,
    in_process: list[InProcess],
    served: list[Served],
    ratios: dict[str, Ratio],
    settings: dict,
) -> None:
    """Every figure as JSON, with NaN (not measured) as null."""
    document = {
        "model": {"name": model.name, "version": model.version, "provider": provider},
        "machine": asdict(machine),
        "in_process": _table(in_process),
        "served": _table(served),
        "ratios": {
            name: {
                "value": _no_nan(r.value),
                "target": r.target,
                "met": r.met,
                "ceiling": _no_nan(r.ceiling),
            }
            for name, r in ratios.items()
        },
        "settings": settings,
    }
    path.write_text(json.dumps(document, indent=2, allow_nan=False))
