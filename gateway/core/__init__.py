"""Pure core: no sockets, files, threads, clocks, environment or logging.

Only the standard library, ``zstandard`` and ``cryptography`` may be imported
here (a test enforces it). Edge and cloud share these modules, so both ends of
the wire agree by construction.
"""
