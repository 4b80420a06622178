"""Batch inference: run a folder (or glob) of images through a served or local model and write
predictions.jsonl, failures.jsonl and the crops. Serving side: never imports torch."""

from stn_serve.batch.crops import crop_name, save_crop
from stn_serve.batch.inputs import InputFile, iter_inputs
from stn_serve.batch.predictors import Failure, LocalPredictor, RemotePredictor
from stn_serve.batch.runner import BatchSummary, predict_chunk, prediction_record, run_batch

__all__ = [
    "BatchSummary",
    "Failure",
    "InputFile",
    "LocalPredictor",
    "RemotePredictor",
    "crop_name",
    "iter_inputs",
    "predict_chunk",
    "prediction_record",
    "run_batch",
    "save_crop",
]
