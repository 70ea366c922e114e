"""The LoRA entries of an ImageGenCalculator node's options, as values: modes, adapters, composites."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from calculators.protos.image_gen_calculator_pb2 import LoraLoadMode

#: Prefix of every field this package reports (the runtime renders it after the node).
FIELD_PREFIX = "node_options."


class LoraMode(enum.Enum):
    """How an adapter is applied (``LoraLoadMode`` in the options proto)."""

    DYNAMIC = "DYNAMIC"
    STATIC = "STATIC"
    FUSE = "FUSE"

    @classmethod
    def from_proto(cls, value: int) -> LoraMode:
        names = {int(LoraLoadMode.DYNAMIC): cls.DYNAMIC, int(LoraLoadMode.STATIC): cls.STATIC,
                 int(LoraLoadMode.FUSE): cls.FUSE}
        return names[int(value)]


@dataclass(frozen=True)
class LoraAdapter:
    """One ``lora_adapters`` entry; ``index`` is its position in the node's options."""

    alias: str
    path: Path
    alpha: float
    mode: LoraMode
    index: int

    @property
    def field(self) -> str:
        return f"{FIELD_PREFIX}lora_adapters[{self.index}]"


@dataclass(frozen=True)
class CompositeComponent:
    """One component of a composite: a registered adapter alias and its configured alpha."""

    adapter_alias: str
    alpha: float


@dataclass(frozen=True)
class CompositeAdapter:
    """One ``composite_lora_adapters`` entry; components apply in the order they are listed."""

    alias: str
    components: tuple[CompositeComponent, ...]
    index: int

    @property
    def field(self) -> str:
        return f"{FIELD_PREFIX}composite_lora_adapters[{self.index}]"


def default_alpha(value: float) -> bool:
    """True for the alpha an entry has when the operator did not set one."""
    return value == 1.0


def fmt_alpha(value: float) -> str:
    """A float32 option value as the operator wrote it (0.7, not 0.699999988079071)."""
    return f"{value:.7g}"


def names(items: Iterable[LoraAdapter | CompositeAdapter]) -> str:
    """The entries' aliases, quoted, comma-separated (for messages)."""
    return ", ".join(f'"{i.alias}"' for i in items)
