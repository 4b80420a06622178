"""torch vs ONNX Runtime: per-output figures, checked against stated tolerances."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stn_serve.errors import StnServeError


class ParityError(StnServeError):
    """The exported model's outputs differ from torch's by more than the tolerances."""


@dataclass(frozen=True)
class Tolerance:
    """An output passes when |onnx - torch| <= atol + rtol * |torch| everywhere; with
    `scaled`, atol is a fraction of max |torch| over the output (for sums of many terms, whose
    rounding grows with the size of the terms rather than of the result)."""

    rtol: float
    atol: float
    scaled: bool = False


# float32 tolerances of the exported classifier. ONNX Runtime computes the same maths in another
# order (fused convolutions, its own GEMM and GridSample kernels), so each value carries a few
# float32 roundings (eps = 1.2e-7) more or less than torch's: differences of 1e-7 on theta and
# logits and a few 1e-6 on the crop were measured (every model.json records its own). The crop
# is the most sensitive: a grid error d (normalised units) moves the sample by d * W / 2 pixels,
# so pixels next to a sharp edge change by up to that much. The tolerances leave a factor of about
# 30 to 100 over what was measured while staying far below any error that would change a
# prediction (probabilities to 1e-5, pixels to 1e-4 of their [0, 1] range).
TOLERANCES = {
    "logits": Tolerance(rtol=1e-4, atol=1e-5),
    "probabilities": Tolerance(rtol=1e-4, atol=1e-5),
    "crop": Tolerance(rtol=0.0, atol=1e-4),
    "theta": Tolerance(rtol=1e-4, atol=1e-5),
}

# The exported backward sums the same terms as torch's autograd through the custom layer in
# another order (ScatterElements, ONNX Runtime's MatMul); a sum of n float32 terms of size s is
# off by up to about n * 1.2e-7 * s. Measured: 3e-6 of the largest gradient. A grid point that
# lands within a rounding of a pixel centre may also take the neighbour difference on the other
# side there; points that close are rare, and the tolerance is relative to the largest gradient.
GRADIENT_TOLERANCES = {
    "grad_image": Tolerance(rtol=0.0, atol=1e-4, scaled=True),
    "grad_theta": Tolerance(rtol=0.0, atol=1e-4, scaled=True),
}


def compare(
    reference: dict[str, np.ndarray], actual: dict[str, np.ndarray], tolerances: dict[str, Tolerance]
) -> dict[str, dict[str, float | bool]]:
    """{output: {max_abs_diff, max_abs_torch, rtol, atol, scaled, ok}} for every output in
    `tolerances`.

    Args:
        reference, actual: {output name: array}; the same names and shapes.
        tolerances: {output name: Tolerance}.
    """
    figures = {}
    for name, tolerance in tolerances.items():
        expected = np.asarray(reference[name], dtype=np.float64)
        got = np.asarray(actual[name], dtype=np.float64)
        if got.shape != expected.shape:
            raise ParityError(f"output {name!r}: ONNX Runtime gave shape {list(got.shape)}, torch {list(expected.shape)}")
        difference = np.abs(got - expected)
        scale = np.abs(expected)
        atol = tolerance.atol * float(scale.max(initial=0.0)) if tolerance.scaled else tolerance.atol
        figures[name] = {
            "max_abs_diff": float(difference.max(initial=0.0)),
            "max_abs_torch": float(scale.max(initial=0.0)),
            "rtol": tolerance.rtol,
            "atol": tolerance.atol,
            "scaled": tolerance.scaled,
            "ok": bool(np.all(difference <= atol + tolerance.rtol * scale)),
        }
    return figures


def require_parity(figures: dict[str, dict[str, float | bool]], what: str) -> None:
    """Raise ParityError listing every output that failed its tolerance."""
    failed = {name: figure for name, figure in figures.items() if not figure["ok"]}
    if failed:
        lines = [
            f"{name}: max |diff| {figure['max_abs_diff']:.3g} > atol {figure['atol']:g}"
            f"{' * max |torch|' if figure['scaled'] else ''} + rtol {figure['rtol']:g} * |torch|"
            for name, figure in failed.items()
        ]
        raise ParityError(f"{what}: ONNX Runtime does not match torch: " + "; ".join(lines))
