"""Model families as data: which tensors and shapes a config implies, and which block each belongs to.
Read by io (completeness checks), ops (prune, export) and the vLLM integration."""
