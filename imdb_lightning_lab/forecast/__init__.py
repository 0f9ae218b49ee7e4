"""The tutorials' other classic: forecasting monthly airline passengers with the same encoders."""
