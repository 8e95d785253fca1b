"""The Trainer of a LoRA run: adapters on the built model, the base frozen and loaded from --load,
checkpoints that hold the adapters (and their optimizer state) only, resumed from --lora-load."""

from __future__ import annotations

from moetrain.training.checkpointing import TrainState, load_checkpoint, read_latest
from moetrain.training.converted_load import load_converted_weights
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
        run, ck, lora = self.run, self.run.cfg.checkpoint, self.run.cfg.lora
        if run.load_converted:
            self.logger.console(f"loading converted base weights from {ck.load} ...")
            load_converted_weights(ck.load, self.model, self.optimizer, run.dims, self.padded_vocab_size)
        elif run.load_iteration is not None:
            self.logger.console(f"loading base weights from {ck.load} (iteration {run.load_iteration}) ...")
            load_checkpoint(ck.load, self.model, self.optimizer, self.scheduler, load_optim=False, load_rng=False,
                            finetune=True, layout=self.layout, part="base")
        if lora.lora_load and read_latest(lora.lora_load) is not None:
            self.logger.console(f"loading LoRA adapters from {lora.lora_load} ...")
            return load_checkpoint(lora.lora_load, self.model, self.optimizer, self.scheduler,
                                   load_optim=not ck.no_load_optim, load_rng=not ck.no_load_rng,
                                   finetune=ck.finetune, layout=self.layout, part="adapters")
        return TrainState()

    def checkpoint_meta(self) -> dict:
        from moetrain.finetune.lora.adapter_checkpoint import adapter_meta

        lora = self.run.cfg.lora
        return {**super().checkpoint_meta(), "lora": {**adapter_meta(lora.lora_r, lora.lora_alpha, lora.lora_dropout,
                                                                     lora.lora_target_modules),
                                                      "lora_load": lora.lora_load}}
