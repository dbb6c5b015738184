"""The spec's ``train:`` section, registered with :mod:`odespec.spec.sections`.

The top-level :mod:`odespec` package imports this module, so every way of loading a spec finds
the section registered. It stays small and torch-free: the section's schema
(:mod:`odespec.train.schema`) and checks (:mod:`odespec.train.check`), which load the
data-source registry, are imported only when a spec has a ``train:`` section or the whole schema
is written out.
"""

from __future__ import annotations

from typing import Any, Optional

from odespec.spec.model import TrainSpec
from odespec.spec.sections import SectionContext, SectionType, register

__all__ = ["TrainSection"]


@register
class TrainSection(SectionType):
    """``train:``: data, loss, optimizer, schedule and the rest of ``odespec train``'s settings."""

    name = "train"

    def schema(self) -> dict[str, Any]:
        from odespec.train.schema import train_schema

        return train_schema()

    def extend_schema(self, shipped: dict[str, Any]) -> dict[str, Any]:
        from odespec.train.schema import add_plugin_sources

        return add_plugin_sources(shipped)

    def check(self, raw: Any, ctx: SectionContext) -> Optional[TrainSpec]:
        from odespec.train.check import check_train

        return check_train(raw, ctx.items, ctx.input_shape, ctx.error, ctx.loc, ctx.base_dir, series=ctx.series)
