"""The Trainer of a LoRA run: adapters on the built model, the base frozen and loaded from --load,
checkpoints that hold the adapters (and their optimizer state) only, resumed from --lora-load."""

from __future__ import annotations

from moetrain.training.checkpointing import TrainState, read_latest
from moetrain.training.trainer import Trainer, build_model_and_optimizer


class LoraTrainer(Trainer):
    checkpoint_part = "adapters"  # the adapters and their optimizer state; the base is --load's

    def build_model(self):
        from moetrain.finetune.lora.apply import apply_lora

        lora = self.run.cfg.lora
        trainable: list[str] = []

        def prepare(chunk) -> None:
            trainable.extend(apply_lora(chunk, set(lora.lora_target_modules), lora.lora_r, lora.lora_alpha,
                                        lora.lora_dropout, seed=self.run.cfg.training.seed))

        built = build_model_and_optimizer(self.run, self.backend.batch_p2p_comm, prepare_chunk=prepare)
        model = built[0]
        total = sum(p.numel() for chunk in model for p in chunk.parameters())
        tuned = sum(p.numel() for chunk in model for p in chunk.parameters() if p.requires_grad)
        self.logger.console(f"LoRA r {lora.lora_r} alpha {lora.lora_alpha:g} on {' '.join(lora.lora_target_modules)}: "
                            f"{tuned:,} trainable parameters of {total:,} on this rank ({100 * tuned / total:.2f} %)")
        return built

    def resume(self) -> TrainState:
        """The base from --load (weights only), then the adapters and their optimizer state from
        --lora-load when it holds a checkpoint: the position to train from."""
        lora = self.run.cfg.lora
        self.load_weights(part="base", weights_only=True)
        if lora.lora_load and read_latest(lora.lora_load) is not None:
            self.logger.console(f"loading LoRA adapters from {lora.lora_load} ...")
            return self.load_from(lora.lora_load, part="adapters")
        return TrainState()

    def checkpoint_meta(self) -> dict:
        from moetrain.finetune.lora.adapter_checkpoint import adapter_meta

        lora = self.run.cfg.lora
        return {**super().checkpoint_meta(), "lora": {**adapter_meta(lora.lora_r, lora.lora_alpha, lora.lora_dropout,
                                                                     lora.lora_target_modules),
                                                      "lora_load": lora.lora_load}}
