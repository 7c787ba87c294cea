"""From result files to statistics, figures and the report. Reads files; never imports probes."""
