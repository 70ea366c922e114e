"""The calculator contract: how a calculator declares its ports and takes part in a graph.

A calculator is a class. Its ports are data on the class (:class:`Port`), checked when a graph is
validated. It takes part in two stages, as OVMS's node initializers and MediaPipe calculators do:

* load time, once per node: :meth:`Calculator.check_options` (cheap, may read the filesystem) and
  :meth:`Calculator.create_resources` (heavy: builds what the node needs, e.g. pipelines; the value
  is handed to every request of that node as the side packet named by ``resources_port``);
* request time, once per request: a fresh instance, ``open`` / ``process`` (once per input packet
  set) / ``close``. ``close`` runs whenever ``open`` succeeded, also after an error.

Example::

    class UpperCalculator(Calculator):
        inputs = (Port("TEXT", str, "text to convert"),)
        outputs = (Port("TEXT", str, "upper-cased text"),)

        def process(self, cc: CalculatorContext) -> None:
            cc.emit("TEXT", cc.inputs["TEXT"].upper())
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from google.protobuf.message import Message

if TYPE_CHECKING:
    from ovms_graph.graph_config import NodeSpec


@dataclass(frozen=True)
class Port:
    """A declared stream or side-packet port: tag, Python type and a one-line description.

    ``required`` ports must be connected; ``exact_name`` pins the stream or side packet name
    (OVMS requires ``IMAGE_GEN_NODE_RESOURCES:pipes`` exactly).
    """

    tag: str
    type: Any
    description: str
    required: bool = True
    exact_name: str | None = None


@dataclass(frozen=True)
class NodeIssue:
    """A problem a calculator found in one node's configuration."""

    message: str
    field: str | None = None


@dataclass(frozen=True)
class Alias:
    """A routable model name a calculator registers at load (e.g. a LoRA adapter alias)."""

    name: str
    kind: str = "alias"
    listed: bool = True
    #: For an unlisted name that clients may plausibly send: why it cannot be used and what to use
    #: instead. The front end answers such a request with 400 'model "<name>" cannot be used
    #: directly: <hint>' (code model_not_routable) instead of 404.
    not_routable_hint: str | None = None


class LoadContext:
    """What a calculator sees at load time: where the graph lives and how to register names."""

    def __init__(self, graph_name: str, graph_file: Path, *, cache_dir: Path | None = None) -> None:
        self.graph_name = graph_name
        self.graph_file = graph_file
        self.graph_dir = graph_file.parent
        #: The server's compiled-model cache folder (``--cache_dir``), or None. Calculators that
        #: compile models use it unless their own options name another.
        self.cache_dir = cache_dir
        self.aliases: list[Alias] = []
        self.base_routable = True

    def resolve_path(self, value: str) -> Path:
        """``value`` resolved against the graph's folder unless it is absolute."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self.graph_dir / path)

    def register_alias(self, name: str, *, kind: str = "alias", listed: bool = True,
                       not_routable_hint: str | None = None) -> None:
        """Make ``name`` routable to this graph through the request's ``model`` field (``listed``),
        or reserve it (unlisted: it still counts toward name uniqueness across graphs), optionally
        with a hint telling clients who send it what to use instead."""
        self.aliases.append(Alias(name, kind, listed, not_routable_hint))

    def hide_base(self) -> None:
        """The graph's own name stops being routable (e.g. STATIC LoRA hides the base model)."""
        self.base_routable = False


