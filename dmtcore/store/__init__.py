"""The store on disk: immutable versions and content-addressed blobs (`directory`), the manifest
that describes a version, turning a model into blobs and back (`checkpoint`), `dmt verify`, and
the frozen columns' features kept between operations.

`Store` is importable from here: `from dmtcore.store import Store`.
"""

from dmtcore.store.directory import Store

__all__ = ["Store"]
