"""Raw reviews -> token ids -> batches: sources, tokenizer, validation splits, the data module."""
