"""What every HTTP interface of the service shares (REST API, DICOMweb, admin downloads): content
negotiation, render parameters, ETags, the JSON error shape, the ingest outcome's HTTP status, and
the health probes. Views stay thin by composing these."""
