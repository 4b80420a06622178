"""`stn-serve bench batch`: what `stn-serve batch` adds to the model's own cost.

Measured in one run, on one model and one folder of PNG files, in interleaved rounds:
1. in-process ONNX Runtime (`OnnxModel.predict`) on the folder's images already decoded, in
   chunks of `--chunk-size`: the model alone;
2. `run_batch` with a local session (`batch --repository`): listing, reading, decoding, the same
   model, predictions.jsonl and the crops as PNG; and once more without crops (`--no-crops`);
3. `run_batch` through the stn-serve server (`batch --server`) on 127.0.0.1, default settings.

The batch jobs run in a client process of their own, as `stn-serve batch` would, so they share
no interpreter lock with the server or the baseline; loading a model is not timed. Each figure
is the median of the rounds, each ratio the median of the rounds' ratios to (1). Torch-free,
except that without --repository a freshly initialised digits-sized ST-CNN is exported first.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from stn_serve.bench.default_model import add_model_arguments
from stn_serve.errors import InvalidInputError

HELP = (
    "images/s of `batch` with a local session and through a server, vs in-process ONNX Runtime "
    "on already-decoded images"
)
IN_PROCESS = "in-process ONNX Runtime, decoded images"
LOCAL = "batch --repository (local session)"
LOCAL_NO_CROPS = "batch --repository --no-crops"
SERVED = "batch --server (127.0.0.1)"
MIN_BASELINE_S = 1.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add = parser.add_argument
    add(
        "--images",
        type=int,
        default=2048,
        help="PNG files in the folder (random pixels at the model's input size)",
    )
    add("--chunk-size", type=int, default=32, help="batch's --chunk-size, and the baseline's")
    add("--rounds", type=int, default=3, help="interleaved rounds; figures are their medians")


def write_images(folder: Path, count: int, shape: tuple[int, int, int]) -> list:
    """`count` PNG files of random pixels of `shape` [C, H, W] under `folder`, 256 a sub-folder;
    returns their bytes."""
    import numpy as np

    from stn_serve.imaging import encode_png

    rng = np.random.default_rng(0)
    encoded = []
    for number in range(count):
        data = encode_png(rng.random(shape, dtype=np.float32))
        path = folder / f"{number // 256:03d}" / f"{number:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        encoded.append(data)
    return encoded


def time_in_process(model, images, chunk_size: int) -> float:
    """images/s of `model.predict` over `images` [N, C, H, W] in chunks, after a warm-up; passes
    over them repeat for at least MIN_BASELINE_S, so a small folder still gives a steady figure."""
    model.predict(images[:chunk_size])
    done, start = 0, time.perf_counter()
    while done == 0 or time.perf_counter() - start < MIN_BASELINE_S:
        for first in range(0, len(images), chunk_size):
            model.predict(images[first : first + chunk_size])
        done += len(images)
    return done / (time.perf_counter() - start)


def time_batch(
    folder: Path, out: Path, chunk_size: int, save_crops: bool, model: dict, log_level: str
) -> float:
    """images/s of one `run_batch` over `folder` (in the client process). `model` says where
    to predict: {"server": address} or {"repository", "name", "version", "device"}."""
    from stn_serve.batch import LocalPredictor, RemotePredictor, iter_inputs, run_batch
    from stn_serve.client import Client
    from stn_serve.logs import configure_logging

    configure_logging(log_level)  # as the command line would: this process is a new one
    if "server" in model:
        predictor = RemotePredictor(Client(model["server"], model=model["name"]), top_k=5)
        predictor.client.describe()  # connected before the clock starts
    else:
        from stn_serve.runtime import RuntimeOptions, open_version

        options = RuntimeOptions(device=model["device"])
        version = open_version(model["repository"], model["name"], model["version"], options)
        predictor = LocalPredictor(version, top_k=5)
    try:
        start = time.perf_counter()
        inputs = iter_inputs(str(folder))
        summary = run_batch(
            inputs, predictor, out, chunk_size=chunk_size, save_crops=save_crops, progress=False
        )
        elapsed = time.perf_counter() - start
    finally:
        predictor.close()
    if summary.failures:
        first = summary.failures[0]
        raise RuntimeError(f"batch failed on {len(summary.failures)} images, first {first}")
    return summary.predicted / elapsed


def run(args) -> int:
    import numpy as np

    from stn_serve.bench.default_model import model_repository
    from stn_serve.imaging import decode_encoded
    from stn_serve.runtime import RuntimeOptions, open_version
    from stn_serve.server import create_server

    if min(args.images, args.chunk_size, args.rounds) < 1:
        raise InvalidInputError("--images, --chunk-size and --rounds must be at least 1")
    with tempfile.TemporaryDirectory(prefix="stn-bench-batch-") as scratch:
        scratch = Path(scratch)
        repository, name = model_repository(args, scratch / "repository")
        runtime = RuntimeOptions(device=args.device)
        model = open_version(repository, name, args.version, runtime)
        folder = scratch / "images"
        encoded = write_images(folder, args.images, model.spec.input_shape)
        shape = model.spec.input_shape
        images = np.stack([decode_encoded(data, shape, "image") for data in encoded])
        local = {
            "repository": repository, "name": model.name, "version": model.version,
            "device": args.device,
        }
        server, port = create_server(repository, "127.0.0.1:0", runtime_options=runtime)
        server.start()
        served = {"server": f"127.0.0.1:{port}", "name": model.name}
        jobs = ((LOCAL, True, local), (LOCAL_NO_CROPS, False, local), (SERVED, True, served))
        figures: dict[str, list[float]] = {IN_PROCESS: [], **{what: [] for what, _, _ in jobs}}
        # spawn: a forked child would inherit gRPC's threads and the server's state.
        try:
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as client:
                for round_number in range(args.rounds):
                    figures[IN_PROCESS].append(time_in_process(model, images, args.chunk_size))
                    for number, (what, crops, where) in enumerate(jobs):
                        out = scratch / f"out-{round_number}-{number}"  # a fresh one: no resuming
                        job = client.submit(
                            time_batch, folder, out, args.chunk_size, crops, where, args.log_level
                        )
                        figures[what].append(job.result())
        finally:
            server.stop(grace=None)
            model.unload()
    report(model, figures, args, sum(map(len, encoded)) / len(encoded))
    return 0


def report(model, figures: dict[str, list[float]], args, mean_bytes: float) -> None:
    shape = "x".join(map(str, model.spec.input_shape))
    print(
        f"{model.name} v{model.version} ({shape}) on {model.provider}; {args.images} PNG files "
        f"of {mean_bytes:.0f} bytes on average, chunks of {args.chunk_size}; medians of "
        f"{args.rounds} rounds (range in brackets)"
    )
    baseline = figures[IN_PROCESS]
    print(f"{'':<42}{'images/s':>10}  {'':<17}{'vs in-process':>14}")
    for what, values in figures.items():
        ratios = [value / base for value, base in zip(values, baseline)]
        spread = f"({min(values):,.0f}-{max(values):,.0f})"
        ratio_spread = f"({min(ratios):.3f}-{max(ratios):.3f})"
        print(
            f"{what:<42}{statistics.median(values):>10,.0f}  {spread:<17}"
            f"{statistics.median(ratios):>13.3f}x {ratio_spread}"
        )
