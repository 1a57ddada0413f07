"""State the root command hands to its subcommands."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ulixes_onnx.store import ModelStore


@dataclass
class CliState:
    models_dir: Path | None = None

    def store(self) -> ModelStore:
        return ModelStore(self.models_dir)
