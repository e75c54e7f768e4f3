"""Operations: metrics, OpenTelemetry spans, log formats, ``mesh status``."""
