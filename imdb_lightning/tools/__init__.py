"""Experiment tools: sweeps, studies, the leaderboard, published figures, linear references. The core never imports them."""
