"""Pixel-aware codecs that need native libraries, kept outside the pure core.

``gateway/core/segment.py`` frames the PIXEL payload and codes its byte-level segments;
the modules here code its image segments (``jpegls``, the only importer of pyjpegls and
numpy) and plan which bytes of a Part 10 file are pixel rows (``pixel``).
"""
