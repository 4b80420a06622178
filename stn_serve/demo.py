"""The end-to-end demo: train → export → serve → query, on the embedded digits.

1. Train a small ST-CNN (affine) on RTS-distorted digits (scikit-learn's, no download).
2. Export the best checkpoint to the model repository, verified against torch.
3. Start the gRPC server on 127.0.0.1 (a free port) over that repository.
4. Query it with stn-serve's client (own API) and with Triton's `tritonclient` (Open Inference
   Protocol), and check that both answer the same.
5. Draw the queried inputs beside the crops the server returned, with its predictions. The queried
   images are saved as PNG files (`samples/`) that `stn-serve predict` and `batch` take.
6. Stop the server.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stn_serve.train.config import TrainConfig

log = logging.getLogger(__name__)

MODEL_NAME = "digits"
QUERIED_IMAGES = 16
#: The test images the demo queries are distorted with this seed, so every run shows the same ones.
QUERY_SEED = 1234
#: Folder (in the run's) of the queried images as PNG files, for `stn-serve predict` and `batch`.
SAMPLES = "samples"


@dataclass(frozen=True)
class DemoSettings:
    """out_dir: where the run's files go (training run, picture).
    repository: the model repository the model is exported into.
    epochs, max_train_samples: how much to train (the training defaults: about 40 s on 2 cores,
        about 97 % test accuracy).
    """

    out_dir: Path = Path("runs/demo")
    repository: Path = Path("export")
    epochs: int = TrainConfig.epochs
    max_train_samples: int | None = None
    progress: bool = True


@dataclass
class DemoResult:
    """test_accuracy: of the trained checkpoint; served_accuracy: of the queried images, as the
    server answered; max_protocol_difference: own API vs Open Inference Protocol answers;
    artefacts: what the run wrote, by name."""

    test_accuracy: float
    served_accuracy: float
    max_protocol_difference: float
    artefacts: dict[str, Path]


def query_images(input_shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """RTS-distorted digits test images the model has not seen: (float32[N, C, H, W], labels[N], classes)."""
    from stn_serve.data import distort, load_split

    split = load_split("digits", "test")
    images = distort(split.images[:QUERIED_IMAGES], "RTS", seed=QUERY_SEED)
    if tuple(images.shape[1:]) != tuple(input_shape):
        raise RuntimeError(
            f"demo images are {list(images.shape[1:])}, the model takes {list(input_shape)}"
        )
    return images.numpy(), split.labels[:QUERIED_IMAGES].numpy(), split.classes


def query_with_tritonclient(port: int, images: np.ndarray) -> dict[str, np.ndarray]:
    """Run `images` through the Open Inference Protocol endpoint with Triton's own client."""
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        if not client.is_server_ready():
            raise RuntimeError("the server says it is not ready over the Open Inference Protocol")
        infer_input = triton.InferInput("image", list(images.shape), "FP32")
        infer_input.set_data_from_numpy(images)
        outputs = [triton.InferRequestedOutput(name) for name in ("probabilities", "crop", "theta")]
        result = client.infer(MODEL_NAME, [infer_input], outputs=outputs)
        return {name: result.as_numpy(name) for name in ("probabilities", "crop", "theta")}
    finally:
        client.close()


def save_samples(
    images: np.ndarray, labels: np.ndarray, classes: list[str], folder: Path
) -> list[Path]:
    """Write each query image as an 8-bit PNG named after its place and label
    (`03_label_7.png`), for `stn-serve predict` and `batch`; returns the paths in order."""
    from stn_serve.imaging import crop_image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, (image, label) in enumerate(zip(images, labels)):
        path = folder / f"{number:02d}_label_{classes[label]}.png"
        crop_image(image).save(path, format="PNG")
        paths.append(path)
    return paths


