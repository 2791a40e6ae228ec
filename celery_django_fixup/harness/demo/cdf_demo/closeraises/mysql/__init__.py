"""See ``cdf_demo.closeraises``."""
