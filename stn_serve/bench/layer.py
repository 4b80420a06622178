"""`stn-serve bench layer`: the custom spatial-transformer layer against torch's native ops.

For each case (N, C, H_in x W_in -> H_out x W_out) it times `affine_grid` + `grid_sample` from
`stn_serve.ops` and from `torch.nn.functional` on the same tensors, forward alone and forward +
backward (gradients to the input and to the affine matrix), and prints the median milliseconds and the ratio
custom / native. The implementations take turns in rounds: in each round, each runs its untimed
warm-up calls and then its timed calls, so that load from other processes falls on both alike
while neither runs right after the other's allocations. Before timing, it checks that both give
the same output and gradients.

`--train-step` times one training step (forward, cross-entropy plus the pose-consistency loss,
backward, optimiser step) of the ST-CNN `stn-serve train` builds with its defaults (RTS digits,
42x42 -> 28x28, `TrainConfig()`'s batch size and optimiser) with this layer
against the same model, weights and batch with torch's own ops (`SpatialTransformer.native_ops`),
the two models alternating call by call after their warm-up calls.
`--contended` runs everything with a busy process spinning on each other core.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import statistics
import time

from stn_serve.bench.contention import busy_processes, other_cores
from stn_serve.errors import InvalidInputError

HELP = "time the custom affine_grid + grid_sample, forward and backward, against torch's own"

# Targets of custom / native: the layer on a machine to itself, the layer with a busy process on
# every other core, and a whole training step of the ST-CNN.
TARGET_RATIO = 1.0
TARGET_CONTENDED_RATIO = 1.5
TARGET_TRAIN_STEP_RATIO = 1.05

DEFAULT_CASES = ["256x1x42x42:28x28", "64x32x56x56:56x56"]

_CASE = re.compile(r"^(\d+)x(\d+)x(\d+)x(\d+):(\d+)x(\d+)$")


def parse_case(text: str) -> tuple[int, int, int, int, int, int]:
    """(N, C, H_in, W_in, H_out, W_out) from "NxCxHxW:hxw", e.g. "256x1x42x42:28x28"."""
    match = _CASE.match(text.strip())
    if not match or min(int(v) for v in match.groups()) < 1:
        raise argparse.ArgumentTypeError(
            f"case must be NxCxHxW:hxw with positive integers, e.g. 256x1x42x42:28x28, got {text!r}"
        )
    return tuple(int(v) for v in match.groups())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cases",
        type=parse_case,
        nargs="+",
        default=DEFAULT_CASES,
        metavar="NxCxHxW:hxw",
        help="input and output sizes to time",
    )
    parser.add_argument(
        "--repeats", type=int, default=10, help="timed calls per implementation, pass and round"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of turns between the implementations"
    )
    parser.add_argument(
        "--warmup", type=int, default=2, help="untimed calls before each implementation's turn"
    )
    parser.add_argument(
        "--padding-mode",
        choices=["zeros", "border", "reflection"],
        default="zeros",
        help="grid_sample padding mode",
    )
    parser.add_argument("--align-corners", action="store_true", help="use align_corners=True")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads; 0 = torch's default"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the random inputs and transforms"
    )
    parser.add_argument(
        "--contended",
        action="store_true",
        help="run a busy process on each other core while timing (started and stopped here)",
    )
    parser.add_argument(
        "--train-step",
        action="store_true",
        help="also time one training step of the default ST-CNN, this layer against torch's ops",
    )


def _layers(padding_mode: str, align_corners: bool):
    """The two implementations of the layer: (name, function(input, matrix, out_size))."""
    import torch.nn.functional as F

    from stn_serve import ops

    def native(input, matrix, size):
        grid = F.affine_grid(matrix, size, align_corners=align_corners)
        return F.grid_sample(
            input, grid, mode="bilinear", padding_mode=padding_mode, align_corners=align_corners
        )

    def custom(input, matrix, size):
        return ops.grid_sample(
            input, ops.affine_grid(matrix, size, align_corners), padding_mode, align_corners
        )

    return [("native", native), ("custom", custom)]


def _passes(layer, input, matrix, size, grad_output):
    """The two timed passes of one implementation: forward, and forward + backward."""
    import torch

    def forward():
        with torch.no_grad():
            layer(input, matrix, size)

    def forward_backward():
        output = layer(input, matrix, size)
        torch.autograd.grad(output, (input, matrix), grad_output)

    return {"forward": forward, "forward+backward": forward_backward}


def _max_difference(layers, input, matrix, size, grad_output) -> float:
    """The largest difference between the implementations' output, input gradient and matrix
    gradient, each relative to the largest magnitude of the native one."""
    import torch

    results = []
    for _, layer in layers:
        output = layer(input, matrix, size)
        results.append((output, *torch.autograd.grad(output, (input, matrix), grad_output)))
    return max(
        ((custom - native).abs().max() / native.abs().max()).item()
        for native, custom in zip(*results)
    )


def measure(
    case, rounds: int, repeats: int, warmup: int, padding_mode: str, align_corners: bool, seed: int
):
    """{pass: {implementation: median seconds}} for one case, and the largest difference between
    the implementations' outputs and gradients."""
    import torch

    batch, channels, height, width, out_height, out_width = case
    generator = torch.Generator().manual_seed(seed)
    input = torch.rand(batch, channels, height, width, generator=generator).requires_grad_()
    # Random transforms around a zoom-in, as a spatial transformer produces them: most points
    # fall inside the input and some outside.
    matrix = torch.tensor([[0.8, 0.0, 0.0], [0.0, 0.8, 0.0]]) + 0.15 * torch.randn(
        batch, 2, 3, generator=generator
    )
    matrix.requires_grad_()
    size = [batch, channels, out_height, out_width]
    grad_output = torch.randn(batch, channels, out_height, out_width, generator=generator)
    layers = _layers(padding_mode, align_corners)
    difference = _max_difference(layers, input, matrix, size, grad_output)
    timings = {}
    for pass_name in ("forward", "forward+backward"):
        calls = {
            name: _passes(layer, input, matrix, size, grad_output)[pass_name]
            for name, layer in layers
        }
        timings[pass_name] = interleaved_medians(calls, rounds, repeats, warmup)
    return timings, difference


