"""Run every input image through a predictor in fixed-size chunks and write the results.

Output folder:
    predictions.jsonl   one line per predicted image: file, model, version, top_k, theta, crop
    failures.jsonl      one line per image of this run that could not be read or predicted
    crops/<file>.png    the spatial transformer's crop of each image

Memory stays bounded by the chunk size however many files there are: inputs are found lazily and
each chunk's results are written before the next is read; no file larger than `max_file_bytes` is
read. Images already in predictions.jsonl are skipped, so rerunning after an interruption (or
after fixing failed files) does only what is left.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from stn_serve.batch.crops import crop_name, save_crop
from stn_serve.batch.inputs import InputFile, printable
from stn_serve.batch.journal import JsonLines, done_keys
from stn_serve.batch.predictors import Encoded, Failure, Outcome, Predictor
from stn_serve.batch.sheet import SheetCollector
from stn_serve.client import Prediction
from stn_serve.client.defaults import DEFAULT_MAX_MESSAGE_MB
from stn_serve.errors import InvalidInputError, StnServeError

log = logging.getLogger(__name__)

PREDICTIONS = "predictions.jsonl"
FAILURES = "failures.jsonl"
CROPS = "crops"
#: Files larger than this are not read (a request could not carry them either).
MAX_FILE_BYTES = int(DEFAULT_MAX_MESSAGE_MB * 1024 * 1024)


@dataclass
class BatchSummary:
    predicted: int = 0
    skipped: int = 0
    failures: list[Failure] = field(default_factory=list)


def prediction_record(key: str, prediction: Prediction, crop: str | None) -> dict:
    """The predictions.jsonl line for image `key`."""
    return {
        "file": key,
        "model": prediction.model,
        "version": prediction.version,
        "top_k": [
            {"index": s.index, "label": s.label, "probability": round(s.probability, 6)}
            for s in prediction.top_k
        ],
        "theta": [round(float(t), 6) for t in prediction.theta],
        "crop": crop,
    }


def read_file(file: InputFile, max_bytes: int) -> bytes:
    """The file's bytes. Raises OSError when it cannot be read, InvalidInputError when the walk
    found it unreadable or it holds more than `max_bytes`."""
    if file.error is not None:
        raise InvalidInputError(f"{file.path}: {file.error}")
    with file.path.open("rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise InvalidInputError(
            f"{file.path} is larger than {max_bytes / 2**20:g} MiB, the most a file may hold "
            "(--max-message-mb)"
        )
    return data


def read_chunk(
    chunk: list[InputFile], max_bytes: int = MAX_FILE_BYTES
) -> tuple[list[Encoded], list[Failure]]:
    """Each file's bytes; a file that cannot be read becomes a Failure naming its path."""
    encoded, failed = [], []
    for file in chunk:
        try:
            encoded.append((file, read_file(file, max_bytes)))
        except InvalidInputError as error:
            failed.append(Failure(file.key, str(error)))
        except OSError as error:
            failed.append(Failure(file.key, f"cannot read {file.path}: {error.strerror or error}"))
    return encoded, failed


def predict_chunk(
    chunk: list[InputFile], predictor: Predictor, max_bytes: int = MAX_FILE_BYTES
) -> Outcome:
    """Read and predict one chunk; every file ends up either predicted or failed."""
    encoded, failed = read_chunk(chunk, max_bytes)
    if not encoded:
        return [], failed
    try:
        results, refused = predictor.predict(encoded)
    except StnServeError as error:
        # The whole chunk failed (server unavailable, deadline passed): report it and go on.
        results, refused = [], [Failure(file.key, str(error)) for file, _ in encoded]
    return results, failed + refused


def run_batch(
    inputs: Iterable[InputFile],
    predictor: Predictor,
    out_dir: Path,
    *,
    chunk_size: int = 32,
    save_crops: bool = True,
    progress: bool | None = None,
    max_file_bytes: int = MAX_FILE_BYTES,
    sheet: SheetCollector | None = None,
) -> BatchSummary:
    """Predict every input not already in `out_dir`/predictions.jsonl; see the module docstring.

    progress: show a tqdm bar on stderr (None = only when stderr is a terminal).
    sheet: collects the first predictions of this run for a contact sheet.
    """
    if chunk_size < 1:
        raise InvalidInputError(f"chunk size must be >= 1, got {chunk_size}")
    out_dir.mkdir(parents=True, exist_ok=True)
    done = done_keys(out_dir / PREDICTIONS)
    summary = BatchSummary()
    pending = _not_done(inputs, done, summary)
    with (
        JsonLines(out_dir / PREDICTIONS, append=True) as predictions,
        JsonLines(out_dir / FAILURES, append=False) as failures,
        tqdm(unit="image", disable=None if progress is None else not progress) as bar,
    ):
        while chunk := list(itertools.islice(pending, chunk_size)):
            results, failed = predict_chunk(chunk, predictor, max_file_bytes)
            for file, prediction in results:
                crop = f"{CROPS}/{crop_name(file.key)}" if save_crops else None
                try:
                    if crop:
                        save_crop(prediction.crop, out_dir / crop)
                except (StnServeError, OSError) as error:
                    failed.append(Failure(file.key, f"cannot save its crop: {error}"))
                    continue
                predictions.write(prediction_record(file.key, prediction, crop))
                summary.predicted += 1
                if sheet is not None:
                    sheet.add(file, prediction)
            for failure in failed:
                failures.write({"file": failure.file, "error": failure.error})
                log.warning(
                    "image failed", extra={"file": printable(failure.file), "error": failure.error}
                )
            summary.failures += failed
            bar.update(len(chunk))
            bar.set_postfix(failed=len(summary.failures), skipped=summary.skipped, refresh=False)
    return summary


def _not_done(inputs: Iterable[InputFile], done: set[str], summary: BatchSummary):
    for file in inputs:
        if file.key in done:
            summary.skipped += 1
        else:
            yield file
