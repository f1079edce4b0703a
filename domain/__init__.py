"""Pure exam and patient rules: no I/O, no clocks, no Temporal."""
