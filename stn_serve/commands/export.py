"""`stn-serve export CHECKPOINT`: write a verified ONNX model into the model repository."""

from __future__ import annotations

import argparse

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
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint file written by `stn-serve train`")
    parser.add_argument("--repository", default="export", help="root folder of the model repository")
    parser.add_argument("--name", required=True, help="model name: its folder in the repository")
    parser.add_argument("--version", type=int, default=None,
                        help="version number to write (must not exist); none: the next free one")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help="standard ONNX opset of the graph (18 to 26)")
    parser.add_argument("--gradients", action="store_true",
                        help="also write gradients.onnx: the spatial transformer's backward "
                             "(inputs image, theta, grad_crop; outputs grad_image, grad_theta)")
    return parser


def run(args) -> int:
    from stn_serve.export import export_checkpoint

    target = export_checkpoint(args.checkpoint, args.repository, args.name, version=args.version,
                               opset=args.opset, gradients=args.gradients)
    print(target)
    return 0