class RequestContext:
    """Per-request state shared by every node: id, cancellation, and the client's presence."""

    def __init__(self, request_id: str | None = None,
                 client_gone: Callable[[], bool] | None = None) -> None:
        self.request_id = request_id or uuid.uuid4().hex[:16]
        #: The end user the request names (OpenAI's ``user`` / ``safety_identifier``), set by the
        #: calculator that validated it; the front end writes it to the access log line.
        self.end_user: str | None = None
        self._cancelled = threading.Event()
        self._client_gone = client_gone

    def cancel(self) -> None:
        """Ask every node of this request to stop as soon as it can. Thread-safe."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        """True once the request was cancelled or its client disconnected. Never raises."""
        if self._cancelled.is_set():
            return True
        try:
            if self._client_gone is not None and self._client_gone():
                self._cancelled.set()
                return True
        except Exception:  # a broken probe must not break the caller (it may be a native thread)
            return False
        return False


class CalculatorContext:
    """What one node sees during one request: its inputs, side packets, options and an emitter.

    ``emit`` is thread-safe: a calculator may call it from a worker or native callback thread
    while ``process`` is still running; packets on one stream arrive downstream in emit order.
    """

    def __init__(self, *, node: NodeSpec, options: Message | None, side_packets: Mapping[str, Any],
                 request: RequestContext, emit: Callable[[str, Any], None]) -> None:
        self.node = node
        self.options = options
        self.side_packets = side_packets
        self.request = request
        self.inputs: Mapping[str, Any] = {}
        self.timestamp = 0
        self._emit = emit

    def emit(self, tag: str, value: Any) -> None:
        """Send ``value`` on the output stream with tag ``tag`` (``TAG`` or ``TAG:index``)."""
        self._emit(tag, value)


@runtime_checkable
class Closable(Protocol):
    """Resources with something to release: ``close()`` runs once at shutdown, after running requests
    drained (and when a later node of the graph fails to load)."""

    def close(self) -> None: ...


@runtime_checkable
class ConcurrencyLimited(Protocol):
    """Resources that cap how many requests their node runs at once (None or not positive: no cap)."""

    @property
    def concurrency(self) -> int | None: ...


@runtime_checkable
class MemoryEstimated(Protocol):
    """Resources that know the resident bytes they hold (None: unknown), published as a metric."""

    @property
    def memory_estimate(self) -> int | None: ...


class Resources(Closable, ConcurrencyLimited, MemoryEstimated, Protocol):
    """What the runtime reads from the value ``create_resources`` returns. A value may implement any
    part (:class:`Closable`, :class:`ConcurrencyLimited`, :class:`MemoryEstimated`); the runtime uses
    each part the value has and hands the value to the nodes as it is."""


class Calculator:
    """Base class of every calculator. Subclasses declare ports and override the hooks they need."""

    #: Registry name; defaults to the class name.
    name: ClassVar[str] = ""
    inputs: ClassVar[tuple[Port, ...]] = ()
    outputs: ClassVar[tuple[Port, ...]] = ()
    input_side_packets: ClassVar[tuple[Port, ...]] = ()
    output_side_packets: ClassVar[tuple[Port, ...]] = ()
    #: Protobuf message types accepted in ``node_options`` / legacy ``options`` extensions.
    options_types: ClassVar[tuple[type[Message], ...]] = ()
    #: Tag of the input side packet that carries ``create_resources``'s value, if any.
    resources_port: ClassVar[str | None] = None
    #: Whether nodes of this calculator must have a name (their resources are keyed by it).
    requires_name: ClassVar[bool] = False

    @classmethod
    def registry_name(cls) -> str:
        return cls.name or cls.__name__

    # ----- load time -----
    @classmethod
    def contract(cls, node: NodeSpec) -> Iterable[NodeIssue]:
        """Cross-port rules beyond the declared ports. Pure: no I/O."""
        return ()

    @classmethod
    def check_options(cls, node: NodeSpec, options: Message | None, ctx: LoadContext) -> Iterable[NodeIssue]:
        """Every problem with the node's options; may look at files, never loads models."""
        return ()

    @classmethod
    def declared_aliases(cls, node: NodeSpec, options: Message | None, ctx: LoadContext) -> Iterable[str]:
        """Every alias ``create_resources`` would register (routable or not), read from the options
        alone, so ``validate`` checks aliases across graphs without loading anything."""
        return ()

    @classmethod
    def create_resources(cls, node: NodeSpec, options: Message | None, ctx: LoadContext) -> Any:
        """Build the node's heavy resources once; only called after ``check_options`` found nothing."""
        return None

    # ----- request time -----
    def __init__(self, node: NodeSpec, side_packets: Mapping[str, Any]) -> None:
        self.node = node
        self.side_packets = side_packets

    def open(self, cc: CalculatorContext) -> None:
        """Prepare for one request. May block; runs in the worker pool."""

    def process(self, cc: CalculatorContext) -> None:
        """Handle one set of input packets (``cc.inputs``), emitting outputs. May block."""

    def close(self, cc: CalculatorContext) -> None:
        """Release per-request state. Runs whenever ``open`` succeeded."""
