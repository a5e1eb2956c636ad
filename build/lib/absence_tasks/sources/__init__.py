"""Where documents come from. Every source yields `Document`s; `generate.py` turns them into instances.

`source_id` is the key for the train/validation/test split: every document cut from the same source
(a corpus block, a pull request) lands in the same split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Document:
    domain: str
    source_id: str
    lines: tuple[str, ...]
    provenance: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "lines", tuple(self.lines))
