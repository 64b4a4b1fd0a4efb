"""Graph files: load, validate and instantiate a call's graph of typed-frame nodes.

Depends on ``telewire.nodes``, ``telewire.frames``, ``telewire.registry`` and ``telewire.errors``;
``server`` and ``cli`` depend on it.

A graph file is TOML::

    edges = ["tel_in.audio -> rt.audio_in", "rt.audio_out -> tel_out.audio_in"]

    [nodes.tel_in]
    type = "carrier_in"          # an entry point in group telewire.nodes
    version = ">=0.1,<1"         # optional pin on the distribution providing the type
    [nodes.tel_in.config]
    interrupt_dtmf_digit = "*"

Loading rejects an unknown node type, an unknown port, an edge whose frame types do not match
and a config key or value the node does not accept, naming the file, the node and the port.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable, Mapping

from loguru import logger
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import Version
from pydantic import ValidationError

from telewire.carrier import CallContext
from telewire.envelope import CompiledEnvelope, compile_envelope
from telewire.errors import ConfigError, GraphError, PluginError
from telewire.frames import EndFrame, ErrorFrame, Frame, StartFrame
from telewire.nodes.base import Handler, Node
from telewire.redact import MASK, is_secret_name, mask_text, shown
from telewire.plugins import load_group

if TYPE_CHECKING:
    from telewire.registry import Carrier

__all__ = [
    "NODE_GROUP",
    "CallGraph",
    "Edge",
    "Graph",
    "NodeSpec",
    "Observer",
    "apply_overrides",
    "default_graph_path",
    "load_graph",
    "node_types",
]

NODE_GROUP = "telewire.nodes"
_EDGE_RE = re.compile(r"^\s*([A-Za-z_][\w]*)\.([A-Za-z_][\w]*)\s*->\s*([A-Za-z_][\w]*)\.([A-Za-z_][\w]*)\s*$")

#: An observer of a port: called with (node name, port name, frame) for every frame, after the
#: frame's targets. Observers must be quick and must not raise (errors are logged and dropped).
Observer = Callable[[str, str, Frame], None]


@dataclass(frozen=True, slots=True)
class NodeTypeInfo:
    """A node type found in entry-point group ``telewire.nodes``."""

    name: str
    cls: type[Node] | None
    entry_point: str
    distribution: str
    version: str
    error: str | None = None


def node_types() -> dict[str, NodeTypeInfo]:
    """Every installed node type, including the ones that failed to load (with their error)."""
    found = load_group(NODE_GROUP, base=Node)
    types = {n: NodeTypeInfo(n, cls, i.entry_point, i.distribution, i.version)
             for (n, cls), i in zip(found.loaded.items(), found.infos.values())}
    for f in found.failures:
        types.setdefault(f.name, NodeTypeInfo(f.name, None, f.entry_point, f.distribution, "",
                                              f.error))
    return types


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One validated node of a graph file."""

    name: str
    type: str
    cls: type[Node]
    config: Any
    version: str | None = None


@dataclass(frozen=True, slots=True)
class Edge:
    """``src.src_port -> dst.dst_port``."""

    src: str
    src_port: str
    dst: str
    dst_port: str

    def __str__(self) -> str:
        return f"{self.src}.{self.src_port} -> {self.dst}.{self.dst_port}"


def default_graph_path() -> Path:
    """The graph that ships with telewire (``telewire/data/default_graph.toml``)."""
    return Path(str(resources.files("telewire") / "data" / "default_graph.toml"))


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str], *, source: str) -> None:
    """Apply ``NODE.config.KEY=VALUE`` overrides to a raw graph dict in place.

    ``VALUE`` is read as a TOML value when it parses as one (``5``, ``true``, ``"x"``,
    ``[1, 2]``) and as a plain string otherwise.

    Raises:
        ConfigError: an override that is not of the form ``NODE.config.KEY=VALUE`` or names a
            node the graph does not have. The message shows the override's value only when
            its key is not secret-like (``rt.config.api_key=**********``).
    """
    nodes = raw.setdefault("nodes", {})
    for item in overrides:
        path, sep, value = item.partition("=")
        parts = path.strip().split(".")
        if not sep or len(parts) < 3 or parts[1] != "config" or not all(parts):
            raise ConfigError(f"--set {_override_text(path, sep, value)!r}: expected "
                              "NODE.config.KEY=VALUE (for example rt.config.provider=echo)")
        node = parts[0]
        if node not in nodes:
            raise ConfigError(f"--set {_override_text(path, sep, value)!r}: {source} has no "
                              f"node {node!r}; nodes: {', '.join(sorted(nodes)) or 'none'}")
        try:
            parsed: Any = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value
        target = nodes[node].setdefault("config", {})
        for key in parts[2:-1]:
            target = target.setdefault(key, {})
            if not isinstance(target, dict):
                raise ConfigError(f"--set {_override_text(path, sep, value)!r}: "
                                  f"{'.'.join(parts[:-1])} is not a table")
        target[parts[-1]] = parsed