def draw(
    samples: list[Path], predictions, labels: np.ndarray, classes: list[str], path: Path
) -> Path:
    """The contact sheet of the queried samples: each beside its served crop, with the served
    prediction (green right, red wrong); `predict --sheet` and `batch --sheet` draw the same."""
    from PIL import Image

    from stn_serve.batch import SheetEntry, draw_sheet

    entries = []
    for sample, prediction, label in zip(samples, predictions, labels):
        with Image.open(sample) as image:
            image.load()
        best = prediction.top_k[0]
        truth = classes[label]
        entries.append(
            SheetEntry(sample.name, image, prediction.crop, best.label, best.probability, truth)
        )
    title = "served predictions: RTS-distorted inputs beside the spatial transformer's crops"
    return draw_sheet(entries, path, title)


def run_demo(settings: DemoSettings) -> DemoResult:
    from stn_serve.client import Client
    from stn_serve.export import export_checkpoint
    from stn_serve.imaging import decode_image
    from stn_serve.server import create_server
    from stn_serve.train import fit

    started = time.perf_counter()
    settings.out_dir.mkdir(parents=True, exist_ok=True)

    print(f"[1/5] training an ST-CNN (affine) on RTS-distorted digits for {settings.epochs} epochs")
    trained = fit(
        TrainConfig(
            # The training defaults: RTS digits (42x42) into a 28x28 canonical crop.
            data="digits",
            distortion="RTS",
            arch="stcnn",
            transform="affine",
            epochs=settings.epochs,
            max_train_samples=settings.max_train_samples,
            out_dir=str(settings.out_dir / "train"),
            progress=settings.progress,
        )
    )
    test_accuracy = trained.metrics["test_accuracy"]
    print(f"      test accuracy {test_accuracy:.1%}")

    print("[2/5] exporting the best checkpoint to ONNX, verified against torch")
    model_dir = export_checkpoint(trained.best_checkpoint, settings.repository, MODEL_NAME)

    print("[3/5] starting the gRPC server on 127.0.0.1")
    server, port = create_server(settings.repository, "127.0.0.1:0")
    server.start()
    try:
        print(f"[4/5] querying 127.0.0.1:{port} with stn-serve's client and with tritonclient")
        with Client(f"127.0.0.1:{port}", model=MODEL_NAME) as client:
            client.wait_ready()
            info = client.describe()
            images, labels, classes = query_images(tuple(info.input_shape))
            samples = save_samples(images, labels, classes, settings.out_dir / SAMPLES)
            # Query the files a user can query, and send tritonclient their very pixels.
            predictions = client.predict(samples, top_k=3)
            channels, height, width = info.input_shape
            images = np.stack([decode_image(path, (height, width), channels) for path in samples])
        triton = query_with_tritonclient(port, images)
    finally:
        server.stop(grace=1.0)
        print("      server stopped")

    own_probabilities = np.stack(
        [
            [score.probability for score in sorted(p.top_k, key=lambda s: s.index)]
            for p in predictions
        ]
    )
    top_indices = [sorted(score.index for score in p.top_k) for p in predictions]
    triton_probabilities = np.stack(
        [row[indices] for row, indices in zip(triton["probabilities"], top_indices)]
    )
    difference = max(
        float(np.abs(own_probabilities - triton_probabilities).max()),
        float(np.abs(np.stack([p.crop for p in predictions]) - triton["crop"]).max()),
    )
    served_accuracy = float(
        np.mean([p.top_k[0].label == classes[label] for p, label in zip(predictions, labels)])
    )

    print("[5/5] drawing inputs beside the served crops")
    picture = draw(
        samples, predictions, labels, classes, settings.out_dir / "served_predictions.png"
    )

    artefacts = {
        "checkpoint": trained.best_checkpoint,
        "metrics": trained.out_dir / "metrics.jsonl",
        **{f"plot {path.stem}": path for path in trained.plots},
        "onnx model": model_dir / "model.onnx",
        "model description": model_dir / "model.json",
        "sample inputs": settings.out_dir / SAMPLES,
        "served predictions": picture,
    }
    print()
    print(
        f"served on {info.execution_provider}: {served_accuracy:.0%} of {len(images)} queried "
        f"images right; own API vs Open Inference Protocol differ by at most {difference:.1e}"
    )
    for name, path in artefacts.items():
        print(f"  {name:<20} {path}")
    print(f"done in {time.perf_counter() - started:.0f} s")
    return DemoResult(test_accuracy, served_accuracy, difference, artefacts)
