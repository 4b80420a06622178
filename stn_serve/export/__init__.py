"""Export to the model repository: a model or checkpoint -> verified ONNX (`export/<name>/<version>/`).

- `export_model(model, config, labels, repository, name, ...)`: a model in memory (trained or not).
- `export_checkpoint(checkpoint_path, repository, name, ...)`: a checkpoint file.
- `ParityError`: ONNX Runtime disagrees with torch beyond the stated tolerances.

The graph uses the standard `GridSample` op and one ONNX local function of the custom domain
`stn` per grid generator (see `stn_serve.export.translation`).
"""

from stn_serve.export.exporter import export_checkpoint, export_model
from stn_serve.export.graph import SUPPORTED_OPSETS
from stn_serve.export.parity import ParityError

__all__ = ["SUPPORTED_OPSETS", "ParityError", "export_checkpoint", "export_model"]
