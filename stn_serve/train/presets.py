"""Training presets: per data source, the settings that differ from `TrainConfig`'s defaults.

`TrainConfig`'s defaults are the embedded digits' preset (1,294 training images: many short
epochs). Fashion-MNIST and MNIST have 54,000: fewer, larger-batch epochs fit the same time. A
preset only fills the flags a user left out; `stn-serve train` prints the one it used. The
evidence behind each value is in docs/training.md.

Stdlib only: the command-line parsers read it without importing torch.
"""

from __future__ import annotations

from stn_serve.errors import InvalidInputError

#: "auto" picks the preset named after --data, else "default".
AUTO = "auto"
PRESETS: dict[str, dict[str, object]] = {
    "default": {},
    "fashion-mnist": {"epochs": 15, "batch_size": 128},
    "mnist": {"epochs": 15, "batch_size": 128},
}
PRESET_CHOICES = (AUTO, *PRESETS)
#: The TrainConfig fields some preset sets: their flags default to "the preset's value".
PRESET_FIELDS = tuple(sorted({name for values in PRESETS.values() for name in values}))


def resolve_preset(name: str, data: str) -> str:
    """The preset `name` stands for when training on `data` ("auto": the data's own, if any)."""
    if name == AUTO:
        return data if data in PRESETS else "default"
    if name not in PRESETS:
        raise InvalidInputError(f"preset must be one of {list(PRESET_CHOICES)}, got {name!r}")
    return name


def preset_values(name: str, data: str) -> dict[str, object]:
    """The field values preset `name` gives for `data`."""
    return dict(PRESETS[resolve_preset(name, data)])


def describe(name: str, values: dict[str, object]) -> str:
    """One line for the start of a run: "preset fashion-mnist: epochs 15, batch_size 128"."""
    settings = ", ".join(f"{key} {value}" for key, value in values.items()) or "the defaults"
    return f"preset {name}: {settings}"
