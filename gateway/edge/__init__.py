"""The edge box: DICOM in, spool, pack, send; composed in ``service``."""
