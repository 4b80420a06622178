"""`stn-serve export CHECKPOINT`: write a verified ONNX model into the model repository."""

from __future__ import annotations

from pathlib import Path

from stn_serve.commands.formatting import HelpFormatter

DEFAULT_OPSET = 20


def add_parser(subparsers, parents):
    parser = subparsers.add_parser(
        "export",
        parents=parents,
        help="export a checkpoint to ONNX in the model repository",
        description=(
            "Export CHECKPOINT to REPOSITORY/NAME/VERSION/model.onnx and model.json. The graph is "
            "checked with onnx.checker (full check) and run in ONNX Runtime (CPU) on the digits "
            "test split at the model's input size; if any output differs from torch beyond the "
            "stated tolerances, the command fails with the figures and writes nothing."
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint file written by `stn-serve train`")
    parser.add_argument("--repository", default="export", help="root folder of the model repository")
    parser.add_argument("--name", required=True, help="model name: its folder in the repository")
    parser.add_argument("--version", type=int, default=None,
                        help="version number to write (must not exist) (None: the next free one)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help="standard ONNX opset of the graph (18 to 26)")
    parser.add_argument("--gradients", action="store_true",
                        help="also write gradients.onnx: the spatial transformer's backward "
                             "(inputs image, theta, grad_crop; outputs grad_image, grad_theta)")
    return parser


def largest_difference(parity: dict) -> str:
    """"2.4e-06 (crop)": the largest |ONNX Runtime - torch| over a parity record's outputs."""
    name, figures = max(parity["outputs"].items(), key=lambda item: item[1]["max_abs_diff"])
    return f"{figures['max_abs_diff']:.1e} ({name})"


def summary(target: Path) -> str:
    """One line: what was written where, and how closely ONNX Runtime matched torch."""
    from stn_serve.contract import SPEC_FILE, ModelSpec

    spec = ModelSpec.read(target / SPEC_FILE)
    files = ", ".join(sorted(path.name for path in target.iterdir()))
    line = (
        f"exported {spec.name} v{spec.version} to {target} ({files}); parity with torch passed "
        f"at batch sizes {spec.parity['batch_sizes']}: largest difference "
        f"{largest_difference(spec.parity)}"
    )
    if "gradients" in spec.parity:
        line += f", gradients {largest_difference(spec.parity['gradients'])}"
    return line


def run(args) -> int:
    from stn_serve.export import export_checkpoint

    target = export_checkpoint(args.checkpoint, args.repository, args.name, version=args.version,
                               opset=args.opset, gradients=args.gradients)
    print(summary(target))
    return 0
