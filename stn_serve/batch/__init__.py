"""Batch inference: run a folder (or glob) of images through a served or local model and write
predictions.jsonl, failures.jsonl and the crops; split a job into shards and merge their outputs.
Serving side: never imports torch."""

from stn_serve.batch.crops import crop_name, save_crop
from stn_serve.batch.inputs import InputFile, iter_inputs, printable
from stn_serve.batch.merge import MergeSummary, merge_shards
from stn_serve.batch.predictors import Failure, LocalPredictor, RemotePredictor
from stn_serve.batch.runner import BatchSummary, predict_chunk, prediction_record, run_batch
from stn_serve.batch.shards import Shard
from stn_serve.batch.sheet import SheetCollector, SheetEntry, draw_sheet

__all__ = [
    "BatchSummary",
    "Failure",
    "InputFile",
    "LocalPredictor",
    "MergeSummary",
    "RemotePredictor",
    "Shard",
    "SheetCollector",
    "SheetEntry",
    "crop_name",
    "draw_sheet",
    "iter_inputs",
    "merge_shards",
    "predict_chunk",
    "prediction_record",
    "printable",
    "run_batch",
    "save_crop",
]
