"""The alert service: clinical anomalies to the care team."""
