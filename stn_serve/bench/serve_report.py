"""`stn-serve bench serve`'s verdicts and report: ratios against the targets, the printed tables
and the JSON file. Serving side: never imports torch."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from stn_serve.bench.serve_load import BATCHING_OFF, BATCHING_ON, NO_OP, InProcess, Served

TARGET_SERVED_VS_INPROCESS = 0.8
TARGET_BATCHING_GAIN = 3.0
TARGET_P99_OVERHEAD_MS = 2.0


@dataclass(frozen=True)
class Ratio:
    """One figure judged against its target.

    value: nan when an input had no successful request; met: None then.
    target: the target as text (">= 0.8", "<= 2.0 ms"); unit: "x" or " ms".
    ceiling: the most the ratio could be if serving cost nothing (nan where none follows).
    """

    value: float
    target: str
    met: bool | None
    unit: str
    ceiling: float = math.nan


def judged(value: float, target: float, unit: str, measured: bool, ceiling=math.nan) -> Ratio:
    """A ratio judged against `target`: a latency overhead (unit " ms") must be at most the
    target, a throughput ratio at least."""
    if unit == " ms":
        text, met = f"<= {target} ms", value <= target
    else:
        text, met = f">= {target}", value >= target
    if not measured:
        return Ratio(math.nan, text, None, unit, ceiling)
    return Ratio(value, text, met, unit, ceiling)


def compute_ratios(in_process: list[InProcess], served: list[Served]) -> dict[str, Ratio]:
    """The ratios of each request size measured, by name.

    The batching gain's ceiling: with batching off each request runs as one batch of its own
    images, so even free serving gains at most in-process best / in-process at that batch size.
    """
    best = max(in_process, key=lambda r: r.images_per_s)
    by_batch = {r.batch_size: r for r in in_process}
    single = by_batch.get(1)
    ratios: dict[str, Ratio] = {}
    for size in sorted({r.images_per_request for r in served}):
        rows = [r for r in served if r.images_per_request == size]
        top = max(r.concurrency for r in rows)
        on = {r.concurrency: r for r in rows if r.setting == BATCHING_ON}
        off = {r.concurrency: r for r in rows if r.setting == BATCHING_OFF}
        own = by_batch.get(size)
        ratios[f"{size} img/req: served c{top} batching / in-process best (batch {best.batch_size})"] = judged(
            on[top].images_per_s / best.images_per_s,
            TARGET_SERVED_VS_INPROCESS,
            "x",
            on[top].requests > 0,
        )
        ratios[f"{size} img/req: batching on / off at c{top}"] = judged(
            on[top].images_per_s / max(off[top].images_per_s, 1e-9),
            TARGET_BATCHING_GAIN,
            "x",
            on[top].requests > 0 and off[top].requests > 0,
            best.images_per_s / own.images_per_s if own else math.nan,
        )
        if single is not None and size == 1 and 1 in on:
            for mode, by_concurrency in (("on", on), ("off", off)):
                ratios[f"{size} img/req: p99 c1 batching {mode} - in-process single-image p50"] = judged(
                    by_concurrency[1].p99_ms - single.p50_ms,
                    TARGET_P99_OVERHEAD_MS,
                    " ms",
                    by_concurrency[1].requests > 0,
                )
    return ratios


def print_report(
    model, provider: str, in_process: list[InProcess], served: list[Served], setup: str,
    ratios: dict[str, Ratio],
) -> None:
    """The tables and verdicts; `setup` describes the servers measured."""
    c, h, w = model.spec.input_shape
    print(
        f"stn-serve bench serve: model {model.name} v{model.version} ({c}x{h}x{w}, "
        f"{model.spec.transform or 'no'} transform) on {provider}, {os.cpu_count()} CPU cores"
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
        "served: create_server on 127.0.0.1 in this process; load from a separate process, "
        "raw float32 images in pre-serialised requests (img/req of them), responses not parsed; "
        f"latency = send to answer received. {setup}; {NO_OP} = a bare gRPC server answering a "
        "canned response of the same size (the floor under any Python gRPC server here)"
    )
    print(
        f"{'setting':<14} {'img/req':>7} {'conc':>5} {'requests':>9} {'images/s':>10} "
        f"{'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'mean batch':>10} "
        f"{'server cpu us/req':>18} {'client cpu us/req':>18} {'errors':>7}"
    )
    for row in served:
        print(
            f"{row.setting:<14} {row.images_per_request:>7} {row.concurrency:>5} "
            f"{row.requests:>9} {row.images_per_s:>10.0f} "
            f"{row.p50_ms:>8.3f} {row.p90_ms:>8.3f} {row.p99_ms:>8.3f} {row.mean_batch:>10.1f} "
            f"{row.server_cpu_us:>18.0f} {row.client_cpu_us:>18.0f} {row.errors:>7}"
        )
    for row in served:
        if row.errors:
            print(
                f"  errors ({row.setting}, {row.images_per_request} img/req, concurrency "
                f"{row.concurrency}): {row.first_error}"
            )
    print(
        "ratios (target; met?). ceiling: the most the ratio could be if serving cost nothing, "
        "from the in-process figures above"
    )
    for name, ratio in ratios.items():
        verdict = "n/a" if ratio.met is None else ("yes" if ratio.met else "NO")
        bound = "" if math.isnan(ratio.ceiling) else f"; ceiling {ratio.ceiling:.2f}{ratio.unit}"
        print(
            f"  {name:<64} {ratio.value:>8.2f}{ratio.unit} ({ratio.target}; {verdict}{bound})"
        )


def _no_nan(value):
    return None if isinstance(value, float) and math.isnan(value) else value


def _rows(items) -> list[dict]:
    return [{key: _no_nan(value) for key, value in asdict(row).items()} for row in items]


def write_json(
    path: Path, model, provider: str, in_process: list[InProcess], served: list[Served],
    ratios: dict[str, Ratio], settings: dict,
) -> None:
    """Every figure as JSON, with NaN (not measured) as null."""
    document = {
        "model": {"name": model.name, "version": model.version, "provider": provider},
        "in_process": _rows(in_process),
        "served": _rows(served),
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
