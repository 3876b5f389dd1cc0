"""Reading feature stores and writing per-sample outputs (the io layer)."""

from daskem.io.source import ZarrRows, open_source

__all__ = ["ZarrRows", "open_source"]
