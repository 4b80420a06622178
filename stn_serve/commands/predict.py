"""`stn-serve predict`: ask a running server about some images and print the top-k classes."""

from __future__ import annotations

from pathlib import Path

from stn_serve.commands.connection import DEFAULT_SERVER, client_options, remote_predictor
from stn_serve.commands.formatting import HelpFormatter
from stn_serve.errors import InvalidInputError

# Images per Predict request, so a long argument list stays under the message limit.
REQUEST_IMAGES = 32


def add_parser(subparsers, parents):
    parser = subparsers.add_parser(
        "predict",
        parents=[*parents, client_options()],
        help="predict images on a running server and print the top-k classes",
        description="Send images to a running stn-serve server and print each one's top-k "
        "classes and transform parameters.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="PNG/JPEG files to predict")
    parser.add_argument(
        "--server",
        type=str,
        default=DEFAULT_SERVER,
        help="server address: HOST:PORT, or dns:///HOST:PORT to balance over every address",
    )
    parser.add_argument(
        "--save-crops",
        type=Path,
        default=None,
        metavar="DIR",
        help="also save each image's crop (what the spatial transformer produced) as a PNG here",
    )
    parser.add_argument(
        "--sheet",
        type=Path,
        default=None,
        metavar="PNG",
        help="also draw each image beside its crop, with the top class and its probability, into "
        "this PNG",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object per image instead of a table"
    )
    return parser


def check_images(images: list[str]) -> None:
    """Refuse a folder before connecting: predict takes files, batch takes folders."""
    for image in images:
        if Path(image).is_dir():
            raise InvalidInputError(
                f"{image} is a folder; predict takes image files. For every image in a folder: "
                f"stn-serve batch {image} --out OUT_FOLDER --server HOST:PORT"
            )


def format_prediction(image: str, prediction) -> str:
    lines = [f"{image}  ({prediction.model} v{prediction.version})"]
    width = max(len(score.label) for score in prediction.top_k)
    for rank, score in enumerate(prediction.top_k, start=1):
        lines.append(f"  {rank}. {score.label:<{width}}  {score.probability:.4f}")
    if prediction.theta.size:
        lines.append("  theta: " + " ".join(f"{t:+.3f}" for t in prediction.theta))
    return "\n".join(lines)


def run(args) -> int:
    import sys

    from stn_serve.batch import InputFile, SheetCollector, predict_chunk, printable

    check_images(args.images)
    sheet = None
    if args.sheet is not None:
        title = f"{args.server}: inputs beside their crops, top class and probability"
        sheet = SheetCollector(args.sheet, title)
    failures = []
    with remote_predictor(args) as predictor:
        for start in range(0, len(args.images), REQUEST_IMAGES):
            chunk = [
                InputFile(image, Path(image))
                for image in args.images[start : start + REQUEST_IMAGES]
            ]
            results, failed = predict_chunk(chunk, predictor)
            failures += failed
            for file, prediction in results:
                show(file, prediction, args)
                if sheet is not None:
                    sheet.add(file, prediction)
    for failure in failures:
        print(f"error: {printable(failure.file)}: {failure.error}", file=sys.stderr)
    if sheet is not None and (path := sheet.draw()) is not None:
        print(f"contact sheet of {len(sheet.entries)} images: {path}")
    return 1 if failures else 0


def show(file, prediction, args) -> None:
    """Print one image's prediction (a table or a JSON line) and save its crop when asked."""
    from stn_serve.batch import crop_name, prediction_record, printable, save_crop
    from stn_serve.batch.journal import json_line

    crop = None
    if args.save_crops is not None:
        crop = args.save_crops / crop_name(file.path.name)
        save_crop(prediction.crop, crop)
    if args.json:
        record = prediction_record(file.key, prediction, crop and str(crop))
        print(json_line(record).decode("utf-8"), end="")
    else:
        print(format_prediction(printable(file.key), prediction))
        if crop:
            print(f"  crop: {printable(str(crop))}")
