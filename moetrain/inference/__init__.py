"""Text generation from moetrain / Megatron checkpoints on any TP / PP / EP layout.

Where things are:
  generate.py   the command line (``torchrun ... -m moetrain.inference.generate``, tools/generate.py)
  options.py    its flags (MindSpeed-LLM's names) as a typed ``GenerateConfig``, checked before ranks start
  loading.py    a trainer, converted or HF checkpoint -> this rank's model shard, re-sharded on load
  generator.py  the generation loop: left-padded prefill, KV-cached decode, PP hand-off, token broadcast
  kv_cache.py   the per-layer KV cache (local heads: sharded like attention under TP)
  sampling.py   greedy / temperature / top-k / top-p with a seeded generator
  chat.py       ``--task chat``: the terminal loop with history
"""
