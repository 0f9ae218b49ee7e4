"""The lab beside the product: benchmarks (bench), memory probes (memory) and the airline-passengers
forecaster (forecast). Each is a command of `imdb-lightning`, built on the package; the package never imports it."""
