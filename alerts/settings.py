"""Settings of the alert service, which live with the others in `osteotel.settings`.

`AlertSettings` is the `[alerts]` section (`OSTEOTEL_ALERTS__*`); clinical thresholds are not
settings: they are in `alerts.thresholds` and the registry, so a clinician's change never
touches service settings.
"""

from osteotel.settings import AlertSettings, SmtpSettings

__all__ = ["AlertSettings", "SmtpSettings"]
