"""The performance layer: fast inference and timing; the library never imports it."""
