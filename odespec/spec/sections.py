"""Top-level spec sections owned by other packages (``train:``): their registry and contract.

The spec language's core (``name``, ``input``, ``model``, ``export``) is validated by this
package. A section such as ``train:`` brings its own vocabulary (data sources, optimizers,
losses) and rules (the data against the model), which live with the package that runs it; that
package registers a :class:`SectionType` here, as layer types register with
:mod:`odespec.layers.registry`. One name is one section: a duplicate is refused, and so is a
name :class:`~odespec.spec.model.Spec` has no field for (a section's checked value is kept on the
Spec field of its name, so that callers read it typed, e.g. ``spec.train``).

What the registry feeds:

* :func:`odespec.spec.schema.build_schema` puts each section's :meth:`SectionType.schema` under
  ``$defs/NAME`` and the top-level property ``NAME`` (so the shipped schema holds them);
* :func:`odespec.spec.schema.active_schema` lets a section extend its shipped fragment with the
  components registered since (:meth:`SectionType.extend_schema`);
* the validator runs :meth:`SectionType.check` on the section's schema-valid value, after the
  model has been checked.

Who registers ``train``: the top-level :mod:`odespec` package imports the small, torch-free
:mod:`odespec.train.section`, so every way of loading a spec (the CLI, :mod:`odespec.api`,
``from odespec.spec import load_spec``; each imports :mod:`odespec` first) finds the section
registered, while nothing in ``spec/`` imports ``train/``. The section's schema and checks, which
load the data-source registry, are imported only when a spec has a ``train:`` section (or the
whole schema is written out).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path as FilePath
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Optional, Protocol, Sequence, TypeVar

from odespec.spec.model import Location, ModelItem, SeriesSpec, Shape, Spec

if TYPE_CHECKING:  # pragma: no cover
    # the YAML reader is loaded with the first spec read, not when a section registers
    from odespec.spec.load import Path

__all__ = ["SectionType", "SectionContext", "ReportError", "register", "get", "names", "all_types"]


class ReportError(Protocol):
    """How a section's checks report a problem: at a spec path, with an optional hint;
    ``key=True`` points at the key itself rather than at its value."""

    def __call__(self, path: Path, message: str, hint: Optional[str] = None, *, key: bool = False) -> None: ...


@dataclass(frozen=True)
class SectionContext:
    """What a section's checks see of the rest of the spec, and how they report."""

    #: the checked model items; None when the model has errors (then a section checks only its
    #: own rules, not how it fits the model)
    items: Optional[Sequence[ModelItem]]
    #: the model's per-sample input shape, as written
    input_shape: Shape
    error: ReportError
    #: where a spec path is written (line, column), for the objects the section returns
    loc: Callable[[Path], Location]
    #: the directory relative file paths in the section resolve against (the spec file's, or
    #: the one given to :func:`odespec.spec.load_spec`); None for a spec not read from a file
    base_dir: Optional[FilePath] = None
    #: what the model reads beside ``input`` (an irregular series' times, mask, query times); None:
    #: ``input`` alone, or the input section has errors
    series: Optional[SeriesSpec] = None


class SectionType:
    """A top-level section of the spec. Subclass it, set :attr:`name`, implement :meth:`schema`
    and :meth:`check`, and register the class with :func:`register`. Keep the module that
    registers it free of torch and of anything heavier than the registration: it is imported
    whenever odespec is."""

    #: the top-level key, and the :class:`~odespec.spec.model.Spec` field that keeps the checked value
    name: ClassVar[str]

    def schema(self) -> dict[str, Any]:
        """The section's JSON-Schema fragment for the components registered now."""
        raise NotImplementedError

    def extend_schema(self, shipped: dict[str, Any]) -> dict[str, Any]:
        """The fragment validation uses, given the one in the shipped schema file: the section
        adds what was registered since it was generated (third-party plugins). The shipped
        fragment is a fresh copy the section may change."""
        return shipped

    def check(self, raw: Any, ctx: SectionContext) -> Any:
        """Check the section's schema-valid value; report each problem through ``ctx.error``
        and return the object to keep on the :class:`Spec` (None if anything was wrong)."""
        raise NotImplementedError


S = TypeVar("S", bound=type)

_SECTIONS: dict[str, SectionType] = {}


def _spec_fields() -> frozenset[str]:
    """The :class:`Spec` fields that a registered section fills (marked ``section``)."""
    return frozenset(f.name for f in fields(Spec) if f.metadata.get("section"))


def register(cls: S) -> S:
    """Register a :class:`SectionType` subclass (usable as a decorator). Refuses a name already
    registered, and one :class:`Spec` has no section field for."""
    if not (isinstance(cls, type) and issubclass(cls, SectionType)):
        raise TypeError(f"{cls!r} is not a SectionType subclass")
    name = cls.name
    if name in _SECTIONS:
        raise ValueError(f"a section named {name!r} is already registered ({type(_SECTIONS[name]).__qualname__})")
    if name not in _spec_fields():
        raise ValueError(f"Spec has no field for a section named {name!r}; the sections it keeps: "
                         f"{', '.join(sorted(_spec_fields()))}")
    _SECTIONS[name] = cls()
    return cls


def get(name: str) -> SectionType:
    """The section registered as ``name``; KeyError if none is."""
    return _SECTIONS[name]


def names() -> list[str]:
    """Registered section names, sorted."""
    return sorted(_SECTIONS)


def all_types() -> list[SectionType]:
    """Registered sections, sorted by name."""
    return [_SECTIONS[n] for n in names()]
