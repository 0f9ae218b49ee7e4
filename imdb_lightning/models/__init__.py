"""Encoders (plain nn.Modules) and the LightningModules that wrap them."""