def interleaved_medians(calls: dict, rounds: int, repeats: int, warmup: int) -> dict[str, float]:
    """{name: median seconds of call()}: the calls take turns in `rounds`, each turn `warmup`
    untimed calls, then `repeats` timed ones."""
    samples = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            for _ in range(warmup):
                call()
            for _ in range(repeats):
                start = time.perf_counter()
                call()
                samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def measure_train_step(rounds: int, repeats: int, warmup: int, seed: int):
    """({"native": s, "custom": s}, description): the median time of one training step of the
    default ST-CNN with torch's ops and with this project's layer, same weights and batch."""
    import copy

    import torch
    import torch.nn.functional as F

    from stn_serve.data import distorted_size
    from stn_serve.data.digits import DIGITS_SIZE
    from stn_serve.models import build_model
    from stn_serve.train.config import TrainConfig
    from stn_serve.train.losses import pose_consistency
    from stn_serve.train.optim import make_optimizer
    from stn_serve.train.trainer import model_config_for

    torch.manual_seed(seed)
    train = TrainConfig()
    # The model `stn-serve train` builds with its defaults: digits, 28x28, under its distortion.
    canvas = distorted_size(train.distortion, DIGITS_SIZE)
    config = model_config_for(train, (1, *canvas), 10, [0.5], [0.5], DIGITS_SIZE)
    custom = build_model(config).train()
    native = copy.deepcopy(custom)
    native.transformer.native_ops = True
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(
        train.batch_size, config.in_channels, *config.input_size, generator=generator
    )
    labels = torch.randint(config.num_classes, (train.batch_size,), generator=generator)
    poses = torch.eye(3).expand(train.batch_size, 3, 3)

    def step_of(model):
        optimizer = make_optimizer(
            model, train.optimizer, train.lr, train.loc_lr_mult, train.weight_decay
        )

        def step():
            output = model(images)
            grid = model.transformer.grid_generator(output.theta)
            loss = F.cross_entropy(output.logits, labels) + train.pose_weight * pose_consistency(
                grid, poses
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return step

    calls = {"native": step_of(native), "custom": step_of(custom)}
    for call in calls.values():
        for _ in range(warmup):
            call()
    description = (
        f"ST-CNN {config.transform}, {config.in_channels}x{config.input_size[0]}x"
        f"{config.input_size[1]} -> {config.crop_size[0]}x{config.crop_size[1]}, "
        f"depth {config.depth}, batch {train.batch_size}, {train.optimizer}, pose-consistency loss"
    )
    # A step takes tens of milliseconds: the models alternate call by call, so that a change
    # in the load from other processes falls on both.
    return interleaved_medians(calls, rounds * repeats, 1, 0), description


def run(args) -> int:
    import torch

    if args.repeats < 1 or args.rounds < 1 or args.warmup < 0:
        raise InvalidInputError(
            "--repeats and --rounds must be >= 1 and --warmup >= 0, got "
            f"{args.repeats}, {args.rounds} and {args.warmup}"
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    busy = other_cores() if args.contended else 0
    print(
        f"stn-serve bench layer: torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"padding_mode={args.padding_mode}, align_corners={args.align_corners}, "
        f"median of {args.rounds} x {args.repeats} calls, {busy} busy processes beside it"
    )
    with busy_processes(busy) if busy else contextlib.nullcontext():
        worst = _layer_table(args)
        target = TARGET_CONTENDED_RATIO if busy else TARGET_RATIO
        verdict = "meets" if worst <= target else "misses"
        print(f"worst ratio {worst:.2f}x {verdict} the target of {target}x")
        if args.train_step:
            medians, description = measure_train_step(
                args.rounds, args.repeats, args.warmup, args.seed
            )
            ratio = medians["custom"] / medians["native"]
            verdict = "meets" if ratio <= TARGET_TRAIN_STEP_RATIO else "misses"
            print(
                f"train step ({description}): native {medians['native'] * 1e3:.3f} ms, "
                f"custom {medians['custom'] * 1e3:.3f} ms, ratio {ratio:.2f}x {verdict} the "
                f"target of {TARGET_TRAIN_STEP_RATIO}x"
            )
    return 0


def _layer_table(args) -> float:
    """Print the table of the layer's cases; return the worst ratio."""
    header = (
        f"{'case (N C HxW -> hxw)':<26} {'pass':<17} {'native ms':>10} {'custom ms':>10} "
        f"{'ratio':>7}"
    )
    print(header)
    print("-" * len(header))
    worst = 0.0
    # argparse converts the cases given on the command line, not the default strings.
    cases = [parse_case(case) if isinstance(case, str) else case for case in args.cases]
    for case in cases:
        timings, difference = measure(
            case,
            args.rounds,
            args.repeats,
            args.warmup,
            args.padding_mode,
            args.align_corners,
            args.seed,
        )
        batch, channels, height, width, out_height, out_width = case
        label = f"{batch} {channels} {height}x{width} -> {out_height}x{out_width}"
        for pass_name, medians in timings.items():
            ratio = medians["custom"] / medians["native"]
            worst = max(worst, ratio)
            print(
                f"{label:<26} {pass_name:<17} {medians['native'] * 1e3:>10.3f} "
                f"{medians['custom'] * 1e3:>10.3f} {ratio:>6.2f}x"
            )
        print(
            f"{label:<26} largest |custom - native| / max |native| (output, gradients): "
            f"{difference:.1e}"
        )
    return worst
