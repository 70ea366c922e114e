"""ImageGenCalculatorOptions as one table: per field, its proto type and default (read from
``image_gen_calculator.proto``), its range rule, the ``pull`` flag that sets it (with its help), and
where graph rendering puts it.

Node validation (:mod:`calculators.image_gen.options`), the ``pull`` flags (declared, parsed and
checked: :mod:`calculators.image_gen.cli`, :func:`calculators.image_gen.graph_writer.check_graph_flags`)
and graph rendering (:mod:`calculators.image_gen.graph_writer`) all read this table; ``pull``'s options
and graph flags get one field per ``--<field>`` row (:func:`with_flag_fields`). Adding an option is one
proto field plus one row (and, for a flag, its docs/cli.md lines, which ``tests/docs`` asks for);
``tests/calculators/image_gen/test_option_table.py`` refuses a proto field without a row.
Rules between fields are the small named functions of :mod:`calculators.image_gen.option_rules`, which
both checkers run; a range rule here returns the reason (``must be greater than 0, got 0``) that both
phrase after the field or its flag.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import FieldDescriptor

from calculators.protos.image_gen_calculator_pb2 import ImageGenCalculatorOptions

#: Largest seed a request or the node may give (SPEC §9).
MAX_RNG_SEED = 2**63 - 1

RangeRule = Callable[[Any], "str | None"]


def positive(value: float) -> str | None:
    """Counts: greater than 0."""
    return None if value > 0 else f"must be greater than 0, got {value}"


def finite(value: float) -> str | None:
    """Scales: a finite number."""
    return None if math.isfinite(value) else f"must be a finite number, got {value}"


def seed(value: int) -> str | None:
    """Seeds: 0..2**63-1 (the proto field is unsigned)."""
    return None if value <= MAX_RNG_SEED else f"must be between 0 and {MAX_RNG_SEED}, got {value}"


@dataclass(frozen=True)
class OptionRow:
    """One ImageGenCalculatorOptions field. ``flag`` is the ``pull`` flag that sets it (None: only a
    hand-written graph sets it); ``section`` groups rendered fields under one heading comment;
    ``comment`` is written right above the field."""

    field: str
    flag: str | None
    range: RangeRule | None = None
    section: str = "model"
    comment: str | None = None
    #: The flag's ``--help`` text (None: none).
    help: str | None = None

    @property
    def descriptor(self) -> Any:
        """The proto FieldDescriptor: type, label, default."""
        return ImageGenCalculatorOptions.DESCRIPTOR.fields_by_name[self.field]

    @property
    def default(self) -> Any:
        """The proto default; None when the proto declares none."""
        fd = self.descriptor
        return fd.default_value if fd.has_default_value else None

    @property
    def repeated(self) -> bool:
        return bool(self.descriptor.is_repeated)

    @property
    def python_type(self) -> type:
        """The Python type of one value of the field (int, float, bool or str; a message class)."""
        return _PYTHON_TYPES.get(self.descriptor.cpp_type, object)

    def range_problem(self, value: Any) -> str | None:
        """Why ``value`` is out of this field's range, or None."""
        return self.range(value) if self.range is not None and value is not None else None


_PYTHON_TYPES: dict[int, type] = {
    FieldDescriptor.CPPTYPE_INT32: int, FieldDescriptor.CPPTYPE_INT64: int,
    FieldDescriptor.CPPTYPE_UINT32: int, FieldDescriptor.CPPTYPE_UINT64: int,
    FieldDescriptor.CPPTYPE_FLOAT: float, FieldDescriptor.CPPTYPE_DOUBLE: float,
    FieldDescriptor.CPPTYPE_BOOL: bool, FieldDescriptor.CPPTYPE_STRING: str,
}


#: Every ImageGenCalculatorOptions field, in the order graphs are rendered and nodes are checked.
OPTIONS: tuple[OptionRow, ...] = (
    OptionRow("models_path", None, comment="Folder holding model_index.json, relative to this file."),
    OptionRow("device", "--target_device"),
    OptionRow("plugin_config", "--num_streams", comment="NUM_STREAMS: how many requests this node generates at once."),
    OptionRow("resolution", "--resolution", section="static", help="static resolution(s) WxH, space separated"),
    OptionRow("num_images_per_prompt", "--num_images_per_prompt", positive, section="static"),
    OptionRow("guidance_scale", "--guidance_scale", finite, section="static"),
    OptionRow("max_resolution", "--max_resolution", section="limits", help="largest WxH a request may ask for"),
    OptionRow("default_resolution", "--default_resolution", section="limits",
              help="WxH used when a request gives none"),
    OptionRow("max_num_images_per_prompt", "--max_num_images_per_prompt", positive, section="limits"),
    OptionRow("default_num_inference_steps", "--default_num_inference_steps", positive, section="limits"),
    OptionRow("max_num_inference_steps", "--max_num_inference_steps", positive, section="limits"),
    OptionRow("default_rng_seed", None, seed, section="limits"),
    OptionRow("lora_adapters", "--source_loras", section="loras"),
    OptionRow("composite_lora_adapters", "--source_loras", section="loras",
              comment="Composite adapters: blends of the adapters above, in the order listed."),
)

BY_FIELD: dict[str, OptionRow] = {row.field: row for row in OPTIONS}
#: The field-to-flag map the ``pull`` checks word their messages with.
FLAGS: dict[str, str] = {row.field: row.flag for row in OPTIONS if row.flag is not None}


#: Fields whose flag sets the field itself (``--<field>``): ``pull`` declares, parses and passes these
#: straight from the table. The others have flags of their own shape (``--target_device``,
#: ``--num_streams`` into plugin_config, ``--source_loras``).
DIRECT_FLAG_ROWS: tuple[OptionRow, ...] = tuple(row for row in OPTIONS if row.flag == f"--{row.field}")


def with_flag_fields(cls: type, doc: str) -> type:
    """``cls`` (a frozen dataclass whose fields all come first) extended by one field per
    :data:`DIRECT_FLAG_ROWS` row, named like the proto field, typed ``<its type> | None`` and None by
    default ("flag not given"). ``pull``'s options and graph flags are built this way, so a new
    ``--<field>`` option needs no field of its own in either."""
    extra = [(row.field, row.python_type | None, dataclasses.field(default=None)) for row in DIRECT_FLAG_ROWS]
    return dataclasses.make_dataclass(cls.__name__.lstrip("_"), extra, bases=(cls,), frozen=True,
                                      namespace={"__doc__": doc, "__module__": cls.__module__})


def default(field: str) -> Any:
    """The proto default of ``field`` (e.g. ``max_num_inference_steps`` -> 100)."""
    return BY_FIELD[field].default


def range_problem(field: str, value: Any) -> str | None:
    """Why ``value`` is out of ``field``'s range, or None."""
    return BY_FIELD[field].range_problem(value)
