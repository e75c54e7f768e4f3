"""Operations: what lets people watch and run nodes — metrics, OpenTelemetry spans, log
formats, and mesh commands as child processes. Below the runtime (which reports into it),
above the core."""
