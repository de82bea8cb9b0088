"""Request parsers that stage uploaded DICOM to disk while hashing (memory stays flat)."""

from __future__ import annotations

from django.http.multipartparser import MultiPartParser as DjangoMultiPartParser
from django.http.multipartparser import MultiPartParserError
from django.utils.datastructures import MultiValueDict
from django.utils.http import parse_header_parameters
from rest_framework.exceptions import ParseError
from rest_framework.parsers import BaseParser, DataAndFiles, MultiPartParser

from ..uploads import StagingUploadHandler, stage_stream


class StagingMultiPartParser(MultiPartParser):
    """multipart/form-data whose file parts go straight into StagedFiles."""

    def parse(self, stream, media_type=None, parser_context=None):
        parser_context = parser_context or {}
        request = parser_context["request"]
        meta = request.META.copy()
        meta["CONTENT_TYPE"] = media_type
        handlers = [StagingUploadHandler(request._request)]
        try:
            parser = DjangoMultiPartParser(meta, stream, handlers, parser_context.get("encoding", "utf-8"))
            data, files = parser.parse()
        except MultiPartParserError as exc:
            raise ParseError(f"malformed multipart body: {exc}") from exc
        return DataAndFiles(data, files)


class DicomParser(BaseParser):
    """A raw DICOM file as the request body (Content-Type: application/dicom).

    An optional `Content-Disposition: attachment; filename="x.dcm"` header names the file.
    """

    media_type = "application/dicom"

    def parse(self, stream, media_type=None, parser_context=None):
        request = (parser_context or {}).get("request")
        name = ""
        disposition = request.META.get("HTTP_CONTENT_DISPOSITION", "") if request is not None else ""
        if disposition:
            _, params = parse_header_parameters(disposition)
            name = params.get("filename", "")
        staged = stage_stream(stream, name)
        return DataAndFiles({}, MultiValueDict({"file": [staged]}))
