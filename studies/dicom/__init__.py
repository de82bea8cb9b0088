"""Pure DICOM core: parsing, tag expressions and rendering. No Django imports here."""

import pydicom.config

# pydicom's reading validation warns and logs with the offending value quoted, and header
# values are patient data: validation stays off while reading. Values that are invalid are
# handled where they are used (see parsing._text/_int and the DICOM JSON fallback).
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
