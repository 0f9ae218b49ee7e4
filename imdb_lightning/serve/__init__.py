"""Using trained models: load a checkpoint, predict, export (and the runtime exports carry)."""
