"""Pixel-aware codecs that need native libraries, kept outside the pure core.

``gateway/core/segment.py`` frames the PIXEL/PIXEL2 payload and codes its byte-level segments;
the modules here code its image segments (``imagecodecs_codec``, the only importer of
imagecodecs and numpy: JPEG-XL, HTJ2K, JPEG 2000, JPEG-LS) and plan which bytes of a Part 10
file are pixel rows (``pixel``).
"""
