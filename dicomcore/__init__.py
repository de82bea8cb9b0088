"""The Django-free DICOM core: parsing, tag expressions, rendering, frames, import sources and zip
streaming, as plain functions over pydicom, numpy and Pillow. Nothing here imports Django or the
`studies` app (studies/tests/test_pure_core.py keeps it so): import workers and scripts use it as is."""

import pydicom.config

# pydicom's reading validation warns and logs with the offending value quoted, and header
# values are patient data: validation stays off while reading. Values that are invalid are
# handled where they are used (see parsing._text/_int and the DICOM JSON fallback).
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
