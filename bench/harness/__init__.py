"""What every scenario shares, written once: processes (`processes`), the stack as context managers (`stack`),
measurement (`measure`), the HTTP client (`httpclient`) and results (`report`). No app code is imported here."""
