"""Hold what one worker process shares between requests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from boltlink.recorder import ClickRecorder
from boltlink.settings import Settings
from boltlink.store import LinkStore
from boltlink.web.resolver import LinkResolver

__all__ = ["Runtime"]


@dataclass
class Runtime:
    """The open clients of one worker process, built in the app's lifespan."""

    settings: Settings
    store: LinkStore
    redis: Any
    resolver: LinkResolver
    recorder: ClickRecorder
    closers: list[Any] = field(default_factory=list)
