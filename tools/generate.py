#!/usr/bin/env python
"""Generate text from a checkpoint (MindSpeed-LLM's inference.py flags): see docs/generate.md.

    torchrun --nproc-per-node 2 tools/generate.py --load ckpt/ --tensor-model-parallel-size 2 --prompt "Hello"
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moetrain.inference.generate import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
