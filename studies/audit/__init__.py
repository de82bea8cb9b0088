"""The audit trail as one unit: the append-only model (models.py), writing an event (events.py), the
middleware that records every HTTP request touching patient data (middleware.py), the read-only
admin (admin.py) and the CSV export (export.py, run by `manage.py export_audit`)."""
