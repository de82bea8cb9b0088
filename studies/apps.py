from django.apps import AppConfig


class StudiesConfig(AppConfig):
    """The DICOM catalogue: Study ▸ Series ▸ Instance per owner."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "studies"
    verbose_name = "DICOM catalogue"

    def ready(self) -> None:
        from .api.authentication import connect_signals

        connect_signals()
