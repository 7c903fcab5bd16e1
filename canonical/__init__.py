"""The bottom layer: what every other package shares and nothing here imports from them.

Canonical model configs (one file per family), the error types the CLI turns into one line, and the
protocol a KV cache offers the models. Hugging Face names never appear here: `convert/` translates
checkpoints into these."""
