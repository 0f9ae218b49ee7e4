"""Experiment tools: sweeps, the leaderboard, linear references, benchmarks, diagnostics. The core never imports them."""
