"""Checkpoint formats and the HF <-> Megatron converter behind ckpt_converters/convert_ckpt.py.

Two Megatron formats live here, sharing one directory layout (directory.py: the
``latest_checkpointed_iteration.txt`` pointer, ``iter_*`` naming, ``moetrain.json``):

* the per-rank Megatron format (iter_*/mp_rank_*/model_optim_rng.pt), which the converter writes.
  It has three aliases, kept for compatibility: "legacy" (legacy.py, legacy_reader.py,
  ``LegacyCheckpointError``, ``MegatronCheckpoint.kind``), "converted" (training/converted_load.py,
  which trains from one) and "mg" (the converter's ``--save-model-type mg`` writes it;
  ``--load-model-type mg`` reads it, or a torch_dist checkpoint);
* the trainer's torch_dist dist-checkpoints (torch_dist.py reads them; training/checkpointing.py
  writes them).
"""
