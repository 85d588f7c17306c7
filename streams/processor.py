"""The one small interface every stream processor shares.

A processor is one *rule instance* from the configuration (e.g. "sewer_overflow", kind
"threshold"). It keeps its per-slot state in numpy arrays indexed by slot, runs a Numba kernel
over whole batches, and returns the state *transitions* as columnar :class:`Events`.
Neither runtime (asyncio edge runtime, faust workers) leaks in here: a processor is a pure
function of (batch arrays, state arrays, parameters), wrapped in a class that owns the state.

Adding a processor kind = one module with one subclass; the registry is built from subclasses.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict

RAISE = np.int8(1)
CLEAR = np.int8(-1)


class Events(NamedTuple):
    """State transitions found in one batch (or one timer tick); one row per transition."""

    row: np.ndarray  # int64: row of the batch that caused it (-1 for timer events)
    slot: np.ndarray  # int32: series slot (sensor rules) or device slot (position rules)
    kind: np.ndarray  # int8: RAISE (1) or CLEAR (-1)
    ts: np.ndarray  # int64 epoch ms (event time of the causing reading, or the tick time)
    value: np.ndarray  # float64: the value that triggered it
    aux: np.ndarray  # int32: rule-specific detail, e.g. the zone index; -1 when unused

    def __len__(self) -> int:
        return int(self.row.shape[0])

    @classmethod
    def empty(cls) -> "Events":
        return cls(np.empty(0, np.int64), np.empty(0, np.int32), np.empty(0, np.int8),
                   np.empty(0, np.int64), np.empty(0, np.float64), np.empty(0, np.int32))

    @classmethod
    def alloc(cls, n: int) -> "Events":
        """Output buffers a kernel fills; trim with :meth:`head`."""
        return cls(np.empty(n, np.int64), np.empty(n, np.int32), np.empty(n, np.int8),
                   np.empty(n, np.int64), np.empty(n, np.float64), np.full(n, -1, np.int32))

    def head(self, n: int) -> "Events":
        return Events(*(a[:n] for a in self))


class Params(BaseModel):
    """Base for each processor's parameter model (every field has a description)."""

    model_config = ConfigDict(extra="forbid")


class Processor(ABC):
    """One rule instance. Subclasses set ``kind``, ``input`` and ``Params``."""

    kind: ClassVar[str]
    input: ClassVar[str]  # "sensor" (SensorBatch) or "position" (PositionBatch)
    keyed_by: ClassVar[str]  # what slots number: "series" (default for sensor input) or "device"
    Params: ClassVar[type[Params]]
    registry: ClassVar[dict[str, type["Processor"]]] = {}
    # Set by a :class:`~gridwatch.streams.fused.FusedRules` that holds this rule's state arrays as
    # fields of its per-slot records: growing and restoring then go through it.
    home: Any = None

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if "kind" in cls.__dict__:
            Processor.registry[cls.kind] = cls
        if "keyed_by" not in cls.__dict__ and "input" in cls.__dict__:
            cls.keyed_by = "device" if cls.input == "position" else "series"

    def __init__(self, name: str, params: Params | dict[str, Any], capacity: int = 1024) -> None:
        self.name = name
        self.params = params if isinstance(params, self.Params) else self.Params.model_validate(params)
        self.capacity = 0
        self.enabled = np.zeros(0, np.bool_)
        self._alloc_state(0)
        self._bind()
        self.grow(capacity)

    # --- state -------------------------------------------------------------------------
    @abstractmethod
    def _state_arrays(self) -> dict[str, np.ndarray]:
        """Name → per-slot state array (first axis = slot)."""

    @abstractmethod
    def _alloc_state(self, n: int) -> None:
        """(Re)create state arrays for n slots in their initial state."""

    def _bind(self) -> None:
        """Called whenever the state arrays were replaced: caches them in ``_state_arrays`` order
        as ``self._state``, so a hot ``process`` needs no dict per call."""
        self._state = tuple(self._state_arrays().values())

    def grow(self, n: int) -> None:
        """Make room for slots [0, n); new slots start disabled and in the initial state."""
        if n <= self.capacity:
            return
        if self.home is not None:
            self.home.grow(n)
            return
        n = max(n, int(self.capacity * 1.5) + 16)
        old = self.snapshot()
        self._alloc_state(n)
        for k, a in self._state_arrays().items():
            a[: old[k].shape[0]] = old[k]
        en = np.zeros(n, np.bool_)
        en[: self.enabled.shape[0]] = self.enabled
        self.enabled = en
        self.capacity = n
        self._bind()

    def enable(self, slot: int) -> None:
        """The rule applies to this slot (set when a series/device that matches the rule appears)."""
        self.grow(slot + 1)
        self.enabled[slot] = True

    def snapshot(self) -> dict[str, np.ndarray]:
        """A copy of all state, e.g. for a changelog or a restart."""
        d = {k: a.copy() for k, a in self._state_arrays().items()}
        d["enabled"] = self.enabled.copy()
        return d

    def restore(self, snap: dict[str, np.ndarray]) -> None:
        n = snap["enabled"].shape[0]
        self._alloc_state(n)
        for k, a in self._state_arrays().items():
            a[:] = snap[k]
        self.enabled = snap["enabled"].copy()
        self.capacity = n
        self._bind()
        if self.home is not None:
            self.home.adopt(self)

    @property
    def nbytes(self) -> int:
        return int(self.enabled.nbytes + sum(a.nbytes for a in self._state_arrays().values()))

    # --- work --------------------------------------------------------------------------
    @abstractmethod
    def process(self, batch: Any) -> Events:
        """Run the kernel over one batch (rows in arrival order); return the transitions."""

    def tick(self, now_ms: int) -> Events:
        """Time-driven transitions (e.g. device offline). Default: none."""
        return Events.empty()


def create(kind: str, name: str, params: dict[str, Any], capacity: int = 1024) -> Processor:
    """Build a processor by kind name; raises KeyError listing the known kinds."""
    from . import processors  # noqa: F401  (registers the built-in kinds)

    try:
        cls = Processor.registry[kind]
    except KeyError:
        raise KeyError(f"unknown rule kind {kind!r}; known kinds: {sorted(Processor.registry)}") from None
    return cls(name, params, capacity)
