"""The ingest service: MQTT in, validation, InfluxDB out."""