def _override_text(path: str, sep: str, value: str) -> str:
    """An override as an error message may show it: the value masked when any part of the key
    is secret-like (or the text has no ``=`` and so may be all value), URLs masked always."""
    if not sep:
        return mask_text(path) if "." in path and not is_secret_name(path) else MASK
    if any(is_secret_name(p) for p in path.split(".")):
        return f"{path}={MASK}"
    return mask_text(f"{path}={value}")


def _config_error(exc: ValidationError, source: str, node: str) -> GraphError:
    """One line per problem, naming the key; the value is shown unless it is a table, sits
    under a secret-like name, or belongs to a key the node does not have (a misspelt
    ``api_kye`` is as likely to hold a secret as ``api_key``)."""
    lines = [f"{source}: node {node!r}: invalid config"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        value = err.get("input")
        msg = err["msg"]
        if isinstance(value, dict) or err.get("type") == "extra_forbidden":
            text = ""
        else:
            text = f" (value {shown(value, *err['loc'])})"
        if isinstance(value, str) and value and any(is_secret_name(p) for p in err["loc"]):
            msg = msg.replace(value, MASK)  # a validator that quotes its input
        where = f"{node}.config.{loc}" if loc else f"{node}.config"
        lines.append(f"  {where}: {mask_text(msg)}{text}")
    return GraphError("\n".join(lines))


class Graph:
    """A validated graph: node specs and typed edges. Immutable; shared by every call.

    ``envelope`` is the envelope compiled from ``tel_in.config.envelope_spec`` and
    ``tel_out.config.response_envelope_spec`` when the graph gives them, else ``None``.
    """

    def __init__(self, nodes: Mapping[str, NodeSpec], edges: Iterable[Edge], source: str,
                 envelope: CompiledEnvelope | None = None) -> None:
        self.nodes = dict(nodes)
        self.edges = tuple(edges)
        self.source = source
        self.envelope = envelope
        self._check()

    def _check(self) -> None:
        src = self.source
        for edge in self.edges:
            for end, port, kind in ((edge.src, edge.src_port, "outputs"),
                                    (edge.dst, edge.dst_port, "inputs")):
                if end not in self.nodes:
                    raise GraphError(f"{src}: edge '{edge}': no node {end!r}; nodes: "
                                     f"{', '.join(sorted(self.nodes))}")
                ports = getattr(self.nodes[end].cls, kind)
                if port not in ports:
                    direction = "output" if kind == "outputs" else "input"
                    raise GraphError(
                        f"{src}: edge '{edge}': node {end!r} (type "
                        f"{self.nodes[end].type!r}) has no {direction} port {port!r}; "
                        f"{direction} ports: {', '.join(sorted(ports)) or 'none'}")
            sent = self.nodes[edge.src].cls.outputs[edge.src_port]
            accepted = self.nodes[edge.dst].cls.inputs[edge.dst_port]
            bad = [t.__name__ for t in sent if not issubclass(t, accepted)]
            if bad:
                raise GraphError(
                    f"{src}: edge '{edge}': {edge.dst}.{edge.dst_port} accepts "
                    f"{', '.join(t.__name__ for t in accepted)} but {edge.src}.{edge.src_port} "
                    f"emits {', '.join(bad)}")

    def nodes_of_type(self, cls: type[Node]) -> list[str]:
        """Names of the nodes whose type is ``cls`` or a subclass."""
        return [n for n, s in self.nodes.items() if issubclass(s.cls, cls)]

    def check_carrier(self, carrier: Carrier) -> None:
        """Refuse a carrier that lacks a capability a node of this graph requires, or whose
        audio a node cannot take (:meth:`Node.carrier_problem`).

        Raises:
            GraphError: naming the file, the node, the capability and the carrier.
        """
        caps = carrier.capabilities_for(self.envelope)
        for name, spec in self.nodes.items():
            for cap in spec.cls.requires:
                if not getattr(caps, cap, False):
                    raise GraphError(f"{self.source}: node {name!r} (type {spec.type!r}) needs "
                                     f"carrier capability {cap!r}, which carrier "
                                     f"{carrier.name!r} does not have")
            problem = spec.cls.carrier_problem(spec.config, caps)
            if problem is not None:
                raise GraphError(f"{self.source}: node {name!r} (type {spec.type!r}): {problem}")

    def instantiate(self, call: "CallGraph") -> dict[str, Node]:
        """Make this graph's nodes for one call and wire their ports."""
        nodes = {name: spec.cls(name, spec.config, call) for name, spec in self.nodes.items()}
        targets: dict[tuple[str, str], list[Handler]] = {}
        for e in self.edges:
            targets.setdefault((e.src, e.src_port), []).append(nodes[e.dst].handler(e.dst_port))
        watchers = [n.observe for n in nodes.values() if n.observes_all]
        for name, node in nodes.items():
            for port in node.outputs:
                hs = targets.get((name, port), [])
                observers = call.observers_for(name, port) + watchers
                node.connect(port, _fanout(name, port, hs, observers))
        return nodes


def _fanout(node: str, port: str, handlers: list[Handler],
            observers: list[Observer]) -> Handler:
    """The cheapest dispatcher for a port's targets and observers."""
    if not observers:
        if len(handlers) == 1:
            return handlers[0]
        if not handlers:
            async def drop(frame: Frame) -> None:
                return None
            return drop

        async def many(frame: Frame) -> None:
            for h in handlers:
                await h(frame)
        return many

    async def observed(frame: Frame) -> None:
        for h in handlers:
            await h(frame)
        for ob in observers:
            try:
                ob(node, port, frame)
            except Exception:  # an observer must never break the call
                logger.exception("observer of {}.{} failed", node, port)
    return observed


def load_graph(path: str | Path | None = None, overrides: Iterable[str] = (),
               *, types: Mapping[str, NodeTypeInfo] | None = None) -> Graph:
    """Load and validate a graph file (the default graph when ``path`` is ``None``).

    Args:
        path: the TOML graph file.
        overrides: ``NODE.config.KEY=VALUE`` strings applied before validation.
        types: node types to use instead of the installed entry points (tests).

    Raises:
        ConfigError: the file cannot be read or parsed.
        GraphError: unknown node type, version pin not met, bad config, unknown port, mistyped
            edge — naming the file, node and port.
    """
    p = Path(path) if path is not None else default_graph_path()
    source = str(p)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read graph file: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    return build_graph(raw, source=source, overrides=overrides, types=types)


def build_graph(raw: dict[str, Any], *, source: str, overrides: Iterable[str] = (),
                types: Mapping[str, NodeTypeInfo] | None = None) -> Graph:
    """Validate a graph given as a dict (the parsed TOML); see :func:`load_graph`."""
    unknown = set(raw) - {"nodes", "edges", "description"}
    if unknown:
        raise GraphError(f"{source}: unknown top-level keys {sorted(unknown)}; "
                         "expected nodes, edges, description")
    apply_overrides(raw, overrides, source=source)
    raw_nodes = raw.get("nodes")
    if not isinstance(raw_nodes, dict) or not raw_nodes:
        raise GraphError(f"{source}: no [nodes.<name>] tables")
    available = node_types() if types is None else types
    specs: dict[str, NodeSpec] = {}
    for name, body in raw_nodes.items():
        if not isinstance(body, dict):
            raise GraphError(f"{source}: nodes.{name} must be a table")
        extra = set(body) - {"type", "config", "version"}
        if extra:
            raise GraphError(f"{source}: node {name!r}: unknown keys {sorted(extra)}; "
                             "expected type, config, version")
        type_name = body.get("type")
        if not isinstance(type_name, str):
            raise GraphError(f"{source}: node {name!r} has no type")
        info = available.get(type_name)
        if info is None:
            raise GraphError(f"{source}: node {name!r}: unknown node type {type_name!r}; "
                             f"installed: {', '.join(sorted(available)) or 'none'}")
        if info.cls is None:
            raise GraphError(f"{source}: node {name!r}: node type {type_name!r} failed to "
                             f"load: {info.error}")
        pin = body.get("version")
        if pin is not None:
            _check_pin(source, name, type_name, str(pin), info)
        try:
            config = info.cls.Config.model_validate(body.get("config", {}))
        except ValidationError as exc:
            raise _config_error(exc, source, name) from None
        specs[name] = NodeSpec(name, type_name, info.cls, config, pin)
    edges = []
    raw_edges = raw.get("edges", [])
    if not isinstance(raw_edges, list):
        raise GraphError(f"{source}: edges must be a list of 'node.port -> node.port' strings")
    for item in raw_edges:
        m = _EDGE_RE.match(item) if isinstance(item, str) else None
        if m is None:
            raise GraphError(f"{source}: edge {item!r} is not of the form "
                             "'node.port -> node.port'")
        edges.append(Edge(*m.groups()))
    return Graph(specs, edges, source, _graph_envelope(specs, source))


def _resolve_envelope(value: str | Mapping[str, Any], *, source: str, where: str,
                      presets: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """A preset name, file path or inline table, as ``(label, tables)``."""
    if isinstance(value, Mapping):
        return "envelope_spec", dict(value)
    if value in presets:
        preset = presets[value]
        if isinstance(preset, Mapping):
            return value, dict(preset)
        path = Path(preset)
    else:
        path = Path(value)
        if not path.is_absolute():
            path = Path(source).parent / path
        if not path.is_file():
            raise GraphError(f"{source}: {where} = {value!r} is neither an envelope preset "
                             f"({', '.join(sorted(presets)) or 'none installed'}) nor a file")
    try:
        return value, tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise GraphError(f"{source}: {where}: cannot load {path}: {exc}") from None


def _graph_envelope(specs: Mapping[str, NodeSpec], source: str) -> CompiledEnvelope | None:
    """Compile the graph's envelope specs (``None`` when it names none)."""
    from telewire.nodes.carrier_in import CarrierIn
    from telewire.nodes.carrier_out import CarrierOut
    from telewire.registry import default_registry

    inbound = next(((n, s.config.envelope_spec) for n, s in specs.items()
                    if issubclass(s.cls, CarrierIn) and s.config.envelope_spec is not None), None)
    outbound = next(((n, s.config.response_envelope_spec) for n, s in specs.items()
                     if issubclass(s.cls, CarrierOut)
                     and s.config.response_envelope_spec is not None), None)
    if inbound is None and outbound is None:
        return None
    presets = default_registry().envelope_presets()
    if inbound is None:
        raise GraphError(f"{source}: node {outbound[0]!r} sets response_envelope_spec but no "
                         "carrier_in node sets envelope_spec")
    where_in = f"{inbound[0]}.config.envelope_spec"
    label, tables = _resolve_envelope(inbound[1], source=source, where=where_in, presets=presets)
    spec = tables.get("envelope_spec", tables if isinstance(inbound[1], Mapping) else None)
    response = tables.get("response_envelope_spec")
    if outbound is not None:
        where_out = f"{outbound[0]}.config.response_envelope_spec"
        _, out_tables = _resolve_envelope(outbound[1], source=source, where=where_out,
                                          presets=presets)
        response = out_tables.get("response_envelope_spec",
                                  out_tables if isinstance(outbound[1], Mapping) else None)
    if not isinstance(spec, Mapping):
        raise GraphError(f"{source}: {where_in}: no [envelope_spec] table in {label!r}")
    if not isinstance(response, Mapping):
        raise GraphError(f"{source}: no response envelope: set response_envelope_spec on the "
                         f"carrier_out node or use a preset/file with [response_envelope_spec]")
    try:
        return compile_envelope(label, spec, response, source=f"{source} ({label})")
    except ConfigError as exc:
        raise GraphError(str(exc)) from None


def _check_pin(source: str, node: str, type_name: str, pin: str, info: NodeTypeInfo) -> None:
    try:
        spec = SpecifierSet(pin)
    except InvalidSpecifier:
        raise GraphError(f"{source}: node {node!r}: version {pin!r} is not a version range "
                         "like '>=1.1,<2'") from None
    if not info.version or Version(info.version) not in spec:
        raise GraphError(
            f"{source}: node {node!r}: type {type_name!r} comes from "
            f"{info.distribution or 'an unknown distribution'} {info.version or '(no version)'}, "
            f"which does not satisfy version {pin!r}")


SendFn = Callable[[str | bytes], Awaitable[None]]


@dataclass(eq=False)
class CallGraph:
    """One call: its nodes, its carrier context, and how to talk to the carrier.

    The server creates one per media WebSocket, feeds each received message to the carrier-in
    node, and closes the socket once :attr:`ended` is set. Each call is isolated: a failure in one call's nodes
    ends that call and is logged with its ids; nothing is shared between calls but the
    immutable :class:`Graph` and :class:`~telewire.registry.Carrier`.
    """

    graph: Graph
    carrier: Carrier
    send: SendFn
    observers: Mapping[tuple[str, str], list[Observer]] = field(default_factory=dict)
    #: admission at the start event: returns the start frame to run the call with (the same or
    #: a copy with credentials removed), or why the call is refused (it then ends, ``refused``).
    #: It may be a coroutine function (the server's registers the call on the control plane).
    on_start: Callable[["CallGraph", StartFrame],
                       "StartFrame | str | Awaitable[StartFrame | str]"] | None = None
    context: CallContext = field(init=False)
    nodes: dict[str, Node] = field(init=False)
    ended: asyncio.Event = field(init=False)
    end_frame: EndFrame | None = field(init=False, default=None)
    errors: list[ErrorFrame] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.context = self.carrier.new_call(self.graph.envelope)
        self.log = logger.bind(carrier=self.carrier.name, call_sid="", stream_sid="")
        self.ended = asyncio.Event()
        self._started = False
        self._ending = False
        self._hanging_up = False
        self._transferring = False
        # the per-frame path calls the server's send directly (no method layer in between)
        self.send_to_carrier = self.send  # type: ignore[method-assign]
        self.nodes = self.graph.instantiate(self)

    def observers_for(self, node: str, port: str) -> list[Observer]:
        return list(self.observers.get((node, port), ())) + list(self.observers.get(("*", "*"), ()))

    async def send_to_carrier(self, message: str | bytes) -> None:
        await self.send(message)

    async def start(self, frame: StartFrame) -> None:
        """Broadcast the call's start to every node (once)."""
        if self._started:
            return
        self._started = True
        self.log = logger.bind(carrier=frame.carrier, call_sid=frame.call_id,
                               stream_sid=frame.stream_id)
        if self.on_start is not None:
            admitted = self.on_start(self, frame)
            if inspect.isawaitable(admitted):
                admitted = await admitted
            if isinstance(admitted, str):
                self.log.warning("call refused: {}", admitted)
                await self.end("refused", admitted)
                return
            frame = admitted
        self.log.info("call started ({} {} Hz)", frame.media_format.codec,
                      frame.media_format.sample_rate)
        for node in self.nodes.values():
            await node.on_call_start(frame)

    def report(self, frame: ErrorFrame) -> None:
        self.errors.append(frame)
        if len(self.errors) > 1000:
            del self.errors[:500]

    async def inject(self, port: str, frame: Frame, *, carrier_side: bool = False) -> None:
        """Deliver ``frame`` to input ``port`` of the realtime agent (or, with ``carrier_side``,
        of the carrier-out node), as an operator or control plane does."""
        from telewire.nodes.carrier_out import CarrierOut
        from telewire.nodes.realtime_agent import RealtimeAgent

        kind = CarrierOut if carrier_side else RealtimeAgent
        for node in self.nodes.values():
            if isinstance(node, kind) and port in node.inputs:
                await node.handler(port)(frame)

    async def hang_up(self, reason: str, detail: str = "") -> None:
        """Hang up after the agent's last audio has played: drain, the carrier's hang-up hook
        (exactly once), then end the call (the server closes the media socket)."""
        if self._ending or self._hanging_up:
            return
        self._hanging_up = True
        from telewire.nodes.carrier_out import CarrierOut

        for node in self.nodes.values():
            if isinstance(node, CarrierOut) and not await node.drain():
                self.log.warning("hang-up: the last agent audio did not finish playing within "
                                 "{:g} s; hanging up anyway", node.config.drain_timeout_s)
        try:
            message = self.carrier.hangup(self.context, reason)
            if message is not None:
                await self.send_to_carrier(message)
        except Exception:  # a plugin failure must not keep the call open
            self.log.exception("carrier {} hang-up hook failed", self.carrier.name)
        await self.end(reason, detail)

    async def wind_down(self, reason: str, detail: str = "", *, timeout_s: float = 10.0) -> None:
        """End the call gracefully because the runtime must (a draining server): every node
        that can say goodbye does (:meth:`Node.say_goodbye`, up to ``timeout_s`` together),
        then the call hangs up through the carrier after the last audio has played."""
        if self._ending or self._hanging_up:
            return
        goodbyes = [asyncio.ensure_future(node.say_goodbye(reason, detail))
                    for node in self.nodes.values()]
        if goodbyes:
            _, late = await asyncio.wait(goodbyes, timeout=timeout_s or None)
            for task in late:
                task.cancel()
            if late:
                self.log.warning("{}: the goodbye did not finish within {:g} s; hanging up",
                                 reason, timeout_s)
            for task in goodbyes:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    self.log.opt(exception=task.exception()).error("goodbye failed")
        await self.hang_up(reason, detail)

    async def transfer(self, target: str, *, timeout_s: float = 10.0) -> str | None:
        """Transfer the call to ``target`` after the agent's last audio has played.

        Returns ``None`` on success (the call then ends with reason ``transferred``) or a short
        error for the model: the carrier cannot transfer, refused, or did not answer. A second
        transfer while one is under way, or once the call is ending, sends nothing.
        """
        import aiohttp

        if self._ending or self._hanging_up:
            return "the call is already ending"
        if self._transferring:
            return "the call is already being transferred"
        self._transferring = True
        try:
            return await self._transfer(target, timeout_s, aiohttp)
        finally:
            self._transferring = False

    async def _transfer(self, target: str, timeout_s: float, aiohttp: Any) -> str | None:
        try:
            request = self.carrier.transfer_request(self.context, target)
        except (ConfigError, PluginError) as exc:
            self.log.error("transfer to {!r} refused before sending: {}", target, exc)
            return str(exc)
        if request is None:
            return f"carrier {self.carrier.name} cannot transfer calls"
        from telewire.nodes.carrier_out import CarrierOut

        for node in self.nodes.values():
            if isinstance(node, CarrierOut):
                await node.drain()
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as http:
                async with http.request(request.method, request.url, headers=dict(request.headers),
                                        data=dict(request.form) or None) as resp:
                    body = (await resp.text())[:300]
                    if resp.status >= 300:
                        self.log.error("transfer to {!r}: the carrier answered HTTP {}: {}",
                                       target, resp.status, body)
                        return f"the carrier refused the transfer (HTTP {resp.status})"
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.log.error("transfer to {!r} failed: {}: {}", target, type(exc).__name__, exc)
            return f"the transfer request failed: {type(exc).__name__}"
        self.log.info("call transferred to {!r}", target)
        await self.end("transferred", target)
        return None

    async def end(self, reason: str, detail: str = "") -> None:
        """End the call once: every node's ``on_call_end`` runs, then :attr:`ended` is set."""
        if self._ending:
            return
        self._ending = True
        self.end_frame = EndFrame(reason=reason, detail=detail)
        self.log.info("call ended: {}{}", reason, f" ({detail})" if detail else "")
        for name, node in self.nodes.items():
            try:
                await node.on_call_end(self.end_frame)
            except Exception:
                self.log.exception("node {!r} failed while ending the call", name)
        self.ended.set()
