"""Layers: the canonical layer tar and what it is compared with, one module per job.

- ``normalize``: the canonical tar of a layer (drop rules, diff by meaning, writing, hashing; ``TarWriter``);
- ``inputs``: what an engine gives (a layer tar, an overlay upper dir, a whole filesystem) as one input;
- ``tree``: the parent chain's merged filesystem (``ParentTree``), what a child layer is compared with;
- ``diff``: what differs between two layers, file by file (``buildsys diff``, verify's report);
- ``entry``: what they share (one entry of a layer, paths, tar kinds, ``LayerError``).

Import from those modules; this package re-exports nothing.
"""
