"""Launched by test_policy_generation.py under 2-process ZeRO-3: trains a few SFT steps, then every process
samples greedily from the in-memory (partitioned) policy through `policy_generator`, once with the weights gathered
(unequal prompt counts per process) and once sharded with `synced_gpus` (equal counts), and writes what it got."""

import json
import sys
from pathlib import Path

from transformers import TrainerCallback

from posttrain.generation import SamplingParams, policy_generator
from posttrain.recipe import parse_recipe
from posttrain.train import build_trainer

PROMPTS = [[{"role": "user", "content": f"sort {digits}"}]
           for digits in ("38172049", "90817263", "11223344", "57302846", "64019283")]
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=10)


class GenerateAtTrainEnd(TrainerCallback):
    def __init__(self):
        self.trainer = None

    def on_train_end(self, args, state, control, **kwargs):
        trainer, accelerator = self.trainer, self.trainer.accelerator
        rank, world = accelerator.process_index, accelerator.num_processes
        results = {}
        gathered_prompts = PROMPTS[rank::world]  # 3 and 2 prompts: processes generate independently
        with policy_generator(trainer.model_wrapped, accelerator, trainer.processing_class, batch_size=2) as gen:
            results["gathered"] = [c[0].text for c in gen.generate(gathered_prompts, GREEDY)]
        sharded_prompts = PROMPTS[rank * 2:rank * 2 + 2]  # equal counts: synced_gpus needs the same calls everywhere
        with policy_generator(trainer.model_wrapped, accelerator, trainer.processing_class, gather_zero3=False,
                              batch_size=2) as gen:
            results["sharded"] = [c[0].text for c in gen.generate(sharded_prompts, GREEDY)]
        results["prompts"] = {"gathered": gathered_prompts, "sharded": sharded_prompts}
        Path(args.output_dir, f"policy_generation_rank{rank}.json").write_text(json.dumps(results))


if __name__ == "__main__":
    callback = GenerateAtTrainEnd()
    trainer = build_trainer(parse_recipe(sys.argv[1:]), callbacks=[callback])
    callback.trainer = trainer
    trainer.train()
    trainer.save_model(trainer.args.output_dir)
