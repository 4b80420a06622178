"""`stn-serve bench export`: the exported model in ONNX Runtime (CPU) against torch eager.

Exports one model (a checkpoint's, or a freshly initialised one), printing the export time
(torch.onnx export + `stn` functions + full ONNX check), then times the same batches through
torch eager and through an ONNX Runtime CPU session, both on the same number of threads, one call
each per round so that load from other processes falls on both alike. It prints the median
milliseconds per batch, the ratio torch / ONNX Runtime and the largest output differences.
"""

from __future__ import annotations

import functools
import statistics
import time

from stn_serve.errors import InvalidInputError

HELP = "time ONNX Runtime (CPU) inference against torch eager for one model, and its export"


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint to export; none: a freshly initialised model of --transform")
    parser.add_argument("--transform", default="affine",
                        help="transform family of the fresh model (ignored with --checkpoint)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64], help="batch sizes to time")
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per runtime and batch size")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls before timing")
    parser.add_argument("--opset", type=int, default=20, help="standard ONNX opset of the export")
    parser.add_argument("--threads", type=int, default=0,
                        help="intra-op threads of both torch and ONNX Runtime; 0 = torch's default")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fresh model and the inputs")


def _model(args):
    """(model, config) from --checkpoint, or a fresh model of --transform."""
    import torch

    from stn_serve.models import ModelConfig, build_model
    from stn_serve.train.checkpoint import load_checkpoint

    if args.checkpoint:
        checkpoint = load_checkpoint(args.checkpoint)
        return checkpoint.build_model(), checkpoint.model_config
    torch.manual_seed(args.seed)
    config = ModelConfig(transform=args.transform)
    return build_model(config).eval(), config


def _torch_forward(graph, images):
    import torch

    with torch.inference_mode():
        return graph(images)


def median_seconds(calls: dict, repeats: int, warmup: int) -> dict[str, float]:
    """{name: median seconds of one call} for zero-argument callables timed in alternation."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    samples = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def run(args) -> int:
    import numpy as np
    import onnxruntime
    import torch

    from stn_serve.contract import EXECUTION_PROVIDERS, INPUT_NAME, OUTPUT_NAMES
    from stn_serve.export.graph import ServingGraph, to_onnx

    if args.repeats < 1 or args.warmup < 0 or min(args.batch_sizes) < 1:
        raise InvalidInputError(
            f"--repeats and --batch-sizes must be >= 1 and --warmup >= 0, got {args.repeats}, "
            f"{args.batch_sizes} and {args.warmup}"
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    model, config = _model(args)
    graph = ServingGraph(model)
    shape = (config.in_channels, *config.input_size)
    generator = torch.Generator().manual_seed(args.seed)

    start = time.perf_counter()
    proto = to_onnx(graph, (torch.rand(2, *shape, generator=generator),), (INPUT_NAME,), OUTPUT_NAMES, args.opset)
    export_seconds = time.perf_counter() - start
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(
        proto.SerializeToString(), options, providers=[EXECUTION_PROVIDERS["cpu"]]
    )

    print(f"stn-serve bench export: {config.arch} {config.transform}, input {list(shape)}, opset {args.opset}, "
          f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__} "
          f"({session.get_providers()[0]}), {threads} threads, median of {args.repeats} calls")
    print(f"export (torch.onnx dynamo + stn functions + onnx full check): {export_seconds:.2f} s")
    header = f"{'batch':>6} {'torch ms':>10} {'onnxruntime ms':>15} {'torch/ort':>10} {'max |diff|':>11}"
    print(header)
    print("-" * len(header))
    for batch in args.batch_sizes:
        images = torch.rand(batch, *shape, generator=generator)
        torch_call = functools.partial(_torch_forward, graph, images)
        ort_call = functools.partial(session.run, None, {INPUT_NAME: images.numpy()})
        difference = max(float(np.abs(a.numpy() - b).max(initial=0.0))
                         for a, b in zip(torch_call(), ort_call()))
        timing = median_seconds({"torch": torch_call, "onnxruntime": ort_call}, args.repeats, args.warmup)
        print(f"{batch:>6} {timing['torch'] * 1e3:>10.3f} {timing['onnxruntime'] * 1e3:>15.3f} "
              f"{timing['torch'] / timing['onnxruntime']:>10.2f} {difference:>11.2e}")
    return 0
