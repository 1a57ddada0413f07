"""State the root command hands to its subcommands."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ulixes_onnx.store import ModelStore


@dataclass
class CliState:
    models_dir: Path | None = None

    def store(self) -> ModelStore:
        # Imported here: the root command and `--help` need no model store (nor NumPy, which it loads).
        from ulixes_onnx.store import ModelStore

        return ModelStore(self.models_dir)
