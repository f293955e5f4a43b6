"""Running pruned models: loading (`load`), the dtype a device gets (`precision`), quantization that
never touches pruned blocks (`quantize`), greedy generation (`generate`), and memory handed back (`memory`)."""
